"""Corrupted programs are caught with the right error, and bad program files, inputs or arrays
give a clear ``TilesparseError`` — never a crash deep inside numpy."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import zipfile

import numpy as np
import pytest
import torch
from frontend_nets import TinyResNet, randomize_bn
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ProgramError, TilesparseError
from tilesparse.frontend import build_graph
from tilesparse.hw import load_array
from tilesparse.patterns import prune_oneshot
from tilesparse.program import Lock, Program, SubVolume
from tilesparse.sim import HazardError, SimulationError, simulate, verify

ARRAY = "2x2"


@functools.cache
def _base():
    torch.manual_seed(0)
    m = randomize_bn(TinyResNet())
    prune_oneshot(m, 0.5, (8, 8))
    g = build_graph(m, input_shape=(1, 3, 32, 32))
    return g, compile_graph(g, ARRAY)


@pytest.fixture
def prog():
    g, p = _base()
    return g, copy.deepcopy(p)


def _x(g):
    return np.random.default_rng(3).standard_normal(g.inputs[0].out.shape).astype(np.float32)


def _bitmap(p):
    """(layer index, bitmap byte address, a kept bit, a skipped bit) of the first conv chunk whose
    bitmap has both."""
    for li, r in enumerate(p.layers):
        for row in r.chunks:
            n = -(-(row.oc1 - row.oc0) // 8) * (row.cb1 - row.cb0)  # block rows x block columns
            bits = np.unpackbits(p.weights[row.ddr_addr:row.ddr_addr + -(-n // 8)], bitorder="little")[:n]
            if r.kind == "conv" and 0 < bits.sum() < n:
                return li, row.ddr_addr, int(np.flatnonzero(bits)[0]), int(np.flatnonzero(bits == 0)[0])
    raise AssertionError("no chunk with kept and skipped blocks")


def _set(p, i: int, **changes) -> None:
    """Replace instruction ``i`` of ``p`` with a copy that has ``changes``."""
    p.instrs = p.instrs[:i] + (dataclasses.replace(p.instrs[i], **changes),) + p.instrs[i + 1:]


def _without(locks, name: str) -> tuple:
    """``locks`` without the one written ``name`` (e.g. ``core.in[i%2].full``)."""
    assert name in map(str, locks)
    return tuple(lk for lk in locks if str(lk) != name)


def _toggle(p, addr: int, *bits: int) -> None:
    w = p.weights.copy()
    for b in bits:
        w[addr + b // 8] ^= np.uint8(1 << (b % 8))
    p.weights = w


def test_baseline_is_bit_exact(prog):
    g, p = prog
    assert verify(p, g, _x(g), progress=False).ok


def test_moved_block_index_gives_wrong_result(prog):
    """Swap a kept and a skipped bit of one chunk's bitmap (same byte count): the chunk decodes,
    but its blocks land at the wrong block column, and the comparison names that layer."""
    g, p = prog
    li, addr, kept, skipped = _bitmap(p)
    _toggle(p, addr, kept, skipped)
    rep = verify(p, g, _x(g), progress=False)
    assert not rep.ok and rep.first_mismatch.layer == p.layers[li].name
    assert rep.first_mismatch.first is not None and rep.first_mismatch.got != rep.first_mismatch.want


def test_flipped_bitmap_bit_fails_to_decode(prog):
    _, p = prog
    li, addr, _, skipped = _bitmap(p)
    _toggle(p, addr, skipped)
    with pytest.raises(SimulationError, match=rf"layer '{p.layers[li].name}' LOADWM .*does not decode"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False)


@pytest.mark.parametrize("how", ["drop", "swap", "slot"])
def test_broken_lock_is_a_hazard(prog, how):
    _, p = prog
    for i, ins in enumerate(p.instrs):
        if how == "drop" and ins.op == "COMP":
            _set(p, i, acquire=_without(ins.acquire, "core.in[i%2].full"))
            break
        if how == "swap" and ins.op == "COMP":
            _set(p, i, acquire=ins.release, release=ins.acquire)
            break
        if how == "slot" and ins.op == "LOADWM" and ins.acquire[0] == Lock.piece("wslot1", "full"):
            _set(p, i, acquire=(Lock.piece("wslot0", "full"), *ins.acquire[1:]))  # (and a core.w half's)
            break
    with pytest.raises(HazardError, match=r"#\d+ .*#\d+"):  # names both instructions
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False)


def test_loadwm_piece_without_its_lock_reads_before_loadw(prog):
    """Cut-through: LOADWM copies weight piece i once LOADW has filled it, which only the piece's
    ``full`` lock guarantees."""
    _, p = prog
    i = next(i for i, ins in enumerate(p.instrs) if ins.op == "LOADWM")
    assert p.instrs[i].iters > 1 and p.instrs[i].locks_text("acquire") == "wslot0[i].full; cores halted"
    _set(p, i, acquire=())  # still halts the cores
    with pytest.raises(HazardError, match=r"LOADWM #\d+ .*iteration 0\) reads memtile\.wslot0\[0\] before LOADW #"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False)


def test_loadwm_with_other_piece_count_than_its_loadw(prog):
    _, p = prog
    i = next(i for i, ins in enumerate(p.instrs) if ins.op == "LOADWM")
    _set(p, i, iters=p.instrs[i].iters - 1)
    with pytest.raises(SimulationError, match=r"LOADWM .*copies \d+ weight pieces, the LOADW that filled wslot0 moved"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False, check=False)


def test_dropped_lock_reports_reader_and_producer(prog):
    _, p = prog
    i = next(i for i, ins in enumerate(p.instrs) if ins.op == "COMP")
    _set(p, i, acquire=())
    # stem_0 slides its windows: COMP reads the columns of its input ring
    with pytest.raises(HazardError, match=rf"COMP #{i} .* reads core\.in ring \(.*\) slot\[0\] before LOADFM #{i - 1}"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False)


def test_loadfm_is_not_halted_by_loadwm():
    """LOADFM is a DMA: the cores' halt during LOADWM does not order it, only its locks do. A
    later step's first LOADFM without its ``core.in[i%2].empty`` acquire overwrites a half the
    previous step's COMP still reads — a hazard the halt used to hide. (``i`` counts iterations
    across the layer's steps: conv1_0 is forced into two input-channel steps of two tiles each,
    so the second step's first LOADFM is iteration 2 and reuses half 0.)"""
    g, _ = _base()
    p = compile_graph(g, ARRAY, chooser=lambda node, hw: SubVolume(16, 8, 2, 4) if node.name == "conv1_0" else None)
    li = next(k for k, r in enumerate(p.layers) if r.name == "conv1_0")
    assert (p.layers[li].loops.n_q, p.layers[li].loops.n_tiles) == (2, 2)
    i = next(i for i, ins in enumerate(p.instrs) if ins.layer == li and ins.op == "LOADFM" and ins.step == 1)
    simulate(copy.deepcopy(p), np.zeros((3, 32, 32), np.int8), progress=False)  # with its locks: fine
    ins = p.instrs[i]
    _set(p, i, acquire=_without(ins.acquire, "core.in[i%2].empty"))
    with pytest.raises(HazardError, match=rf"LOADFM #{i} .*iteration 0.*(overwrite|before)"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False)


def test_oversize_weight_transfer(prog):
    _, p = prog
    i = next(i for i, ins in enumerate(p.instrs) if ins.op == "LOADW")
    _set(p, i, nbytes=p.instrs[i].nbytes + 64)
    with pytest.raises(SimulationError, match=rf"LOADW \(instruction #{i}\).*copies DDR"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False, check=False)


def test_window_overflowing_core_input_buffer(prog):
    _, p = prog
    hw = p.hw
    p.hw = hw.model_copy(update={"core": hw.core.model_copy(update={"input_buffer_bytes": 64})})
    # the stem conv slides its windows: its ring of two windows' columns no longer fits
    with pytest.raises(SimulationError,
                       match=r"stem_0' LOADFM .* input ring \(\d+ columns x 99 B\) overflows core\.in \(64 B\)"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False, check=False)


def test_address_outside_memory(prog):
    _, p = prog
    b = next(n for n, b in p.buffers.items() if b["memory"] == "memtile")
    p.buffers[b] = {**p.buffers[b], "offset": p.hw.memtile.bytes - 8}
    with pytest.raises(SimulationError, match=rf"buffer '{b}'.*outside"):
        simulate(p, np.zeros((3, 32, 32), np.int8), progress=False, check=False)


def test_wrong_input(prog):
    _, p = prog
    with pytest.raises(SimulationError, match="input must be int8"):
        simulate(p, np.zeros((3, 16, 16), np.int8), progress=False)


# ---- program files ---------------------------------------------------------------------------
def test_bad_program_files(prog, tmp_path):
    _, p = prog
    good = p.save(tmp_path / "p.tsp")
    raw = good.read_bytes()
    (tmp_path / "trunc.tsp").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupt"):
        Program.load(tmp_path / "trunc.tsp")
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    header["version"] = 999
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(tmp_path / "v999.tsp", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ProgramError, match="version 999"):
        Program.load(tmp_path / "v999.tsp")
    with pytest.raises(ProgramError, match="compiled for array"):
        Program.load(good, hw=load_array("5x5"))
    assert zipfile.is_zipfile(good)


def test_cli_simulate_program_file(prog, tmp_path):
    _, p = prog
    path = p.save(tmp_path / "p.tsp")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["simulate", str(path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["accounting_ok"] and data["bit_exact"] is None and len(data["layers"]) == len(p.layers)


@pytest.mark.parametrize("case", ["truncated", "array", "npy"])
def test_cli_bad_inputs(prog, tmp_path, case):
    _, p = prog
    path = p.save(tmp_path / "p.tsp")
    args = ["simulate", str(path)]
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif case == "array":
        args += ["--array", "3x3"]
    else:
        np.save(tmp_path / "x.npy", np.zeros((3, 5, 5), np.float32))
        args += ["--input", str(tmp_path / "x.npy")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and isinstance(res.exception, TilesparseError), res.output


def test_float_program_is_not_executable():
    torch.manual_seed(0)
    g = build_graph(randomize_bn(TinyResNet()), input_shape=(1, 3, 32, 32), quantized=False)
    with pytest.raises(SimulationError, match="float graph"):
        simulate(compile_graph(g, ARRAY), np.zeros((3, 32, 32), np.int8), progress=False)


def test_cli_program_file_with_model_verifies(tmp_path):
    """A program file is verified against the graph rebuilt from the model name."""
    path = compile_graph(build_graph("digits_cnn"), "2x2").save(tmp_path / "d.tsp")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["simulate", str(path), "--model", "digits_cnn", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["bit_exact"] is True and data["accounting_ok"] is True
