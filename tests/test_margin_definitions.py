"""The other margin definitions (SPEC §2): the authors' output-normalised margin and
Lyu & Li's smoothed margin, each pinned to a direct formula written here."""
from __future__ import annotations

import math

import mpmath
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory.margins import compute_margins, output_margins, smoothed_margin
from margin_theory.models import build_model

MODELS = [("linear", {}, 1), ("quadratic", {}, 1), ("lowrank", {"rank": 2}, 2),
          ("lowrank", {"layers": 2, "hidden": 3}, 6)]


def _logits(N, C, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, C, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)


def _direct_output(logits, y):
    """mean_n 1/(C-1) sum_{j != y_n} (f_y - f_j) / ||f||, a plain loop."""
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        norm = math.sqrt(sum(v * v for v in row))
        s = sum(row[label] - v for j, v in enumerate(row) if j != label)
        out.append(0.0 if norm == 0 else s / ((len(row) - 1) * norm))
    return out


def _direct_smoothed(logits, y, norm, L):
    """log(1/(exp(S) - 1)) / norm^L with S the summed cross-entropy, in 60-digit mpmath."""
    mpmath.mp.dps = 60
    S = mpmath.mpf(0)
    for row, label in zip(logits.tolist(), y.tolist()):
        S += mpmath.log(sum(mpmath.exp(mpmath.mpf(v)) for v in row)) - mpmath.mpf(row[label])
    return float(-mpmath.log(mpmath.expm1(S)) / mpmath.mpf(norm) ** L), float(S)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 12), C=st.integers(2, 6), seed=st.integers(0, 2 ** 16),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_output_margin_equals_direct_formula(N, C, seed, scale):
    logits, y = _logits(N, C, seed, scale)
    got = output_margins(logits, y).tolist()
    for a, b in zip(got, _direct_output(logits, y)):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def test_output_margin_zero_output_is_zero():
    assert output_margins(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 2])).tolist() == [0.0, 0.0]


@settings(max_examples=25, deadline=None)
@given(which=st.integers(0, len(MODELS) - 1), c=st.floats(0.1, 10.0), seed=st.integers(0, 2 ** 16))
def test_output_margin_scale_invariant(which, c, seed):
    name, kw, _ = MODELS[which]
    torch.manual_seed(seed)
    model = build_model(name, (4,), 3, **kw).double()
    X = torch.rand(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    g1 = compute_margins(model, X, y).gamma_output
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(c)
    assert math.isclose(compute_margins(model, X, y).gamma_output, g1, rel_tol=1e-9, abs_tol=1e-13)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 10), C=st.integers(2, 5), seed=st.integers(0, 2 ** 16),
       scale=st.sampled_from([0.1, 1.0, 5.0, 40.0]), norm=st.floats(0.5, 3.0), L=st.integers(1, 3))
def test_smoothed_margin_equals_direct_formula(N, C, seed, scale, norm, L):
    logits, y = _logits(N, C, seed, scale)
    got, meaningful = smoothed_margin(logits, y, norm, L)
    want, S = _direct_smoothed(logits, y, norm, L)
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    assert meaningful == (S < math.log(2))


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 10), C=st.integers(2, 5), seed=st.integers(0, 2 ** 16),
       scale=st.sampled_from([0.1, 1.0, 10.0, 300.0]))
def test_smoothed_margin_lower_bounds_min_margin_with_the_stated_gap(N, C, seed, scale):
    """q_tilde <= q_min <= q_tilde + log(N (C-1)) + U, U = sum_n sum_{j != y} e^{f_j - f_y}."""
    logits, y = _logits(N, C, seed, scale)
    q_tilde, _ = smoothed_margin(logits, y, 1.0, 1)
    fy = logits.gather(1, y.view(-1, 1))
    diffs = (fy - logits).scatter(1, y.view(-1, 1), float("inf"))    # f_y - f_j, j != y
    q_min = float(diffs.min())
    U = float(torch.exp(-diffs).sum())
    assert q_tilde <= q_min + 1e-9 * max(1.0, abs(q_min))
    assert q_min <= q_tilde + math.log(N * (C - 1)) + U + 1e-9 * max(1.0, abs(q_min))


def test_smoothed_margin_tends_to_gamma_min_on_separable_data():
    """Scaling theta up along a separating direction: gamma_tilde -> gamma_min (not scale invariant)."""
    torch.manual_seed(0)
    model = build_model("linear", (2,), 2).double()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    X = torch.tensor([[2.0, 0.5], [1.5, 0.2], [0.1, 1.0], [0.3, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    gaps = []
    for c in (1.0, 10.0, 100.0, 1000.0):
        with torch.no_grad():
            model.head.weight.copy_(c * torch.eye(2, dtype=torch.float64))
        r = compute_margins(model, X, y)
        assert r.gamma_smoothed <= r.gamma_min + 1e-12
        gaps.append(r.gamma_min - r.gamma_smoothed)
    assert gaps[0] > gaps[1] >= gaps[2] >= gaps[3] >= 0 and gaps[3] < 1e-5 < gaps[0]
    assert r.smoothed_meaningful


def test_every_margin_definition_is_a_result_field_and_a_metric():
    """One registry (margins.MARGIN_DEFINITIONS): each definition is a MarginResult field,
    reaches as_dict() and is a metrics.jsonl key of the trainer."""
    import dataclasses

    from margin_theory.margins import MARGIN_DEFINITIONS, MarginResult
    from margin_theory.train import METRIC_KEYS

    names = {f.name for f in dataclasses.fields(MarginResult)}
    for key in MARGIN_DEFINITIONS:
        assert key in names and key in METRIC_KEYS, key
