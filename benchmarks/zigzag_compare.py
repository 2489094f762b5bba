"""External check against ZigZag (KU Leuven, PyPI ``zigzag-dse``): ResNet-18's dense conv layers on a
weight-stationary 32x32 array expressible in both tools.

    pip install zigzag-dse six   # the bench extra; zigzag 3.9 imports six without declaring it
    python benchmarks/zigzag_compare.py [--quick]

Architecture (both tools): 32 x 32 int8 MACs (K on one axis, C on the other in ZigZag), a 1-byte
weight register per MAC, a 256 KB SRAM holding I, W, O (512 B/cycle read, 512 B/cycle write), and
DRAM with one 32 B/cycle port shared by reads and writes. All words 8 bit (ZigZag's partial sums set
to 8 bit too).

1. **Model agreement.** ZigZag (LOMA search, latency objective) picks a mapping per layer. The same
   mapping is rebuilt in our model -- one level per distinct memory boundary of ZigZag's per-operand
   allocation, bypassing the tensors whose memory does not end there -- and both models' latency
   and element accesses per tensor (MAC-side SRAM reads, DRAM reads/writes) are compared.
2. **Search.** Our genetic mapper on our version of the architecture vs ZigZag's search: best
   latency per layer and wall time for the whole network, side by side.

Writes benchmarks/results/zigzag_compare.{md,json}. ZigZag is imported here only.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from tilesparse.costmodel import Architecture, Mapping, Problem, evaluate
from tilesparse.mapper import search
from tilesparse.mapper.network import network_problems
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
ARRAY = 32
SRAM_BYTES = 256 * 1024
SRAM_BYTES_PER_CYCLE = 512
DRAM_BYTES_PER_CYCLE = 32
PJ = {"reg": 0.02, "sram": 1.0, "dram": 100.0, "mac": 0.1}
TOLERANCE = 0.15
ZZ_DIM = {"K": "K", "C": "C", "OY": "P", "OX": "Q", "FY": "R", "FX": "S", "B": "N", "G": "G"}


def zigzag_accelerator() -> dict:
    def port(name, kind, bw, alloc):
        return {"name": name, "type": kind, "bandwidth_min": 8, "bandwidth_max": bw, "allocation": alloc}
    return {"name": "ws32x32", "operational_array": {
        "unit_energy": PJ["mac"], "unit_area": 1, "dimensions": ["D1", "D2"], "sizes": [ARRAY, ARRAY]},
        "memories": {
            "reg_w": {"size": 8, "r_cost": PJ["reg"], "w_cost": PJ["reg"], "area": 0, "latency": 1,
                      "operands": ["I2"], "served_dimensions": [],
                      "ports": [port("r_port_1", "read", 8, ["I2, tl"]), port("w_port_1", "write", 8, ["I2, fh"])]},
            "sram": {"size": SRAM_BYTES * 8, "r_cost": PJ["sram"] * 8, "w_cost": PJ["sram"] * 8, "area": 0,
                     "latency": 1, "operands": ["I1", "I2", "O"], "served_dimensions": ["D1", "D2"],
                     "ports": [port("r_port_1", "read", SRAM_BYTES_PER_CYCLE * 8,
                                    ["I1, tl", "I2, tl", "O, tl", "O, th"]),
                               port("w_port_1", "write", SRAM_BYTES_PER_CYCLE * 8,
                                    ["I1, fh", "I2, fh", "O, fh", "O, fl"])]},
            "dram": {"size": 10**10, "r_cost": PJ["dram"] * 8, "w_cost": PJ["dram"] * 8, "area": 0, "latency": 1,
                     "operands": ["I1", "I2", "O"], "served_dimensions": ["D1", "D2"],
                     "ports": [port("rw_port_1", "read_write", DRAM_BYTES_PER_CYCLE * 8,
                                    ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"])]}}}


def zigzag_mapping() -> list:
    return [{"name": "default", "spatial_mapping": {"D1": [f"K, {ARRAY}"], "D2": [f"C, {ARRAY}"]},
             "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"}}]


def zigzag_layer(p: Problem, lid: int) -> dict:
    n, g, k, c, pp, q, r, s = p.bounds
    sh, sw = p.stride
    return {"id": lid, "name": p.name, "operator_type": "Conv",
            "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
            "dimension_relations": [f"ix={sw}*ox+1*fx", f"iy={sh}*oy+1*fy"],
            "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"], "loop_sizes": [n, k, c, pp, q, r, s],
            "operand_precision": {"W": 8, "I": 8, "O": 8, "O_final": 8}, "operand_source": {"I": lid}}


def our_arch() -> Architecture:
    """The same machine in our model (mapper search)."""
    return Architecture(name="ws32x32", clock_hz=1e9, compute={"macs_per_cycle": 1, "pj_per_mac": PJ["mac"]},
                        levels=[
        {"name": "reg_w", "capacity_bytes": 1, "holds": ["W"], "read_pj_per_byte": PJ["reg"],
         "write_pj_per_byte": PJ["reg"]},
        {"name": "sram", "capacity_bytes": SRAM_BYTES, "fanout": ARRAY * ARRAY,
         "read_bytes_per_cycle": SRAM_BYTES_PER_CYCLE * ARRAY * ARRAY,  # per instance: one instance
         "write_bytes_per_cycle": SRAM_BYTES_PER_CYCLE, "read_pj_per_byte": PJ["sram"],
         "write_pj_per_byte": PJ["sram"]},
        {"name": "dram", "rw_bytes_per_cycle": DRAM_BYTES_PER_CYCLE, "read_pj_per_byte": PJ["dram"],
         "write_pj_per_byte": PJ["dram"]}])


def run_zigzag(p: Problem, tmp: Path, acc: dict | None = None) -> tuple[dict, float]:
    from zigzag.api import get_hardware_performance_zigzag

    for name, data in (("acc.yaml", acc or zigzag_accelerator()), ("map.yaml", zigzag_mapping()),
                       ("wl.yaml", [zigzag_layer(p, 0)])):
        (tmp / name).write_text(yaml.safe_dump(data, sort_keys=False))
    t = time.perf_counter()
    energy, latency, cmes = get_hardware_performance_zigzag(
        str(tmp / "wl.yaml"), str(tmp / "acc.yaml"), str(tmp / "map.yaml"), opt="latency",
        dump_folder=str(tmp / "out"), loma_show_progress_bar=False)
    dt = time.perf_counter() - t
    cme = cmes[0][1][0][0]
    return {"cme": cme, "energy_pj": float(energy), "latency": float(latency)}, dt


def _count(moves, direction: str) -> float:
    return float(moves.get(direction))


def _zz_accesses(cme) -> dict:
    """Element moves per operand at the MAC side of the innermost SRAM-level and at DRAM."""
    out = {}
    mdm = cme.mapping_int.unit_mem_data_movement
    for op, levels in mdm.items():
        name = str(op)
        top = levels[-1].get_attribute("data_elem_move_count")
        sram = levels[-2].get_attribute("data_elem_move_count") if name == "W" else levels[0].get_attribute(
            "data_elem_move_count")
        out[name] = {"dram_read": _count(top, "rd_out_to_low"), "dram_write": _count(top, "wr_in_by_low"),
                     "sram_read_low": _count(sram, "rd_out_to_low"), "sram_update": _count(sram, "wr_in_by_low")}
    return out


def translate(p: Problem, cme) -> tuple[Architecture, Mapping]:
    """ZigZag's mapping as ours: one level per distinct per-operand memory boundary."""
    tm = cme.temporal_mapping.mapping_dic_stationary
    ops = {str(op): lv for op, lv in tm.items()}
    nest = [loop for lvl in ops["W"] for loop in lvl]  # innermost first, same for every operand
    bounds = {}  # tensor -> loop counts where each on-chip level ends
    for t, lvls in ops.items():
        cum = np.cumsum([len(lv) for lv in lvls])[:-1]  # the last level is DRAM
        bounds[t] = list(cum)
    cuts = sorted({int(b) for bs in bounds.values() for b in bs})
    levels, temporal, order, bypass = [], [], [], []
    prev = 0
    for i, cut in enumerate(cuts + [len(nest)]):
        loops = nest[prev:cut]
        prev = cut
        keep = "WIO" if i == len(cuts) else "".join(t for t in "WIO" if cut in bounds[t])
        levels.append({"name": f"v{i}" if i < len(cuts) else "dram",
                       "fanout": ARRAY * ARRAY if i == 0 else 1,
                       **({"rw_bytes_per_cycle": DRAM_BYTES_PER_CYCLE} if i == len(cuts) else {})})
        f: dict[str, int] = {}
        for d, size in loops:
            dd = ZZ_DIM[str(d)]
            f[dd] = f.get(dd, 1) * int(round(size))
        temporal.append(f)
        order.append("".join(dict.fromkeys(ZZ_DIM[str(d)] for d, _ in loops)))
        bypass.append("".join(t for t in "WIO" if t not in keep))
    arch = Architecture(name="zigzag-view", compute={"macs_per_cycle": 1}, levels=levels)
    spatial = [dict() for _ in levels]
    for lvl in cme.spatial_mapping_dict_int[next(iter(cme.spatial_mapping_dict_int))]:
        for d, size in lvl:
            spatial[0][ZZ_DIM[str(d)]] = spatial[0].get(ZZ_DIM[str(d)], 1) * int(round(size))
    # a loop ZigZag splits unevenly (e.g. C=3 over 32 lanes) stays in the temporal nest
    return arch, Mapping.build(arch, temporal, spatial=spatial, order=order, bypass=bypass)


def two_port_check(p: Problem, tmp: Path) -> dict:
    """ZigZag again with a second SRAM read port reserved for partial sums."""
    acc = zigzag_accelerator()
    ports = acc["memories"]["sram"]["ports"]
    ports[0]["allocation"] = ["I1, tl", "I2, tl"]
    ports.insert(1, {"name": "r_port_2", "type": "read", "bandwidth_min": 8,
                     "bandwidth_max": SRAM_BYTES_PER_CYCLE * 8, "allocation": ["O, tl", "O, th"]})
    zz, _ = run_zigzag(p, tmp, acc)
    arch, m = translate(p, zz["cme"])
    ours = evaluate(p, arch, m)
    return {"layer": str(p), "zz_latency": zz["latency"], "zz_stall": float(zz["cme"].stall_slack_comb),
            "ours": ours.cycles}


def compare_layer(p: Problem, zz: dict) -> dict:
    arch, m = translate(p, zz["cme"])
    ours = evaluate(p, arch, m)
    zacc = _zz_accesses(zz["cme"])
    lv0 = [n for n in ours.accesses if n != "dram"]

    def ours_sram_side(t):  # reads at the innermost level holding t that serve the MACs
        for n in lv0:
            if ours.accesses[n][t]["reads"] or ours.accesses[n][t]["updates"]:
                return ours.accesses[n][t]
        return ours.accesses["dram"][t]

    rows = {"latency": (zz["latency"], ours.cycles)}
    for t in ("W", "I", "O"):
        d = ours.accesses["dram"][t]
        rows[f"dram_read_{t}"] = (zacc[t]["dram_read"], d["reads"])
    rows["dram_write_O"] = (zacc["O"]["dram_write"], ours.accesses["dram"]["O"]["updates"])
    rows["mac_reads_I"] = (zacc["I"]["sram_read_low"], ours_sram_side("I")["reads"])
    rows["mac_updates_O"] = (zacc["O"]["sram_update"], ours_sram_side("O")["updates"])
    rows["compute_cycles"] = (float(zz["cme"].ideal_temporal_cycle), ours.compute_cycles)
    c = zz["cme"]
    levels = zip(("sram-side", "sram", "dram"), c.stall_slack_comb_collect, strict=True)
    ports = {f"{m}.{port}": v for m, d in levels for port, v in d.items()}
    return {"rows": rows, "mapping": m.describe(arch), "ours_level_cycles": ours.level_cycles,
            "zz_stall": float(c.stall_slack_comb), "zz_onload": float(c.data_onloading_cycle),
            "zz_offload": float(c.data_offloading_cycle), "zz_port_slack": ports}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    # conv layers only: the classifier (lowered to a 1x1 conv) is not a conv layer of the network
    convs = [p for p in network_problems("resnet18") if p.kind == "conv" and p.bound("R") * p.bound("P") > 1]
    uniq: dict = {}
    for p in convs:
        uniq.setdefault((p.bounds, p.stride), []).append(p)
    layers = [v[0] for v in uniq.values()]
    counts = [len(v) for v in uniq.values()]
    if args.quick:
        layers, counts = layers[:3], counts[:3]
    results = []
    with tempfile.TemporaryDirectory() as d:
        for p, cnt in zip(layers, counts, strict=True):
            zz, zz_s = run_zigzag(p, Path(d))
            cmp = compare_layer(p, zz)
            t = time.perf_counter()
            ours = search(p, our_arch(), mapper="genetic", budget=10_000, objective="latency")
            our_s = time.perf_counter() - t
            results.append({"layer": str(p), "count": cnt, "zz_search_s": zz_s, "our_search_s": our_s,
                            "zz_best_latency": zz["latency"], "our_best_latency": ours.value,
                            "our_best_mapping": ours.mapping.describe(our_arch()), **cmp})
            print(f"{p}: zigzag {zz_s:.1f} s, ours {our_s:.1f} s", flush=True)
        port = two_port_check(layers[min(1, len(layers) - 1)], Path(d))
    md = report(args, results, port)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "zigzag_compare.md", md)
    atomic_write_text(RESULTS / "zigzag_compare.json", json.dumps(results, indent=1, default=str))
    print(md)


def report(args, results, port: dict) -> str:
    keys = list(results[0]["rows"])
    lines = ["# Cost model vs ZigZag (ResNet-18 dense conv layers)", "",
             f"Command: `python benchmarks/zigzag_compare.py{' --quick' if args.quick else ''}`; "
             "architecture and method in the script's docstring.", "",
             "## 1. Same mapping (ZigZag's choice), both models: ours / ZigZag", "",
             "| layer | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    flagged = []
    for r in results:
        cells = []
        for k in keys:
            z, o = r["rows"][k]
            ratio = o / z if z else (1.0 if o == 0 else float("inf"))
            cells.append(f"{ratio:.3f}" if z else f"{o:,.0f}/0")
            if abs(ratio - 1) > TOLERANCE:
                flagged.append((r, k, z, o))
        lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
    lines += ["", f"Differences above {TOLERANCE:.0%}: {len(flagged)}", ""]
    for r, k, z, o in flagged:
        lines.append(f"- {r['layer']} `{k}`: ZigZag {z:,.0f}, ours {o:,.0f}. " + explain(k, r))

    def tot(key: str) -> float:
        return sum(r[key] * r["count"] for r in results)

    lines += ["", "## 2. Search: best latency (cycles) each tool finds on its own, and search time", "",
              "Not a like-for-like quality comparison: each tool scores mappings with its own model (ours "
              "is the optimistic one, section 1), and ZigZag's spatial unrolling is fixed to K x C = "
              "32 x 32 by its mapping file while our mapper searches any unrolling up to 1024 lanes "
              "(e.g. conv1 has C = 3: ZigZag uses 3 of 32 C lanes).", "",
              "| layer | x | ZigZag cycles | ours cycles | ours / ZigZag | ZigZag s | ours s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['layer']} | {r['count']} | {r['zz_best_latency']:,.0f} | {r['our_best_latency']:,.0f} | "
                     f"{r['our_best_latency'] / r['zz_best_latency']:.3f} | {r['zz_search_s']:.1f} | "
                     f"{r['our_search_s']:.1f} |")
    lines += ["", f"Whole network ({sum(r['count'] for r in results)} conv layers; a repeated shape is "
              f"searched again by ZigZag, reused by our `map_network`): ZigZag **{tot('zz_search_s'):.0f} s**, "
              f"ours **{sum(r['our_search_s'] for r in results):.0f} s** (genetic, 10,000 evaluations per "
              f"distinct layer, one thread).",
              "", "## 3. The latency gap is ZigZag's port serialization", "",
              f"{port['layer']} with a second SRAM read port reserved for partial sums: ZigZag "
              f"{port['zz_latency']:,.0f} cycles (stall {port['zz_stall']:,.0f}), ours on ZigZag's new "
              f"mapping {port['ours']:,.0f}: ours / ZigZag = **{port['ours'] / port['zz_latency']:.3f}** "
              "(the rest is ZigZag's on-loading / off-loading, which ours overlaps)."]
    return "\n".join(lines) + "\n"


EXPLAIN = {
    "dram_read_I": ("ZigZag keeps an input row window (sliding-window reuse across the FX/OX loops "
                    "inside a tile) while ours refetches the full input tile whenever a loop indexing "
                    "I changes (no halo reuse), so ours counts more input reads for strided/3x3 layers."),
    "mac_reads_I": ("ZigZag counts input reads with its sliding-window/diagonal reuse among PE rows "
                    "and its 'same data considered no access' rule; ours reads one input per MAC step "
                    "multicast over the K lanes."),
}


def explain(key: str, r: dict) -> str:
    if key == "latency":
        worst = max(r["zz_port_slack"].items(), key=lambda kv: kv[1])
        return (f"The compute cycles agree ({r['rows']['compute_cycles'][1]:,.0f}). ZigZag adds "
                f"{r['zz_stall']:,.0f} stall cycles (largest port slack: {worst[0]} {worst[1]:,.0f}) "
                f"plus {r['zz_onload']:,.0f} on-loading and {r['zz_offload']:,.0f} off-loading cycles. "
                "ZigZag serializes the transfers that share a port at transfer granularity: every "
                "compute cycle the SRAM's single read port serves an input read and a partial-sum "
                "read, each taking at least one port cycle whatever its width, so the port needs about "
                "two cycles per compute cycle (section 3 removes the stall with a second read port). "
                "It also does not overlap the first loads and last write-backs. Ours bounds each level "
                "by bytes / bandwidth (64 of 512 B/cycle here) and assumes perfect overlap "
                "(Timeloop-style); our level cycles: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in r["ours_level_cycles"].items()) + ".")
    for k, v in EXPLAIN.items():
        if key.startswith(k):
            return v
    return "Partial-sum and write-back accounting differs (see docstring)."


if __name__ == "__main__":
    main()
