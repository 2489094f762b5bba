"""Cross-layer weight prefetch: layer k+1's first weight step loaded while layer k runs.

A layer's first LOADW normally starts with the layer (time-model rule 7), so its cores wait for the
first weight piece to cross DDR. With ``memtile.weight_prefetch`` on (and the rule profile's
mechanism ``weight_prefetch``), the compiler moves the first weight step of layer k+1 into the
MemTile prefetch area ``wpre``, written while layer k runs: the LOADW keeps its place in layer
k+1's instructions but writes ``wpre`` (docs/program.md, "Prefetched weights"), so the time model,
the replay and the simulator let it start once layer k−1 is done, the weight channel is free and
the area's previous contents have been read (its per-piece ``wpre`` locks).

Space: the area holds the step's pieces per column (``Σ per_iter`` of that LOADW) and sits just
above every activation live in layer k or k+1 (the allocation's ``peak``) and below the staging
either layer reserves (its ``capacity``): a layer whose step does not fit there is not prefetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tilesparse.compiler.memory import MEMTILE_ALIGN, Allocation
from tilesparse.compiler.planning import LayerPlan, charged_pipe
from tilesparse.hw import ArrayConfig, get_profile
from tilesparse.program import Instr, Lock, Operand
from tilesparse.timing import LayerTime, layer_time, prefetch_start_s

__all__ = ["PREFETCH_AREA", "network_seconds", "prefetch_on", "prefetch_weights"]

PREFETCH_AREA = "wpre"


def prefetch_on(hw: ArrayConfig) -> bool:
    """The array's ``memtile.weight_prefetch`` flag and its rule profile's mechanism."""
    return hw.memtile.weight_prefetch and get_profile(hw.rules).allows("weight_prefetch")


def _first_weights(instrs: Sequence[Instr]) -> dict[int, tuple[int, int]]:
    """Per layer, the indices of its step-0 LOADW and LOADWM."""
    out: dict[int, list[int]] = {}
    for i, ins in enumerate(instrs):
        if ins.step == 0 and ins.op in ("LOADW", "LOADWM"):
            out.setdefault(ins.layer, []).append(i)
    return {li: (v[0], v[1]) for li, v in out.items() if len(v) == 2}


def _swap(locks: tuple[Lock, ...], slot: str) -> tuple[Lock, ...]:
    """The locks with weight slot ``slot``'s replaced by the prefetch area's."""
    return tuple(Lock(PREFETCH_AREA, lk.per, lk.state) if lk.name == slot else lk for lk in locks)


def prefetch_weights(instrs: list[Instr], per_iter: Sequence[np.ndarray], alloc: Allocation,
                     hw: ArrayConfig) -> tuple[list[Instr], dict[str, dict[str, int]]]:
    """``instrs`` with the first weight step of every layer whose pieces fit the free MemTile space
    of it and the layer before loaded through ``wpre`` (module doc); ``per_iter[i]``: instruction
    i's per-iteration values. Returns the instructions and, per prefetched layer index (as a
    string), the area's offset and bytes per column."""
    if not prefetch_on(hw):
        return instrs, {}
    out = list(instrs)
    done: dict[str, dict[str, int]] = {}
    for li, (lw, lwm) in sorted(_first_weights(instrs).items()):
        if li == 0:
            continue
        size = int(np.ceil(np.asarray(per_iter[lw], dtype=np.float64)).sum())  # a slot holds every piece
        lo = -(-max(alloc.peak[li - 1], alloc.peak[li]) // MEMTILE_ALIGN) * MEMTILE_ALIGN
        if size == 0 or lo + size > min(alloc.capacity[li - 1], alloc.capacity[li]):
            continue
        slot = out[lw].dst[0].buffer
        area = (Operand.staging(PREFETCH_AREA, lo),)
        out[lw] = replace(out[lw], dst=area, acquire=_swap(out[lw].acquire, slot),
                           release=_swap(out[lw].release, slot))
        out[lwm] = replace(out[lwm], src=area, acquire=_swap(out[lwm].acquire, slot),
                           release=_swap(out[lwm].release, slot))
        done[str(li)] = {"offset": lo, "bytes": size}
    return out, done



def network_seconds(plans: Sequence[LayerPlan], prefetched: set[int], hw: ArrayConfig) -> float:
    """The program's latency under the time model: each plan's time, but a layer in ``prefetched``
    timed with its first weight step loaded during the layer before (``timing.prefetch_start_s``)
    — what ``estimate_program`` gives the program, activation streams charged as the planner charges them."""
    t, prev = 0.0, (None, 0.0, False)
    for li, plan in enumerate(plans):
        if li not in prefetched and li + 1 not in prefetched:
            t, prev = t + plan.time_s, (None, t, False)
            continue
        steps = [(st.loadw_bytes, st.loadwm_bytes, charged_pipe(plan.spec, hw, st.pipe)) for st in plan.table.steps()]
        pre = prefetch_start_s(*prev, t) if li in prefetched else None
        lt: LayerTime = layer_time(steps, hw, double=plan.weight_half_bytes > 0, prefetch_start_s=pre)
        prev = (lt, t, li in prefetched)
        t += lt.total_s
    return t
