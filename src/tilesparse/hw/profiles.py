"""Rule profiles: which timing rules the time model and the clocked replay apply (docs/time-model.md).

A ``RuleProfile`` is plain data, so both the time model (``tilesparse.timing``) and the replay
(``tilesparse.sim.replay``), which must not import each other, read the same value.

* ``TILESPARSE`` (the default): today's rules, the estimates bit-for-bit as before.
* ``PAPER``: the paper's rules read literally (wbs-paper.md, "Time model"): a step of one iteration
  runs LOADW → LOADWM → its own pipeline in sequence; LOADW waits for the step before it (no
  prefetch); LOADWM waits for the whole chunk (no cut-through); no mechanism the paper did not use.
* ``MEASURED``: tilesparse's rules plus figures measured on real NPUs (``MeasuredFigures``; each
  figure's source is in its comment and in docs/time-model.md).

>>> get_profile("paper").loadw_prefetch
False
>>> get_profile("tilesparse") == TILESPARSE
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Mechanisms the paper did not use, each behind an hw flag of the same name (wired at merge).
# hardware mechanisms beyond the paper's that the compiler can use today (hw flags); the paper used none
ALL_EXTRA_MECHANISMS: tuple[str, ...] = ("dma_compression", "weight_double_buffer", "weight_prefetch")

__all__ = ["ALL_EXTRA_MECHANISMS", "MEASURED",
           "PAPER", "PROFILES", "TILESPARSE", "MeasuredFigures", "RuleProfile", "get_profile"]


@dataclass(frozen=True)
class MeasuredFigures:
    """Figures measured on real NPUs that scale or add to the rule-derived time.

    ``kernel_efficiency``: the fraction of the matmul peak one core's kernel reaches (every COMP
    iteration takes its rule-2 cycles / this); ``invocation_s``: a fixed cost per call of the
    network, added once to the total. 1.0 / 0.0 is "no measured correction". There is no separate
    whole-array efficiency: the DMA and lock stalls that make an array slower than its cores are
    what rules 3–6 already play out, and a factor on top would count them twice."""

    kernel_efficiency: float = 1.0
    invocation_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.kernel_efficiency <= 1.0:
            raise ValueError(f"MeasuredFigures.kernel_efficiency: expected a fraction in (0, 1], "
                             f"got {self.kernel_efficiency!r}")
        if self.invocation_s < 0.0:
            raise ValueError(f"MeasuredFigures.invocation_s: expected >= 0 s, got {self.invocation_s!r}")


@dataclass(frozen=True)
class RuleProfile:
    """One named set of timing rules; a field per rule the paper states differently from tilesparse.

    ``extra_mechanisms``: names of hardware mechanisms beyond the paper's (the hw flag
    ``dma_compression``: activations zero-compressed on the MemTile<->core streams;
    ``core.weight_double_buffer``: the core's weight buffer in two halves, LOADWM not halting the
    cores; ``memtile.weight_prefetch``: a layer's first weights loaded during the layer before)
    this profile allows; a mechanism
    not named here must stay off under the profile (the ``paper`` profile names none)."""

    name: str
    serial_single_steps: bool = False  # a step of one iteration runs LOADW → LOADWM → pipeline in sequence
    loadw_prefetch: bool = True  # LOADW of a step may start before the earlier steps finished
    cut_through: bool = True  # LOADWM copies piece i once LOADW delivered it (not the whole chunk)
    residual_fusion: bool = True  # adds fused into the producing conv, the sum kept in core.res
    scratch_as_buffer: bool = True  # the kernel scratch region holds the fused add's operand
    layer_barrier: bool = True  # layers one after another
    extra_mechanisms: frozenset[str] = field(default_factory=lambda: frozenset(ALL_EXTRA_MECHANISMS))
    measured: MeasuredFigures = MeasuredFigures()

    def allows(self, mechanism: str) -> bool:
        """Whether the profile allows hardware ``mechanism`` (one of ``ALL_EXTRA_MECHANISMS``)."""
        if mechanism not in ALL_EXTRA_MECHANISMS:
            raise ValueError(f"profile {self.name}: unknown mechanism {mechanism!r}; known: "
                             f"{', '.join(sorted(ALL_EXTRA_MECHANISMS))}")
        return mechanism in self.extra_mechanisms


TILESPARSE = RuleProfile("tilesparse")
PAPER = RuleProfile("paper", serial_single_steps=True, loadw_prefetch=False, cut_through=False,
                    residual_fusion=False, scratch_as_buffer=False, extra_mechanisms=frozenset())
# Fitted (benchmarks/measured_profile.py -> results/measured_profile.md; docs/time-model.md, "Profiles"):
# least squares on log times of two public int8 GEMMs on NPU2 (Strix Halo, IRON's GEMM operator,
# amd/IRON issue #172: 1024x512x1024 at ~3.2 TOPS, 4096^3 at ~7.8 TOPS) against our time model on the
# same GEMMs as 1x1 convs on the npu2 preset: kernel_efficiency 0.1586, invocation_s 200.3 us, rounded
# here. Held out: 2048^3 on NPU2 (IRON #172, #177) and IREE's bf16 1024^3 on NPU1 (iree-amd-aie PR
# #282), predicted within 17 %. The efficiency is that software stack's relative to our schedule
# (xrt-smi's own GEMM reaches 51 TOPS, IRON #55), and the call cost is an IRON GEMM call's, 4x the
# 52 us round trip of xrt-smi's empty call (IRON #55). The earlier figures, 0.80 (mlir-aie #2735,
# kernel alone) and 52 us, were taken as stated, not fitted.
MEASURED = replace(TILESPARSE, name="measured",
                   measured=MeasuredFigures(kernel_efficiency=0.159, invocation_s=200e-6))
PROFILES = {p.name: p for p in (TILESPARSE, PAPER, MEASURED)}


def get_profile(name: str | RuleProfile | None = None) -> RuleProfile:
    """The profile called ``name`` (``None``: ``tilesparse``); a ``RuleProfile`` is returned as is."""
    if isinstance(name, RuleProfile):
        return name
    key = "tilesparse" if name is None else str(name).strip().lower()
    if key not in PROFILES:
        raise ValueError(f"unknown rule profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[key]
