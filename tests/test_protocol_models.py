"""The authors' inits, the full head's linear term and affine inputs (SPEC §1-2, "Protocols"),
each checked against a direct formula or its stated distribution."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory._util import ConfigError
from margin_theory.homogeneity import numeric_homogeneity
from margin_theory.models import build_model


def _moments_ok(x: torch.Tensor, mean: float, std: float, z: float = 6.0) -> bool:
    """Sample mean and std of i.i.d. normal draws within z standard errors of (mean, std)."""
    x = x.double().flatten()
    n = x.numel()
    m_ok = abs(float(x.mean()) - mean) <= z * std / math.sqrt(n)
    s_ok = abs(float(x.std()) - std) <= z * std / math.sqrt(2 * (n - 1))
    return m_ok and s_ok


@settings(max_examples=20, deadline=None)
@given(d=st.integers(20, 120), C=st.integers(2, 6), r=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_authors_lowrank_init_is_kaiming_normal_a10(d, C, r, seed):
    torch.manual_seed(seed)
    w = build_model("lowrank", (d,), C, rank=r, init="authors").head.weight.detach()
    # the authors' tensor is [C, d, r]; torch's kaiming_normal_(a=10) uses fan_in = d * r
    ref = torch.empty(C, d, r)
    torch.nn.init.kaiming_normal_(ref, a=10)
    want = math.sqrt(2 / 101) / math.sqrt(d * r)
    assert math.isclose(float(ref.std()), want, rel_tol=0.5)               # our reading of torch's rule
    assert _moments_ok(w, 0.0, want)
    assert not _moments_ok(build_model("lowrank", (d,), C, rank=r).head.weight.detach(), 0.0, want)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(12, 60), C=st.integers(2, 5), seed=st.integers(0, 2 ** 16))
def test_authors_full_head_init(d, C, seed):
    torch.manual_seed(seed)
    head = build_model("quadratic", (d,), C, init="authors", linear_term=True).head
    V = head.weight.detach()
    assert torch.equal(V, V.transpose(-1, -2))                               # symmetrised, exactly
    iu = torch.triu_indices(d, d, 1)
    off = V[:, iu[0], iu[1]]
    diag = torch.diagonal(V, dim1=-2, dim2=-1)
    assert _moments_ok(off, 0.0, (1 / d) / math.sqrt(2))                    # (a + a^T)/2 of N(0, 1/d^2)
    assert _moments_ok(diag, 0.0, 1 / d)
    assert _moments_ok(head.linear.detach(), -1 / math.sqrt(d), 1 / math.sqrt(d))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 7), C=st.integers(2, 5), B=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_linear_term_head_equals_authors_formula(d, C, B, seed):
    """(x^T A x + w.x)/2 with A the stored (symmetric) matrix, as a plain double loop."""
    torch.manual_seed(seed)
    model = build_model("quadratic", (d,), C, linear_term=True, init="authors").double()
    with torch.no_grad():                      # an arbitrary V: f must use sym(V) = the authors' A
        model.head.weight.normal_()
    x = torch.randn(B, d, dtype=torch.float64)
    V, w = model.head.weight.detach(), model.head.linear.detach()
    A = (V + V.transpose(-1, -2)) / 2
    want = torch.empty(B, C, dtype=torch.float64)
    for b in range(B):
        for i in range(C):
            quad = sum(x[b, k] * A[i, k, l] * x[b, l] for k in range(d) for l in range(d))
            want[b, i] = (quad + sum(w[i, k] * x[b, k] for k in range(d))) / 2
    assert torch.allclose(model(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,kw,L", [
    ("quadratic", {"linear_term": True}, 1),
    ("quadratic", {"affine": True}, 1),
    ("quadratic", {"affine": True, "linear_term": True}, 1),
    ("lowrank", {"affine": True, "rank": 2}, 2),
    ("lowrank", {"affine": True, "layers": 2, "hidden": 3}, 6),
    ("linear", {"affine": True}, 1),
    ("lowrank", {"init": "authors", "rank": 3}, 2),
])
def test_declared_degree_confirmed_numerically(name, kw, L):
    torch.manual_seed(0)
    model = build_model(name, (5,), 3, **kw)
    assert model.degree == L
    r = numeric_homogeneity(model, torch.randn(4, 5), attribute=False)
    assert r.homogeneous and r.degree == L


def test_linear_term_on_features_is_not_homogeneous():
    torch.manual_seed(0)
    model = build_model("conv-quadratic", (1, 6, 6), 3, linear_term=True)
    assert model.degree is None                                  # x^T W x has degree 3, w.x degree 2
    r = numeric_homogeneity(model, torch.rand(3, 1, 6, 6), attribute=False)
    assert not r.homogeneous


def test_affine_gives_linear_and_constant_terms():
    """With x -> [x, 1], W = [[A, b], [b^T, c]] gives x^T A x + 2 b.x + c: an odd part f(x) != f(-x)."""
    d = 3
    model = build_model("quadratic", (d,), 2, affine=True).double()
    A = torch.randn(d, d, dtype=torch.float64)
    A = A + A.T
    b = torch.randn(d, dtype=torch.float64)
    c = 0.7
    W = torch.zeros(2, d + 1, d + 1, dtype=torch.float64)
    W[0, :d, :d], W[0, :d, d], W[0, d, :d], W[0, d, d] = A, b, b, c
    with torch.no_grad():
        model.head.weight.copy_(W)
    x = torch.randn(5, d, dtype=torch.float64)
    want = torch.einsum("bi,ij,bj->b", x, A, x) + 2 * x @ b + c
    assert torch.allclose(model(x)[:, 0], want, rtol=1e-12)
    assert not torch.allclose(model(x)[:, 0], model(-x)[:, 0])


@pytest.mark.parametrize("name,kw,msg", [
    ("conv-lowrank", {"affine": True}, "affine inputs apply to"),
    ("relu2", {"affine": True}, "affine inputs apply to"),
    ("lowrank", {"linear_term": True}, "linear term belongs"),
    ("linear", {"init": "bogus"}, "unknown init"),
])
def test_bad_combinations_are_refused(name, kw, msg):
    shape = (1, 6, 6) if name.startswith("conv") else (4,)
    with pytest.raises(ConfigError, match=msg):
        build_model(name, shape, 3, **kw)
