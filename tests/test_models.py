"""Models of SPEC §1: parameter counts, shapes, exact symmetry, head formulas, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory._util import ConfigError
from margin_theory.models import (HEADS, MODEL_NAMES, RESNET_BLOCKS, Classifier, LinearHead, LowRankHead,
                                  QuadraticHead, build_model, parameter_count, unique_parameter_count)

MNIST = (1, 28, 28)


# ---------------------------------------------------------------------------
# Parameter counts on MNIST shapes (SPEC §1)
# ---------------------------------------------------------------------------
def test_parameter_counts_mnist():
    assert parameter_count(build_model("linear", MNIST, 10)) == 7_840
    lr = build_model("lowrank", MNIST, 10, rank=1)
    assert parameter_count(lr) == 7_840 == parameter_count(build_model("linear", MNIST, 10))
    assert parameter_count(build_model("lowrank", MNIST, 10, rank=4)) == 4 * 7_840
    q = build_model("quadratic", MNIST, 10)
    assert parameter_count(q) == 6_146_560 == 10 * 784 * 784
    assert unique_parameter_count(q) == 3_077_200 == 10 * 784 * 785 // 2
    assert unique_parameter_count(lr) == parameter_count(lr)
    ql = build_model("quadratic", MNIST, 10, linear_term=True)   # the linear term w_i counted once
    assert unique_parameter_count(ql) == 10 * 784 * 785 // 2 + 10 * 784
    assert parameter_count(ql) == 10 * 784 * 784 + 10 * 784
    assert parameter_count(build_model("relu2", MNIST, 10)) == 6_360_010  # hidden 8000 by default
    assert parameter_count(build_model("relu2", MNIST, 10, hidden=100)) == 784 * 100 + 100 + 100 * 10 + 10
    conv = build_model("conv-lowrank", MNIST, 10)
    assert parameter_count(conv) == 25 + 1 + 7_840
    assert parameter_count(build_model("conv-lowrank", MNIST, 10, conv_bias=False)) == 25 + 7_840
    deep = build_model("lowrank", MNIST, 10, layers=3, hidden=[16, 8], rank=2)
    assert parameter_count(deep) == 2 * (16 * 784 + 8 * 16 + 10 * 8)


# ---------------------------------------------------------------------------
# Output shapes for every factory name
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_every_name(name):
    torch.manual_seed(0)
    if name.startswith("resnet"):
        shape, kw = (3, 8, 8), {}
    elif name == "relu2":
        shape, kw = MNIST, {"hidden": 32}
    else:
        shape, kw = MNIST, {}
    model = build_model(name, shape, 10, **kw)
    assert isinstance(model, Classifier) and model.name == name and model.input_shape == shape
    model.eval()
    with torch.no_grad():
        out = model(torch.rand((2,) + shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.num_classes == 10
    assert model.head_degree in (1, 2)
    if name.startswith("resnet"):
        blocks = RESNET_BLOCKS[int(name[6:8])]
        assert model.features.blocks == blocks
        assert model.degree is None


def test_vector_inputs_and_deep_lowrank_shapes():
    m = build_model("lowrank", (7,), 3, layers=3, hidden=[5, 4], rank=2)
    assert m(torch.randn(6, 7)).shape == (6, 3)
    assert m.degree == 14 and m.head_degree == 2 and m.feature_degree == 6
    assert [lay.num_classes for lay in list(m.features)[1:]] == [5, 4]
    assert build_model("lowrank", (7,), 3, layers=2, hidden=5).degree == 6


def test_declared_degrees():
    assert build_model("linear", (4,), 2).degree == 1
    assert build_model("quadratic", (4,), 2).degree == 1
    assert build_model("lowrank", (4,), 2).degree == 2
    assert build_model("conv-lowrank", (1, 4, 4), 2, conv_bias=False).degree == 4
    assert build_model("conv-linear", (1, 4, 4), 2, conv_bias=False).degree == 2
    assert build_model("conv-quadratic", (1, 4, 4), 2, conv_bias=False).degree == 3
    r = build_model("relu2", (4,), 2, hidden=3)
    assert r.degree is None and r.head_degree == 1


# ---------------------------------------------------------------------------
# QuadraticHead: exact symmetry under optimisers, einsum formula
# ---------------------------------------------------------------------------
def _train_steps(model, opt, steps=5, d=12):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, d, generator=g)
    y = torch.randint(0, model.num_classes, (32,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True, foreach=False),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, foreach=False),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
], ids=["sgd-momentum-wd", "sgd-nesterov-loop", "adam", "adam-wd-loop", "adamw"])
def test_quadratic_W_stays_exactly_symmetric(make_opt):
    torch.manual_seed(0)
    model = build_model("quadratic", (12,), 4)
    head = model.head
    assert torch.equal(head.W, head.W.transpose(-1, -2))
    before = head.W.detach().clone()
    _train_steps(model, make_opt(model.parameters()))
    W = head.W
    assert not torch.equal(before, W)  # it did train
    assert torch.equal(W, W.transpose(-1, -2))  # bitwise symmetric, always
    # f uses W: x^T W_i x
    x = torch.randn(3, 12)
    assert torch.allclose(model(x), torch.einsum("bi,cij,bj->bc", x, W, x), rtol=1e-5, atol=1e-6)
    # the stored V never acquires more than a rounding-level antisymmetric part
    V = head.weight.detach()
    assert float((V - V.transpose(-1, -2)).norm() / V.norm()) < 1e-5


def test_quadratic_symmetric_after_load_state_dict():
    model = build_model("quadratic", (5,), 3)
    sd = model.state_dict()
    sd["head.weight"] = torch.randn(3, 5, 5)  # not symmetric
    model.load_state_dict(sd)
    W = model.head.W
    assert torch.equal(W, W.transpose(-1, -2))
    x = torch.randn(4, 5)
    assert torch.allclose(model(x), torch.einsum("bi,cij,bj->bc", x, W, x), rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), C=st.integers(1, 5), B=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_quadratic_head_equals_einsum(d, C, B, seed):
    torch.manual_seed(seed)
    head = QuadraticHead(d, C).double()
    x = torch.randn(B, d, dtype=torch.float64)
    with torch.no_grad():
        head.weight.add_(torch.randn(C, d, d, dtype=torch.float64))  # any V: f uses sym(V)
    W = head.W
    assert torch.equal(W, W.transpose(-1, -2))
    expected = torch.einsum("bi,cij,bj->bc", x, W, x)
    assert torch.allclose(head(x), expected, rtol=1e-12, atol=1e-12)
    assert head.unique_parameters() == C * d * (d + 1) // 2


# ---------------------------------------------------------------------------
# LowRankHead: f_i = sum_k (a_ik . x)^2 = x^T W_i x with W_i = sum_k a_ik a_ik^T
# ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), C=st.integers(1, 5), r=st.integers(1, 4), B=st.integers(1, 6),
       seed=st.integers(0, 2 ** 16))
def test_lowrank_head_formula_and_quadratic_forms(d, C, r, B, seed):
    torch.manual_seed(seed)
    head = LowRankHead(d, C, r).double()
    x = torch.randn(B, d, dtype=torch.float64)
    out = head(x)
    a = head.weight  # (C, r, d)
    explicit = torch.stack([sum((x @ a[i, k]) ** 2 for k in range(r)) for i in range(C)], dim=1)
    assert torch.allclose(out, explicit, rtol=1e-12, atol=1e-12)
    W = head.quadratic_forms()
    assert W.shape == (C, d, d)
    assert torch.allclose(W, W.transpose(-1, -2))
    assert torch.allclose(out, torch.einsum("bi,cij,bj->bc", x, W, x), rtol=1e-10, atol=1e-12)
    assert (torch.linalg.eigvalsh(W) >= -1e-12).all()  # positive semidefinite
    assert (out >= 0).all()


def test_linear_head():
    head = LinearHead(4, 3)
    x = torch.randn(5, 4)
    assert torch.allclose(head(x), x @ head.weight.T)
    assert head.bias is None


# ---------------------------------------------------------------------------
# Errors and reprs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("args,kw,msg", [
    (("nope", MNIST, 10), {}, "unknown model 'nope'; valid: linear"),
    (("resnet19-linear", (3, 32, 32), 10), {}, "unknown model"),
    (("conv-cubic", MNIST, 10), {}, "unknown head 'cubic'"),
    (("lowrank", MNIST, 10), {"rank": 0}, "rank must be >= 1, got 0"),
    (("lowrank", MNIST, 10), {"layers": 0}, "layers must be >= 1"),
    (("linear", MNIST, 10), {"layers": 2}, "lowrank model only"),
    (("lowrank", MNIST, 10), {"layers": 3, "hidden": [4, 4, 4]}, "need 2"),
    (("lowrank", MNIST, 1), {}, "at least 2 classes"),
    (("conv-linear", (784,), 10), {}, "needs image inputs"),
    (("resnet10-linear", (32, 32), 10), {}, "needs image inputs"),
    (("linear", (0, 3), 10), {}, "invalid input shape"),
    (("relu2", MNIST, 10), {"hidden": 0}, "hidden width"),
    (("conv-linear", MNIST, 10), {"conv_channels": 0}, "conv channels"),
])
def test_bad_config_raises(args, kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        build_model(*args, **kw)


def test_lowrank_head_bad_rank():
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        LowRankHead(4, 2, 0)


def test_extra_repr():
    assert "rank=3" in repr(LowRankHead(4, 2, 3))
    assert "in_features=4, num_classes=2" in repr(QuadraticHead(4, 2))
    assert "bias=False" in repr(LinearHead(4, 2))
    r = repr(build_model("lowrank", (4,), 2, layers=2, hidden=3))
    assert "name='lowrank', degree=6, head_degree=2" in r
    assert "blocks=[1, 1, 1, 1]" in repr(build_model("resnet10-linear", (3, 8, 8), 2).features)
    assert set(HEADS) == {"linear", "lowrank", "quadratic"}


def test_reset_parameters_changes_weights():
    torch.manual_seed(0)
    m = build_model("lowrank", (6,), 3, layers=2, hidden=4)
    before = [p.detach().clone() for p in m.parameters()]
    m.reset_parameters()
    assert all(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


def test_spec_refuses_a_depth_whose_lemma1_degree_overflows_float64():
    """L = 2^(n+1) - 2 (Lemma 1) must be a finite float64: n <= MAX_LAYERS, and MAX_LAYERS is the largest such n."""
    from margin_theory.models import MAX_LAYERS, ModelSpec
    assert math.isfinite(2.0 ** (MAX_LAYERS + 1) - 2)
    with pytest.raises(OverflowError):
        2.0 ** (MAX_LAYERS + 2)
    assert ModelSpec("lowrank", layers=MAX_LAYERS).layers == MAX_LAYERS
    with pytest.raises(ConfigError, match=f"--layers {MAX_LAYERS + 1}: .*overflows float64"):
        ModelSpec("lowrank", layers=MAX_LAYERS + 1)
