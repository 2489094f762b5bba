"""Fitting the ``measured`` profile's figures to public NPU measurements (docs/time-model.md,
"Profiles"; benchmarks/measured_profile.py).

The model of one measurement ``i`` is our time model on an equivalent workload plus a fixed cost per
call:

    t_i(e, c) = T_i(e) + c

with ``T_i(e)`` the time model's latency of the workload's Program under the ``tilesparse`` rules at
kernel efficiency ``e`` (every COMP iteration takes its cycles / e; ``MeasuredFigures``) and no
invocation cost, and ``c`` the invocation cost (``invocation_s``). A measurement with no workload
(an empty call, ``None``) has ``T_i = 0``. The fit minimises the squared *relative* (log) errors,
``sum_i (log t_i(e, c) - log m_i)^2``, over ``e`` in ``(0, 1]`` and ``c >= 0``: measurements from
50 µs to 20 ms weigh alike. ``T_i(e)`` is not linear in ``1/e`` (COMP overlaps the transfers), so
``e`` is searched on a log-spaced grid, then refined by a bounded scalar search; for each ``e`` the
best ``c`` is a bounded scalar search too.

>>> import numpy as np
>>> fit = fit_figures(lambda e: np.array([2e-3 / e, 1e-5 / e + 1e-6]), [2e-3 / 0.25 + 1e-4, 1e-5 / 0.25 + 1e-6 + 1e-4])
>>> round(fit.kernel_efficiency, 4), round(fit.invocation_s * 1e6, 2)
(0.25, 100.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize_scalar  # type: ignore[import-untyped]  # scipy ships no stubs

from tilesparse.hw import TILESPARSE, MeasuredFigures, RuleProfile
from tilesparse.program import Program

from .timemodel import estimate_program

__all__ = ["Fit", "fit_figures", "measured_profile", "model_seconds", "predict"]

EFFICIENCY_FLOOR = 0.01  # the smallest kernel efficiency searched: 1 % of peak
GRID_POINTS = 60  # log-spaced efficiencies searched before the refinement
_TOL = 1e-7


@dataclass(frozen=True)
class Fit:
    """The fitted figures and how well they fit: ``log_errors`` are ``log(model / measured)`` per
    fitted measurement, in their order."""

    kernel_efficiency: float
    invocation_s: float
    log_errors: tuple[float, ...]

    @property
    def rms_log_error(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.log_errors))))

    @property
    def figures(self) -> MeasuredFigures:
        return MeasuredFigures(kernel_efficiency=self.kernel_efficiency, invocation_s=self.invocation_s)


def measured_profile(kernel_efficiency: float, invocation_s: float = 0.0) -> RuleProfile:
    """The ``tilesparse`` rules with the given measured figures (the ``measured`` profile's shape)."""
    figs = MeasuredFigures(kernel_efficiency=kernel_efficiency, invocation_s=invocation_s)
    return replace(TILESPARSE, name="measured", measured=figs)


def model_seconds(programs: Sequence[Program | None], kernel_efficiency: float) -> np.ndarray:
    """``T_i(e)``: each program's time-model latency at ``kernel_efficiency``, no invocation cost;
    ``None`` (an empty call) is 0."""
    prof = measured_profile(kernel_efficiency)
    return np.array([0.0 if p is None else estimate_program(p, prof).total_s for p in programs])


def predict(programs: Sequence[Program | None], figures: MeasuredFigures) -> np.ndarray:
    """``t_i``: the latency the figures predict for each program (``None``: an empty call)."""
    return model_seconds(programs, figures.kernel_efficiency) + figures.invocation_s


def _sq(model: np.ndarray, measured: np.ndarray) -> float:
    return float(np.sum(np.square(np.log(model) - np.log(measured))))


def _best_invocation(t: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """The invocation cost ``c >= 0`` minimising the log errors of ``t + c`` against ``m``, and that error."""
    hi = float(m.max())
    if np.any(t <= 0):  # an empty call needs c > 0
        lo = _TOL * hi
    else:
        lo = 0.0
    res = minimize_scalar(lambda c: _sq(t + c, m), bounds=(lo, hi), method="bounded",
                          options={"xatol": _TOL * hi})
    c, err = float(res.x), float(res.fun)
    if lo == 0.0 and _sq(t, m) <= err:
        return 0.0, _sq(t, m)
    return c, err


def fit_figures(time_fn: Callable[[float], np.ndarray], measured_s: Sequence[float]) -> Fit:
    """Least squares on log times: the ``(kernel_efficiency, invocation_s)`` whose
    ``time_fn(e) + invocation_s`` best matches ``measured_s`` (module docstring). ``time_fn(e)``
    returns ``T_i(e)`` for every measurement (``model_seconds`` over the workloads' programs, or any
    function in tests)."""
    m = np.asarray(measured_s, dtype=np.float64)
    if m.ndim != 1 or m.size < 2:
        raise ValueError(f"fit_figures: expected at least 2 measured times (2 figures are fitted), got {m.size}")
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError(f"fit_figures: measured times must be positive seconds, got {m.tolist()}")
    cache: dict[float, np.ndarray] = {}

    def times(e: float) -> np.ndarray:
        if e not in cache:
            cache[e] = np.asarray(time_fn(e), dtype=np.float64)
            if cache[e].shape != m.shape:
                raise ValueError(f"fit_figures: time_fn returned {cache[e].shape[0]} times for {m.size} "
                                 f"measurements")
        return cache[e]

    def profile_err(e: float) -> float:
        return _best_invocation(times(e), m)[1]

    grid = np.geomspace(EFFICIENCY_FLOOR, 1.0, GRID_POINTS)
    errs = [profile_err(float(e)) for e in grid]
    k = int(np.argmin(errs))
    lo, hi = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, len(grid) - 1)])
    res = minimize_scalar(profile_err, bounds=(lo, hi), method="bounded", options={"xatol": _TOL})
    e = float(res.x) if res.fun <= errs[k] else float(grid[k])
    c, _ = _best_invocation(times(e), m)
    log_err = np.log(times(e) + c) - np.log(m)
    return Fit(e, c, tuple(float(x) for x in log_err))
