"""``tilesparse simulate --timing``: a program timed twice, by the time model
(``estimate.timemodel``) and by the clocked replay (``sim.replay``, docs/replay.md), layer by layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["REL_TOL", "TimingRow", "engines_line", "timing_json", "timing_rows", "timing_summary", "timing_table"]

REL_TOL = 1e-9  # the two agree up to float rounding (sums taken in another order)


@dataclass(frozen=True)
class TimingRow:
    layer: str
    model_s: float
    replay_s: float

    @property
    def diff_s(self) -> float:
        return self.replay_s - self.model_s

    @property
    def equal(self) -> bool:
        return abs(self.diff_s) <= REL_TOL * max(abs(self.model_s), abs(self.replay_s))


def timing_rows(prog: Any, profile: Any = None) -> tuple[list[TimingRow], float, Any]:
    """Per layer the time model's and the replay's seconds under the rule ``profile`` (a
    ``RuleProfile``, its name, or None: tilesparse); the time model's total; the replay
    (``ReplayResult``: its total, layer spans, engines' busy seconds)."""
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.hw import get_profile
    from tilesparse.sim.replay import replay

    prof = get_profile(profile if profile is not None else prog.hw.rules)
    model, rep = estimate_program(prog, prof), replay(prog, prof)
    rows = [TimingRow(name, sec, span.seconds) for (name, _, sec), span in zip(model.layers, rep.layers, strict=True)]
    return rows, model.total_s, rep


def engines_line(rep: Any) -> str:
    """The replay's busy seconds per engine and the cores' halt."""
    busy = ", ".join(f"{e} {s * 1e6:.1f}" for e, s in rep.busy_s.items() if s)
    return f"replay, µs busy per engine: {busy}; cores halted by LOADWM {rep.halted_s * 1e6:.1f}"


def timing_table(prog: Any, rows: list[TimingRow], model_s: float, replay_s: float, rules: str = "tilesparse") -> Any:
    from rich.table import Table

    t = Table(title=f"{prog.graph} on {prog.hw.label}: latency, time model vs clocked replay ({rules} rules)")
    for col in ("layer", "time model µs", "replay µs", "difference ns", "equal"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        t.add_row(r.layer, f"{r.model_s * 1e6:.3f}", f"{r.replay_s * 1e6:.3f}", f"{r.diff_s * 1e9:.3g}",
                  "yes" if r.equal else "NO")
    t.add_row("total", f"{model_s * 1e6:.3f}", f"{replay_s * 1e6:.3f}", f"{(replay_s - model_s) * 1e9:.3g}",
              "yes" if TimingRow("", model_s, replay_s).equal else "NO")
    return t


def timing_summary(rows: list[TimingRow], model_s: float, replay_s: float) -> str:
    bad = [r.layer for r in rows if not r.equal]
    head = f"timing: time model {model_s * 1e3:.4f} ms, clocked replay {replay_s * 1e3:.4f} ms; "
    if not bad:
        return head + f"all {len(rows)} layers equal (within {REL_TOL:g} relative)"
    return head + f"{len(bad)} of {len(rows)} layers DIFFER: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")


def timing_json(rows: list[TimingRow], model_s: float, rep: Any) -> dict:
    return {"model_s": model_s, "replay_s": rep.total_s, "equal": all(r.equal for r in rows),
            "replay_busy_s": dict(rep.busy_s), "replay_halted_s": rep.halted_s,
            "layers": [{"layer": r.layer, "model_s": r.model_s, "replay_s": r.replay_s, "diff_s": r.diff_s,
                        "equal": r.equal, "replay_start_s": span.start_s, "replay_end_s": span.end_s}
                       for r, span in zip(rows, rep.layers, strict=True)]}
