"""Margins (SPEC §2): q, normalised margins, scale invariance, normalisation choice, eq. 5."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory._util import ConfigError
from margin_theory.margins import (NotHomogeneousError, compute_margins, get_normalisation,
                                   margin_regularised_loss, margin_values, normalised_margins,
                                   param_norm, runner_up)
from margin_theory.models import build_model


def _data(shape, C, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand((n,) + tuple(shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    return X, y


def _scale_(params, c):
    with torch.no_grad():
        for p in params:
            p.mul_(c)


# ---------------------------------------------------------------------------
# Scale invariance gamma_n(c theta) = gamma_n(theta) (property, SPEC §2, §6)
# ---------------------------------------------------------------------------
MODELS = [
    ("linear", {}, 1),
    ("quadratic", {}, 1),
    ("lowrank", {"rank": 2}, 2),
    ("lowrank", {"layers": 2, "hidden": 3}, 6),
    ("lowrank", {"layers": 3, "hidden": [3, 2]}, 14),
]


@settings(max_examples=25, deadline=None)
@given(which=st.integers(0, len(MODELS) - 1), c=st.floats(0.1, 10.0), d=st.integers(2, 6),
       C=st.integers(2, 4), seed=st.integers(0, 2 ** 16))
def test_gamma_scale_invariant(which, c, d, C, seed):
    name, kw, L = MODELS[which]
    torch.manual_seed(seed)
    model = build_model(name, (d,), C, **kw).double()
    X, y = _data((d,), C, seed=seed)
    r1 = compute_margins(model, X, y)
    assert (r1.normalisation, r1.degree) == ("full", L)
    _scale_(model.parameters(), c)
    r2 = compute_margins(model, X, y)
    assert torch.allclose(r2.q, c ** L * r1.q, rtol=1e-9, atol=1e-300)       # q is L-homogeneous
    assert torch.allclose(r2.gamma, r1.gamma, rtol=1e-9, atol=1e-14)         # gamma is invariant
    assert math.isclose(r2.gamma_bar, r1.gamma_bar, rel_tol=1e-9, abs_tol=1e-14)
    assert math.isclose(r2.gamma_min, r1.gamma_min, rel_tol=1e-9, abs_tol=1e-14)
    assert math.isclose(r2.theta_norm, c * r1.theta_norm, rel_tol=1e-12)


def test_gamma_not_invariant_with_wrong_degree():
    """The check can fail: normalising a 6-homogeneous model with L = 2 is not scale invariant."""
    torch.manual_seed(0)
    model = build_model("lowrank", (4,), 3, layers=2, hidden=3).double()
    X, y = _data((4,), 3)
    g1 = compute_margins(model, X, y, degree=2).gamma
    _scale_(model.parameters(), 2.0)
    g2 = compute_margins(model, X, y, degree=2).gamma
    assert torch.allclose(g2, 16 * g1)  # 2^(6-2)


# ---------------------------------------------------------------------------
# q formula, runner-up, gamma_bar, gamma_min
# ---------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 12), C=st.integers(2, 6), seed=st.integers(0, 2 ** 16))
def test_q_matches_brute_force(N, C, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    q = margin_values(logits, y)
    j = runner_up(logits, y)
    for n in range(N):
        others = [logits[n, k].item() for k in range(C) if k != y[n]]
        assert q[n].item() == pytest.approx(logits[n, y[n]].item() - max(others), abs=0)
        assert j[n].item() != y[n].item() and logits[n, j[n]].item() == max(others)


def test_margin_values_validates():
    with pytest.raises(ConfigError, match="shape"):
        margin_values(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="C >= 2"):
        margin_values(torch.randn(4, 1), torch.zeros(4, dtype=torch.long))


def test_gamma_bar_gamma_min_accuracy_loss():
    torch.manual_seed(0)
    model = build_model("lowrank", (5,), 3, rank=2).double()
    X, y = _data((5,), 3, n=20)
    r = compute_margins(model, X, y)
    logits = model(X).detach()
    q = margin_values(logits, y)
    norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))
    gamma = q / norm ** 2
    assert torch.allclose(r.q, q) and torch.allclose(r.gamma, gamma, rtol=1e-12)
    assert r.gamma_bar == pytest.approx(float(gamma.mean()), rel=1e-12)
    assert r.gamma_min == pytest.approx(float(gamma.min()), rel=1e-12)
    assert r.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert r.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
    d = r.as_dict()
    assert d["normalisation"] == "full" and d["degree"] == 2
    # precomputed logits give the same result
    r2 = compute_margins(model, X, y, logits=logits)
    assert r2.gamma_bar == r.gamma_bar
    assert torch.allclose(normalised_margins(q, norm, 2), gamma, rtol=1e-12)


def test_compute_margins_validates():
    model = build_model("linear", (3,), 2)
    with pytest.raises(ConfigError, match="empty"):
        compute_margins(model, torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="samples"):
        compute_margins(model, torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="auto, full or head"):
        get_normalisation(model, "weird")
    with pytest.raises(ConfigError, match="no parameters"):
        param_norm([])


# ---------------------------------------------------------------------------
# Head normalisation for non-homogeneous models (SPEC §2)
# ---------------------------------------------------------------------------
def test_relu2_uses_head_normalisation_and_is_head_scale_invariant():
    torch.manual_seed(0)
    model = build_model("relu2", (6,), 4, hidden=10).double()
    X, y = _data((6,), 4)
    r1 = compute_margins(model, X, y)
    assert (r1.normalisation, r1.degree) == ("head", 1)
    spec = get_normalisation(model)
    assert {id(p) for p in spec.params} == {id(model.head.linear.weight), id(model.head.linear.bias)}
    assert "head parameters only" in spec.describe() and "^1" in spec.describe()
    _scale_(model.head.parameters(), 3.7)  # (W2, b2) jointly 1-homogeneous
    r2 = compute_margins(model, X, y)
    assert torch.allclose(r2.gamma, r1.gamma, rtol=1e-10)


@pytest.mark.parametrize("head,L", [("lowrank", 2), ("linear", 1), ("quadratic", 1)])
def test_resnet_uses_head_normalisation(head, L):
    torch.manual_seed(0)
    model = build_model(f"resnet10-{head}", (3, 8, 8), 3).double().eval()
    X, y = _data((3, 8, 8), 3, n=4)
    r1 = compute_margins(model, X, y)
    assert (r1.normalisation, r1.degree) == ("head", L)
    assert r1.theta_norm == pytest.approx(float(param_norm(model.head.parameters()).detach()))
    _scale_(model.head.parameters(), 2.5)
    r2 = compute_margins(model, X, y)
    assert torch.allclose(r2.gamma, r1.gamma, rtol=1e-9)


def test_conv_with_bias_normalisations():
    """conv + bias + ReLU + lowrank head is in fact 4-homogeneous (a first-layer bias is jointly
    homogeneous with its kernel); the head normalisation (degree 2) and the full one (degree 4)
    are both scale invariant under their own scalings."""
    torch.manual_seed(0)
    model = build_model("conv-lowrank", (1, 6, 6), 3, conv_bias=True).double()
    X, y = _data((1, 6, 6), 3)
    auto = compute_margins(model, X, y)
    assert (auto.normalisation, auto.degree) == (("head", 2) if model.degree is None else ("full", 4))
    head = compute_margins(model, X, y, normalisation="head")
    full = compute_margins(model, X, y, normalisation="full", degree=4)
    assert (head.normalisation, head.degree, full.normalisation, full.degree) == ("head", 2, "full", 4)
    _scale_(model.head.parameters(), 1.9)
    assert torch.allclose(compute_margins(model, X, y, normalisation="head").gamma, head.gamma, rtol=1e-10)
    full_before = compute_margins(model, X, y, normalisation="full", degree=4).gamma
    _scale_(model.parameters(), 0.37)
    assert torch.allclose(compute_margins(model, X, y, normalisation="full", degree=4).gamma, full_before,
                          rtol=1e-10)


@pytest.mark.parametrize("name,shape", [("relu2", (5,)), ("resnet10-lowrank", (3, 8, 8))])
def test_full_normalisation_on_non_homogeneous_model_raises(name, shape):
    kw = {"hidden": 4} if name == "relu2" else {}
    model = build_model(name, shape, 3, **kw)
    X, y = _data(shape, 3, n=2)
    with pytest.raises(NotHomogeneousError, match="not homogeneous") as exc:
        compute_margins(model, X.float(), y, normalisation="full")
    assert "normalisation='head'" in str(exc.value) and name in str(exc.value)
    assert isinstance(exc.value, ConfigError)


def test_plain_module_needs_degree():
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    X, y = _data((3,), 2)
    with pytest.raises(ConfigError, match="pass degree"):
        compute_margins(net, X, y)
    r = compute_margins(net, X, y, degree=2)
    assert (r.normalisation, r.degree) == ("full", 2)
    with pytest.raises(ConfigError, match="no .head"):
        get_normalisation(net, "head", degree=2)


# ---------------------------------------------------------------------------
# Margin-regularised loss (paper eq. 5)
# ---------------------------------------------------------------------------
def test_margin_regularised_loss():
    torch.manual_seed(0)
    model = build_model("lowrank", (5,), 3, rank=2).double()
    X, y = _data((5,), 3, n=16)
    logits = model(X)
    ce = F.cross_entropy(logits, y)
    assert torch.equal(margin_regularised_loss(logits, y, model, lam=0.0), ce)
    lam = 0.3
    loss = margin_regularised_loss(logits, y, model, lam=lam)
    gbar = compute_margins(model, X, y).gamma_bar
    assert loss.item() == pytest.approx(ce.item() - lam * gbar, rel=1e-12)
    # reduction="sum" (a rank's part of a distributed batch): sum_n (CE_n - lam * gamma_n)
    total = margin_regularised_loss(logits, y, model, lam=lam, reduction="sum")
    assert total.item() == pytest.approx(len(y) * (ce.item() - lam * gbar), rel=1e-12)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # the margin term contributes to the gradient
    model.zero_grad()
    F.cross_entropy(model(X), y).backward()
    assert not all(torch.allclose(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_margin_regularised_loss_gradient_matches_finite_difference():
    torch.manual_seed(1)
    model = build_model("lowrank", (4,), 3, layers=2, hidden=3).double()
    X, y = _data((4,), 3, n=10)
    lam = 2.0
    loss = margin_regularised_loss(model(X), y, model, lam=lam)
    loss.backward()
    direction = [torch.randn_like(p) for p in model.parameters()]
    analytic = sum((p.grad * v).sum() for p, v in zip(model.parameters(), direction))
    eps = 1e-6

    def at(t):
        with torch.no_grad():
            for p, v in zip(model.parameters(), direction):
                p.add_(t * v)
            val = float(margin_regularised_loss(model(X), y, model, lam=lam))
            for p, v in zip(model.parameters(), direction):
                p.sub_(t * v)
        return val

    fd = (at(eps) - at(-eps)) / (2 * eps)
    assert fd == pytest.approx(float(analytic), rel=1e-5, abs=1e-9)


def test_margin_regularised_loss_head_normalisation_and_validation():
    torch.manual_seed(0)
    model = build_model("relu2", (5,), 3, hidden=6).double()
    X, y = _data((5,), 3)
    logits = model(X)
    loss = margin_regularised_loss(logits, y, model, lam=0.5)
    gbar = compute_margins(model, X, y).gamma_bar  # head normalisation, degree 1
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item() - 0.5 * gbar, rel=1e-12)
    with pytest.raises(ConfigError, match="lambda must be >= 0"):
        margin_regularised_loss(logits, y, model, lam=-0.1)
    with pytest.raises(NotHomogeneousError):
        margin_regularised_loss(logits, y, model, lam=0.1, normalisation="full")


def test_deep_model_margins_do_not_overflow():
    """||theta||^L of a fresh 8-layer DIQNN (L = 510) exceeds float64: every margin, the smoothed one
    included, must still come out finite (it underflows towards 0), never raise."""
    from margin_theory.margins import smoothed_from_sum
    torch.manual_seed(0)
    model = build_model("lowrank", (4,), 3, layers=8)
    X, y = torch.rand(16, 4), torch.arange(16) % 3
    m = compute_margins(model, X, y)
    assert math.isfinite(m.gamma_smoothed) and math.isfinite(m.gamma_bar)
    with pytest.raises(OverflowError):      # the reason: the power itself is out of range
        10.0 ** 510
    num = -math.log(math.expm1(0.5))
    assert smoothed_from_sum(0.5, math.log(0.5), 10.0, 300)[0] == pytest.approx(num * 1e-300, rel=1e-12)
    assert smoothed_from_sum(0.5, math.log(0.5), 10.0, 510) == (0.0, True)     # num * 1e-510 underflows
