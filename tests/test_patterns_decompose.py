"""TASD: terms obey their patterns and sum to the approximation; the error falls with more terms and
matches a hand computation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, Block, parse_pattern
from tilesparse.patterns.decompose import decompose, search_terms


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.sampled_from([4, 8, 12, 16]), st.integers(0, 2**16))
def test_terms_obey_their_patterns_and_sum_to_the_approximation(rows, cols, seed):
    w = torch.randn(rows, cols, 3, 3, generator=torch.Generator().manual_seed(seed))
    terms = [NM(2, 4), NM(1, 4), parse_pattern("8x8@0.5/2:4") if cols % 8 == 0 and rows >= 8 else NM(1, 4)]
    d = decompose(w, terms)
    for p, t in zip(d.patterns, d.terms, strict=True):
        assert p.check(t != 0, tuple(w.shape)) == []
    assert torch.equal(d.approximation, sum(d.terms))
    # greedy on the residual: where a term is nonzero it carries exactly the weight, no overlap
    nonzero = torch.stack([t != 0 for t in d.terms]).sum(0)
    assert int(nonzero.max()) <= 1
    assert torch.equal(d.approximation[nonzero == 1], w[nonzero == 1])


def test_error_by_hand_and_falls_with_more_terms():
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    one = decompose(w, [NM(2, 4)])
    assert one.relative_error(w) == pytest.approx((4 + 1) ** 0.5 / 30 ** 0.5)
    two = decompose(w, [NM(2, 4), NM(1, 4)])
    assert two.relative_error(w) == pytest.approx(1 / 30 ** 0.5)
    three = decompose(w, [NM(2, 4), NM(1, 4), NM(1, 4)])
    assert three.relative_error(w) == 0.0
    g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    errs = [decompose(g, [NM(2, 4)] * k).relative_error(g) for k in (1, 2)]
    assert errs[1] < errs[0]


def test_search_respects_the_density_budget_and_beats_a_single_term():
    g = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    d = search_terms(g, 0.75, max_terms=2)
    assert sum(1 - (p.nominal_sparsity() or 0) for p in d.patterns) <= 0.75 + 1e-12
    assert d.relative_error(g) <= decompose(g, [NM(2, 4)]).relative_error(g)
    with pytest.raises(ConfigError, match="fits density"):
        search_terms(g, 0.01)


def test_refuses_free_or_unfit_terms():
    with pytest.raises(ConfigError, match="free sparsity"):
        decompose(torch.randn(8, 8), [Block(8, 8)])
    with pytest.raises(ConfigError, match="does not fit"):
        decompose(torch.randn(8, 2), [NM(2, 4)])
