"""Which weight format each conv is packed in: the block format, or the sparse multiply's masked
format when its weights meet the hardware's rule (``program.sparse_format``).

A conv takes the masked format when the array has a sparse multiply (``hw.core.sparse_matmul``)
and its int8 weights keep at most ``max_nonzero_per_group`` (2) non-zero bytes in every
``group_bytes`` (4) consecutive bytes of the packed K order — i.e. every run of 4 input channels
(from channel 0) of every output channel and kernel tap, in its kept blocks — which 2:4, 1:4 and
any hierarchy ending in them (8x8@0.5/2:4) give. Its COMP then runs at the sparse rate (K = 16)
and its kept blocks travel and sit in the core compressed (20 bytes per 32). The other convs stay
in the block format; when some conv of the network is masked, each of them gets a one-line note
saying why (the program's ``meta["weight_formats"]``).

The check reads the runs of 4 channels, so the masked format needs the input channels per group
and the block width to be multiples of 4, and the block height too: channel balancing reorders a
reader's input channels by whole block rows of its producer, which then keeps every run intact.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pack import int8_weights
from tilesparse.errors import ConfigError
from tilesparse.hw import ArrayConfig
from tilesparse.ir.graph import Graph
from tilesparse.program.sparse_format import BLOCK, MASKED, PARTS, group_excess

__all__ = ["choose_weight_formats", "masked_problem"]


def _kept_weights(spec: LayerSpec, w8: np.ndarray) -> np.ndarray:
    """``w8`` with the bytes of skipped blocks zeroed (they are never packed)."""
    assert spec.mask is not None
    bo, bi = spec.block
    og, ig = spec.co // spec.groups, spec.ci // spec.groups
    g, r = np.divmod(np.arange(spec.co), og)
    rows = spec.mask[g * math.ceil(og / bo) + r // bo]  # co × block columns
    keep = np.repeat(rows, bi, axis=1)[:, :ig]
    return np.where(keep[:, :, None, None], w8, 0).astype(np.int8)


def masked_problem(spec: LayerSpec, w8: np.ndarray, hw: ArrayConfig) -> str | None:
    """Why conv ``spec`` with int8 weights ``w8`` (O × I_g × kh × kw) cannot take the masked
    format on ``hw`` (None: it can)."""
    sm = hw.core.sparse_matmul
    if not sm.enabled:
        return f"{hw.label} has no sparse multiply (core.sparse_matmul.enabled is false)"
    g = sm.group_bytes
    ig = spec.ci // spec.groups
    if ig % g or spec.block[1] % g or spec.block[0] % g:
        return (f"{ig} input channels per group, block {spec.block[0]}x{spec.block[1]}: the masked format "
                f"needs multiples of {g}")
    k_order = _kept_weights(spec, w8).transpose(0, 2, 3, 1)  # [o][ky][kx][i], the packed K order
    bad = group_excess(np.ascontiguousarray(k_order), sm)
    if bad:
        runs = k_order.size // g
        return (f"{bad} of {runs} runs of {g} input channels keep more than {sm.max_nonzero_per_group} "
                "non-zero weights")
    return None


def _parts_format(graph: Graph, spec: LayerSpec, hw: ArrayConfig) -> str:
    """``parts`` for an SDQ conv whose sparse part the sparse multiply reads and whose dense part
    fits int4 nibbles; else a ``ConfigError`` naming the layer."""
    sdq = graph.node(spec.name).attrs["sdq"]
    why = masked_problem(spec, np.asarray(graph.param(spec.name, "sdq_sparse")), hw)
    if int(sdq["sparse_bits"]) > 8 or int(sdq["dense_bits"]) > 4:
        why = f"parts int{sdq['sparse_bits']} + int{sdq['dense_bits']}: the parts format takes int8 + int4"
    if why is not None:
        raise ConfigError(f"layer {spec.name!r}", [f"SDQ layer cannot take the parts weight format: {why}"])
    return PARTS


def choose_weight_formats(graph: Graph, specs: list[LayerSpec], hw: ArrayConfig, cache: CompileCache | None = None
                          ) -> tuple[list[LayerSpec], dict[str, object]]:
    """The specs with each conv's ``weight_format`` chosen (module doc), and the record for the
    program's ``meta["weight_formats"]``: how many convs take each format and, when some conv is
    masked, why each of the others is not."""
    out: list[LayerSpec] = []
    notes: dict[str, str] = {}
    for sp in specs:
        if sp.kind != "conv":
            out.append(sp)
            continue
        if graph.node(sp.name).attrs.get("sdq") is not None:
            out.append(dataclasses.replace(sp, weight_format=_parts_format(graph, sp, hw)))
            continue
        w8, _ = int8_weights(np.asarray(graph.param(sp.name, "weight")), cache)
        why = masked_problem(sp, w8, hw)
        if why is None:
            out.append(dataclasses.replace(sp, weight_format=MASKED))
        else:
            notes[sp.name] = why
            out.append(sp)
    counts = {f: sum(1 for s in out if s.kind == "conv" and s.weight_format == f) for f in (BLOCK, MASKED, PARTS)}
    if not counts[PARTS]:  # listed only in a program that has SDQ layers
        del counts[PARTS]
    return out, {"counts": counts, "notes": notes if counts[MASKED] else {}}
