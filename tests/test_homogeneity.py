"""Homogeneity checkers (SPEC §3, paper Definition 1 and Lemma 1)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory import cli
from margin_theory._util import ConfigError
from margin_theory.homogeneity import (_symbolic_module, check_model, lemma1_degree, main,
                                       numeric_homogeneity, symbolic_homogeneity)
from margin_theory.models import build_model

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _x(shape, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + tuple(shape), generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------
# Lemma 1: numeric (property) and symbolic
# ---------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(1, 6), rank=st.integers(1, 3), C=st.integers(2, 4),
       widths=st.lists(st.integers(1, 5), min_size=3, max_size=3), seed=st.integers(0, 2 ** 16))
def test_random_deep_lowrank_degree_is_lemma1(n, d, rank, C, widths, seed):
    torch.manual_seed(seed)
    model = build_model("lowrank", (d,), C, rank=rank, layers=n, hidden=widths[: n - 1] or None)
    r = numeric_homogeneity(model, _x((d,), seed=seed), seed=seed)
    assert r.homogeneous and r.degree == 2 ** (n + 1) - 2 == lemma1_degree(n)
    assert r.euler_ok and r.euler_max_rel_err < 1e-10
    assert r.head_degree == 2 and r.breaking_parameters == []
    assert r.agrees_with_declared


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_symbolic_lemma1_derived(n):
    r = symbolic_homogeneity("lowrank", layers=n, d=2, hidden=2)  # auto: n = 4 goes along rays
    assert r.homogeneous and r.euler_ok
    assert r.degree == 2 ** (n + 1) - 2 == r.lemma1_formula
    assert r.degrees == [r.degree]
    assert r.method == ("ray" if n == 4 else "expand")


def test_symbolic_four_layers_fully_expanded():
    r = symbolic_homogeneity("lowrank", layers=4, d=2, hidden=[2, 1, 1], method="expand")
    assert (r.method, r.degree, r.euler_ok) == ("expand", 30, True)
    assert r.expression_size > 100


def test_symbolic_methods_agree_and_heads():
    for name, L, kw in [("linear", 1, {}), ("quadratic", 1, {"d": 3}), ("lowrank", 2, {"rank": 2, "d": 3}),
                        ("conv-lowrank", 4, {}), ("conv-linear", 2, {}), ("conv-quadratic", 3, {})]:
        for method in ("expand", "ray"):
            r = symbolic_homogeneity(name, method=method, **kw)
            assert (r.homogeneous, r.degree, r.euler_ok) == (True, L, True), (name, method, r)


def test_symbolic_relu2_names_output_bias():
    r = symbolic_homogeneity("relu2", method="expand", d=2, hidden=3)
    assert not r.homogeneous and not r.euler_ok and r.degree is None
    assert r.degrees == [1, 2]
    assert r.breaking_parameters == ["head.linear.bias"]
    ray = symbolic_homogeneity("relu2", method="ray")
    assert not ray.homogeneous and ray.degrees == [1, 2]


def test_symbolic_conv_bias_is_still_homogeneous():
    # a first-layer bias is jointly homogeneous with its kernel: (c w) * x + c b = c (w * x + b)
    for method in ("expand", "ray"):
        r = symbolic_homogeneity("conv-lowrank", conv_bias=True, method=method)
        assert r.homogeneous and r.degree == 4 and r.euler_ok


def test_symbolic_checker_follows_the_real_module(monkeypatch):
    """The checker interprets the traced torch module: change the module's forward and the
    derived degree changes (a copy of the model inside the checker would not notice)."""
    from margin_theory.models import LinearHead, LowRankHead
    monkeypatch.setattr(LinearHead, "forward", lambda self, x: F.linear(x, self.weight) + 1)
    for method in ("expand", "ray"):
        r = symbolic_homogeneity("linear", method=method)
        assert not r.homogeneous and r.degrees == [0, 1] and not r.euler_ok, (method, r)
    monkeypatch.setattr(LinearHead, "forward",
                        lambda self, x: F.linear(x, self.weight) + (self.weight * self.weight).sum() * 0.25)
    r = symbolic_homogeneity("linear", method="expand")
    assert r.degrees == [1, 2] and r.breaking_parameters == ["head.weight"]
    monkeypatch.setattr(LinearHead, "forward", lambda self, x: torch.tanh(F.linear(x, self.weight)))
    with pytest.raises(ConfigError, match="unsupported op 'tanh'"):
        symbolic_homogeneity("linear")
    # a lowrank head without its square is linear in its weight: degree 1, not 2
    monkeypatch.setattr(LowRankHead, "forward", lambda self, x: F.linear(x, self.weight.reshape(
        -1, self.in_features)).reshape(x.shape[0], self.num_classes, self.rank).sum(-1))
    r = symbolic_homogeneity("lowrank", rank=2)
    assert r.homogeneous and r.degree == 1 and r.euler_ok


def test_symbolic_module_options_linear_term_and_affine():
    """Options symbolic_homogeneity does not expose, checked on the module built with them:
    the full head's linear term and 1/2 (exact rationals), affine inputs [x, 1]."""
    for method in ("expand", "ray"):
        r = _symbolic_module(build_model("quadratic", (2,), 2, linear_term=True), (2,), method=method)
        assert (r.homogeneous, r.degree, r.euler_ok, r.n_parameters) == (True, 1, True, 2 * 4 + 2 * 2)
        r = _symbolic_module(build_model("lowrank", (2,), 2, affine=True, rank=2), (2,), method=method)
        assert (r.homogeneous, r.degree, r.euler_ok) == (True, 2, True)
        r = _symbolic_module(build_model("conv-quadratic", (1, 2, 2), 2, linear_term=True), (1, 2, 2),
                             method=method)
        assert not r.homogeneous and r.degrees == [2, 3]  # x^T V x has degree 3, w.x degree 2
    r = _symbolic_module(build_model("conv-quadratic", (1, 2, 2), 2, linear_term=True), (1, 2, 2),
                         method="expand")
    assert "head.linear" in r.breaking_parameters


def test_symbolic_hidden_bias_gate_not_homogeneous():
    """A hidden bias makes a ReLU gate's argument inhomogeneous (c^2 u + c b): the activation
    pattern changes along the ray; expand names the bias (any fx-traceable module works)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    r = _symbolic_module(net, (2,), method="expand")
    assert not r.homogeneous and r.breaking_parameters == ["2.bias"] and "gate" in r.notes[0]
    r = _symbolic_module(net, (2,), method="ray")
    assert not r.homogeneous and not r.euler_ok and "gate" in r.notes[-1]


def test_symbolic_bad_input():
    with pytest.raises(ConfigError, match="no symbolic form"):
        symbolic_homogeneity("resnet18-lowrank")
    with pytest.raises(ConfigError, match="layers"):
        symbolic_homogeneity("lowrank", layers=0)
    with pytest.raises(ConfigError, match="method"):
        symbolic_homogeneity("lowrank", method="magic")
    with pytest.raises(ConfigError, match="lowrank model only"):
        symbolic_homogeneity("linear", layers=2)
    with pytest.raises(ConfigError, match="the model's conv has kernel 5 and padding 2"):
        symbolic_homogeneity("conv-linear", kernel=3)
    with pytest.raises(ConfigError, match="unsupported op 'BatchNorm2d'"):
        _symbolic_module(build_model("resnet10-linear", (3, 4, 4), 2), (3, 4, 4))


# ---------------------------------------------------------------------------
# Numeric checker on the toolkit's models
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape,L,head", [
    ("linear", (1, 6, 6), 1, 1),
    ("quadratic", (1, 6, 6), 1, 1),
    ("lowrank", (1, 6, 6), 2, 2),
    ("conv-linear", (1, 6, 6), 2, 1),
    ("conv-quadratic", (1, 6, 6), 3, 1),
])
def test_numeric_degrees(name, shape, L, head):
    torch.manual_seed(0)
    model = build_model(name, shape, 5, conv_bias=False)
    r = numeric_homogeneity(model, _x(shape))
    assert (r.homogeneous, r.degree, r.euler_ok, r.head_degree) == (True, L, True, head)
    assert r.breaking_parameters == [] and r.agrees_with_declared
    assert set(r.per_c_estimates) == {"0.5", "2.0", "3.0"}
    assert all(abs(e - L) < 1e-9 for e in r.per_c_estimates.values())


def test_conv_lowrank_bias_free_degree_4():
    torch.manual_seed(1)
    model = build_model("conv-lowrank", (1, 8, 8), 4, conv_bias=False, conv_channels=2, rank=2)
    r = numeric_homogeneity(model, _x((1, 8, 8)))
    assert r.homogeneous and r.degree == 4 and r.euler_ok and r.head_degree == 2
    assert model.degree == 4 and r.agrees_with_declared


def test_conv_lowrank_with_bias_is_homogeneous_too():
    """The conv is the first parameterised layer, so its bias does not break homogeneity
    (contrary to SPEC §3's remark): relu(c w * x + c b) = c relu(w * x + b), L = 4."""
    torch.manual_seed(2)
    model = build_model("conv-lowrank", (1, 8, 8), 4, conv_bias=True)
    assert model.features[0].bias is not None
    with torch.no_grad():
        model.features[0].bias.fill_(0.3)  # clearly non-zero
    r = numeric_homogeneity(model, _x((1, 8, 8)))
    assert r.homogeneous and r.degree == 4 and r.euler_ok and r.breaking_parameters == []
    assert r.agrees_with_declared == (model.degree == 4)


def test_relu2_output_bias_named():
    torch.manual_seed(0)
    model = build_model("relu2", (1, 6, 6), 4, hidden=20)
    r = numeric_homogeneity(model, _x((1, 6, 6)))
    assert not r.homogeneous and r.degree is None and not r.euler_ok
    # b1 (first layer) is jointly homogeneous with W1; only b2 breaks homogeneity
    assert r.breaking_parameters == ["head.linear.bias"]
    assert r.breaking_groups == {"bias": ["head.linear.bias"]}
    assert r.homogeneous_without_breaking and r.degree_without_breaking == 2 and not r.structural
    assert r.head_degree == 1  # W2 h + b2 is jointly 1-homogeneous in (W2, b2)
    assert r.agrees_with_declared  # the model declares degree None, head degree 1


def test_zero_bias_homogeneous_along_ray_only():
    torch.manual_seed(0)
    model = build_model("relu2", (5,), 3, hidden=7)
    with torch.no_grad():
        model.head.linear.bias.zero_()
    r = numeric_homogeneity(model, _x((5,)))
    assert r.homogeneous_at_theta and not r.homogeneous_at_generic_theta and not r.homogeneous
    assert r.breaking_parameters == ["head.linear.bias"]
    assert numeric_homogeneity(model, _x((5,)), generic=False).homogeneous


def test_hidden_bias_named_but_not_first_layer_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    r = numeric_homogeneity(net, _x((4,)))
    assert not r.homogeneous and r.breaking_parameters == ["2.bias"]
    assert r.degree_without_breaking == 3 and r.head_degree is None


def test_batchnorm_without_residual_named():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3, bias=False))
    net.train()
    net(torch.randn(32, 4))  # non-trivial running statistics
    r = numeric_homogeneity(net, _x((4,)))
    assert net.training  # mode restored
    assert not r.homogeneous and r.breaking_groups == {"normalisation": ["1.weight", "1.bias"]}
    assert not r.structural and r.degree_without_breaking == 2


def test_plain_relu_net_and_nonhomogeneous_activation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    r = numeric_homogeneity(net, _x((4,)))
    assert r.homogeneous and r.degree == 2 and r.euler_ok and r.head_degree is None
    tanh = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 3, bias=False))
    r = numeric_homogeneity(tanh, _x((4,)))
    assert not r.homogeneous and r.structural
    assert r.breaking_groups == {"other": ["0.weight"]}  # f is 1-homogeneous in the last layer alone


def test_resnet10_not_homogeneous_bn_listed(capsys):
    """Through the CLI (the same path as ``--model resnet18-lowrank``, on a tiny input)."""
    assert main(["--model", "resnet10-lowrank", "--input-shape", "3,8,8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    model = build_model("resnet10-lowrank", (3, 8, 8), 10)
    bn = [f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
          for p in ("weight", "bias")]
    assert len(bn) == 24
    assert r["model"] == "resnet10-lowrank"
    assert r["homogeneous"] is False and r["degree"] is None and r["euler_ok"] is False
    assert sorted(r["breaking_parameters"]) == sorted(bn)
    assert r["breaking_groups"] == {"normalisation": r["breaking_parameters"]}
    assert r["structural"] is True and r["homogeneous_without_breaking"] is False
    assert r["head_degree"] == 2 and r["declared_head_degree"] == 2 and r["agrees_with_declared"]


def test_numeric_does_not_modify_model_and_validates():
    torch.manual_seed(0)
    model = build_model("lowrank", (3,), 2, layers=2, hidden=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    numeric_homogeneity(model, _x((3,)))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="scale factors"):
        numeric_homogeneity(model, _x((3,)), cs=(1.0, 2.0))
    with pytest.raises(ConfigError, match="scale factors"):
        numeric_homogeneity(model, _x((3,)), cs=(-2.0,))
    with pytest.raises(ConfigError, match="no parameters"):
        numeric_homogeneity(nn.ReLU(), _x((3,)))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli_json_lowrank_layers3(capsys):
    assert main(["--model", "lowrank", "--layers", "3", "--json"]) == 0
    out = capsys.readouterr().out
    d = json.loads(out)
    assert out.count("\n") == 1
    expected = {"model": "lowrank", "homogeneous": True, "degree": 14, "euler_ok": True, "breaking_parameters": []}
    assert {k: d[k] for k in expected} == expected
    assert d["head_degree"] == 2 and d["declared_degree"] == 14 and d["lemma1_formula"] == 14
    assert abs(d["degree_estimate"] - 14) < 1e-9


def test_cli_human_and_symbolic(capsys):
    assert main(["--model", "lowrank", "--layers", "2", "--symbolic", "--hidden", "4"]) == 0
    out = capsys.readouterr().out
    assert "homogeneous: yes, degree L = 6" in out and "Lemma 1: 2^(n+1) - 2 = 6  [agrees]" in out
    assert "symbolic (expand" in out and "L = 6" in out
    assert main(["--model", "lowrank", "--layers", "4", "--hidden", "3", "--symbolic", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["degree"] == 30 and d["symbolic"]["degree"] == 30 and d["symbolic"]["euler_ok"]


def test_cli_relu2_human(capsys):
    assert main(["--model", "relu2", "--hidden", "16", "--input-shape", "8"]) == 0
    out = capsys.readouterr().out
    assert "homogeneous: NO" in out and "bias: head.linear.bias" in out
    assert "head degree (head parameters scaled alone, features fixed): 1" in out
    assert "without them f is homogeneous of degree 2" in out


@pytest.mark.parametrize("argv,msg", [
    (["--model", "nope"], "unknown model"),
    (["--model", "lowrank", "--layers", "0"], "must be >= 1"),
    (["--model", "linear", "--layers", "2"], "lowrank model only"),
    (["--model", "lowrank", "--input-shape", "a,b"], "shape"),
    (["--model", "lowrank", "--cs", "1"], "scale factors"),
    (["--model", "resnet10-linear", "--input-shape", "3,8,8", "--symbolic"], "--symbolic supports"),
    (["--model", "conv-lowrank", "--input-shape", "8"], "image inputs"),
    (["--model", "linear", "--rank", "2"], "--rank applies"),            # options that do not apply
    (["--model", "quadratic", "--conv-channels", "3"], "--conv-channels applies"),
])
def test_cli_bad_input_exit_2(argv, msg, capsys):
    try:  # argparse errors exit through SystemExit(2), toolkit errors return 2 (cli_entry)
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and msg in captured.err and "Traceback" not in captured.err


def test_cli_subprocess_and_console_dispatch(capsys):
    p = subprocess.run([sys.executable, "-m", "margin_theory.homogeneity", "--model", "lowrank",
                        "--layers", "3", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (d["model"], d["homogeneous"], d["degree"], d["euler_ok"], d["breaking_parameters"]) == \
        ("lowrank", True, 14, True, [])
    assert p.stderr == ""
    assert cli.main(["homogeneity", "--model", "linear", "--input-shape", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["degree"] == 1 and d["homogeneous"]


def test_check_model_report_conv_bias_note():
    r = check_model("conv-lowrank", input_shape=(1, 6, 6), num_classes=3, symbolic=True)
    assert r["homogeneous"] and r["degree"] == 4 and r["conv_bias"] is True
    assert r["symbolic"]["degree"] == 4 and r["symbolic"]["sizes"]["conv_bias"] is True
    assert r["declared_degree"] == 4 and r["agrees_with_declared"] is True   # models.py's compose rule
    with pytest.raises(ConfigError, match="batch"):
        check_model("linear", batch=0)


def test_conservative_declaration_is_reported():
    """A model that declares no degree (None) but measures homogeneous gets the note that a
    first-layer bias is jointly homogeneous with its weight; the measurement wins."""
    torch.manual_seed(0)
    m = build_model("conv-lowrank", (1, 6, 6), 3)
    m.degree = None                       # what a cautious declaration would say about the conv bias
    r = numeric_homogeneity(m, torch.rand(2, 1, 6, 6, dtype=torch.float64)).as_dict()
    assert r["homogeneous"] and r["degree"] == 4
    assert r["declared_degree"] is None and r["agrees_with_declared"] is False
    assert any("first parameterised layer" in n for n in r["notes"])
