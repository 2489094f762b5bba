"""Which blocks to keep, given block scores (higher = more important).

Modes:
  * ``layer``          — each layer zeroes ``round(sparsity * n_blocks)`` of its lowest blocks;
  * ``global``         — one threshold over all layers' raw scores; total zeros ``round(sparsity * N)``;
  * ``balanced_rows``  — every block row (output-channel group) zeroes ``round(sparsity * cols)`` blocks,
                         so work splits evenly across cores that own output channels;
  * ``balanced_cols``  — every block column (input-channel group) zeroes ``round(sparsity * rows)``.

``round`` is Python's (half to even), as in ``torch.ao.pruning.WeightNormSparsifier``. Unless
``allow_empty_rows``, every block row keeps at least its best block; a target that would empty a row is
clamped (the layer then reports the sparsity it actually reached). ``keep`` passes the current mask:
blocks already zeroed stay zeroed and count towards the target (incremental pruning).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from tilesparse.errors import ConfigError
from tilesparse.utils.config import short_repr

__all__ = ["MODES", "check_sparsity", "sparsity_problem", "zero_count", "select_layer", "select_global", "select_masks"]

MODES = ("layer", "global", "balanced_rows", "balanced_cols")


def sparsity_problem(sparsity: object) -> str | None:
    """What is wrong with a sparsity (a real number in [0, 1), not a boolean), or None: the one
    rule and wording for every verb, the Python API and the recipes."""
    ok = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool) and 0.0 <= float(sparsity) < 1.0
    return None if ok else f"expected a number in [0, 1), got {short_repr(sparsity, 40)}"


def check_sparsity(sparsity: object, what: str = "sparsity") -> float:
    """``sparsity`` as a float; ``ConfigError`` naming ``what`` (e.g. ``--sparsity``) otherwise.

    >>> check_sparsity(float("nan"), "--sparsity")
    Traceback (most recent call last):
    tilesparse.errors.ConfigError: --sparsity: expected a number in [0, 1), got nan
    """
    problem = sparsity_problem(sparsity)
    if problem is not None:
        raise ConfigError(what, [problem])
    return float(sparsity)  # type: ignore[arg-type]  # a Real, checked above


def zero_count(n: int, sparsity: float) -> int:
    """Blocks to zero out of ``n`` at ``sparsity`` (Python round, as torch.ao.pruning)."""
    return min(n, int(round(sparsity * n)))


def _prepared(scores: Tensor, keep: Tensor | None) -> Tensor:
    s = scores.detach().double().clone()
    if keep is not None:
        s[~keep.bool()] = -math.inf  # already zeroed: lowest, so they stay zeroed
    return s


def _zero_lowest(flat: Tensor, n_zero: int) -> Tensor:
    """Keep-mask over ``flat`` with its ``n_zero`` lowest entries zeroed (ties: lowest index)."""
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_zero > 0:
        idx = torch.sort(flat, stable=True).indices[:n_zero]
        keep[idx] = False
    return keep


def _protect_rows(s: Tensor) -> tuple[Tensor, int]:
    """Set each row's best block to +inf (never zeroed); returns the scores and how many were protected."""
    s = s.clone()
    s[torch.arange(s.shape[0]), s.argmax(dim=1)] = math.inf
    return s, s.shape[0]


def _balanced_rows(s: Tensor, sparsity: float, allow_empty_rows: bool) -> Tensor:
    rows, cols = s.shape
    k = zero_count(cols, sparsity)
    already = (s == -math.inf).sum(dim=1)
    k_row = torch.maximum(already, torch.full_like(already, k))
    if not allow_empty_rows:
        k_row = k_row.clamp(max=cols - 1)
    order = torch.sort(s, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cols).expand(rows, cols).contiguous())
    return rank >= k_row[:, None]


def _repair_empty_rows(keep: Tensor, s: Tensor) -> Tensor:
    """Give every empty row a block back, taken from a row that keeps more than one, in the same
    column (column counts stay balanced); the swap that loses the least score wins. Always possible
    when the layer keeps at least as many blocks as it has rows."""
    keep = keep.clone()
    for r in torch.nonzero(~keep.any(dim=1)).flatten().tolist():
        donors = keep & (keep.sum(dim=1) > 1)[:, None]
        if not donors.any():
            continue  # fewer kept blocks than rows: some row must stay empty
        cand = torch.nonzero(donors)  # (d, c) pairs; argmax stays among them even if all gains are -inf
        gain = s[r, cand[:, 1]] - s[cand[:, 0], cand[:, 1]]
        d, c = cand[int(gain.argmax())].tolist()
        keep[d, c], keep[r, c] = False, True
    return keep


def select_layer(
    scores: Tensor, sparsity: float, mode: str = "layer", allow_empty_rows: bool = False,
    keep: Tensor | None = None,
) -> Tensor:
    """Bool keep-mask (rows, cols) for one layer. ``mode``: layer / balanced_rows / balanced_cols."""
    check_sparsity(sparsity)
    s = _prepared(scores, keep)
    if mode == "balanced_rows":
        return _balanced_rows(s, sparsity, allow_empty_rows)
    if mode == "balanced_cols":
        out = _balanced_rows(s.T, sparsity, allow_empty_rows=True).T.contiguous()
        return out if allow_empty_rows else _repair_empty_rows(out, s)
    if mode != "layer":
        raise ConfigError("selection", [f"unknown per-layer mode {mode!r}; expected one of {', '.join(MODES)}"])
    n_zero = max(zero_count(s.numel(), sparsity), int((s == -math.inf).sum()))
    protected = 0
    if not allow_empty_rows:
        s, protected = _protect_rows(s)
    n_zero = min(n_zero, s.numel() - protected)
    return _zero_lowest(s.flatten(), n_zero).reshape(s.shape)


def select_global(
    scores: Mapping[str, Tensor], sparsity: float, allow_empty_rows: bool = False,
    keep: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """One threshold across layers on the raw scores; returns a keep-mask per layer."""
    check_sparsity(sparsity)
    names = list(scores)
    prepared, protected = [], 0
    for n in names:
        s = _prepared(scores[n], None if keep is None else keep.get(n))
        if not allow_empty_rows:
            s, p = _protect_rows(s)
            protected += p
        prepared.append(s)
    flat = torch.cat([s.flatten() for s in prepared]) if prepared else torch.zeros(0, dtype=torch.float64)
    n_zero = max(zero_count(flat.numel(), sparsity), int((flat == -math.inf).sum()))
    keep_flat = _zero_lowest(flat, min(n_zero, flat.numel() - protected))
    out, start = {}, 0
    for n, s in zip(names, prepared, strict=True):
        out[n] = keep_flat[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def select_masks(
    scores: Mapping[str, Tensor], sparsity: Mapping[str, float], mode: str = "layer",
    allow_empty_rows: bool = False, keep: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks for several layers. ``sparsity`` maps layer -> target; in ``global`` mode all
    targets must be equal (one threshold), otherwise each layer is selected on its own."""
    if mode not in MODES:
        raise ConfigError("selection", [f"unknown selection mode {mode!r}; expected one of {', '.join(MODES)}"])
    if mode == "global":
        targets = set(sparsity.values())
        if len(targets) > 1:
            raise ConfigError("selection", ["global selection needs one sparsity for all layers; "
                                            f"got {sorted(targets)} (use per-layer targets with mode 'layer')"])
        return select_global(scores, targets.pop() if targets else 0.0, allow_empty_rows, keep)
    return {n: select_layer(scores[n], sparsity[n], mode, allow_empty_rows, None if keep is None else keep.get(n))
            for n in scores}
