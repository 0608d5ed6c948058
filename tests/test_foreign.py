"""Foreign checkpoints (issue 10): safe reading, key maps onto our models, ``check_model``.

The authors' modules below are written from their public code
(liuchongming1999/dendrite-inspired-neural-network, quadratic_neural_network-main/model/:
Linear_quadratic.py, simplenet.py, resnet_cifar10.py) with their names, shapes and forward
passes, so that the state dicts are exactly what their training scripts save.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import margin_theory
from margin_theory import check, foreign
from margin_theory._util import CheckpointError, ConfigError
from margin_theory.assumptions import theorem2_report
from margin_theory.margins import NotHomogeneousError
from margin_theory.models import Classifier, LinearHead, QuadraticHead, build_model

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
REPORT_KEYS = ("gamma_bar", "gamma_min", "theta_norm", "delta_min", "B", "sigma_max", "rho", "cv", "eps",
               "velocity", "lower_bound", "w_bar")


# ---------------------------------------------------------------------------
# The authors' modules (from their code)
# ---------------------------------------------------------------------------
class Low_dimensional_quadratic(nn.Module):
    def __init__(self, in_features, out_features, number_eigens, bias=False):
        super().__init__()
        self.number_eigens = number_eigens
        self.eigen = nn.Parameter(torch.empty(out_features, in_features, number_eigens))
        self.bias = nn.Parameter(torch.empty(out_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        nn.init.normal_(self.eigen, std=1 / math.sqrt(in_features))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -0.1, 0.1)

    def forward(self, input):
        if self.number_eigens == 1:
            x = F.linear(input, self.eigen[:, :, 0]) * F.linear(input, self.eigen[:, :, 0])
        else:
            x = F.linear(input, self.eigen[:, :, 0]) - F.linear(input, self.eigen[:, :, 0])
            for i in range(self.number_eigens):
                x += F.linear(input, self.eigen[:, :, i]) * F.linear(input, self.eigen[:, :, i])
        return x


class General_quadratic(nn.Module):
    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.weight_a = nn.Parameter(torch.empty(out_features, in_features, in_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        bound = 1 / in_features
        nn.init.normal_(self.weight_a, std=bound)
        nn.init.normal_(self.weight, -math.sqrt(bound), math.sqrt(bound))
        with torch.no_grad():
            for i in range(out_features):
                self.weight_a.data[i] = (self.weight_a.data[i] + self.weight_a.data[i].T) / 2
            if self.bias is not None:
                nn.init.uniform_(self.bias, -math.sqrt(bound), math.sqrt(bound))

    def forward(self, input):
        y = F.bilinear(input, input, self.weight_a)
        y1 = F.linear(input, self.weight, self.bias)
        return (y + y1) / 2


class SimpleNet_1(nn.Module):          # simplenet.py: only a quadratic layer (MNIST)
    def __init__(self, d, num_classes, num_eigens):
        super().__init__()
        self.classifier = nn.Sequential(Low_dimensional_quadratic(d, num_classes, num_eigens, bias=False))

    def forward(self, x):
        return self.classifier(x.view(x.size(0), -1))


class SimpleNet_0(nn.Module):          # simplenet.py: General_quadratic
    def __init__(self, d, num_classes, bias=False):
        super().__init__()
        self.classifier = nn.Sequential(General_quadratic(d, num_classes, bias=bias))

    def forward(self, x):
        return self.classifier(x.view(x.size(0), -1))


class SimpleNet_2(nn.Module):          # simplenet.py: one convolution layer (FMNIST)
    def __init__(self, hw, num_classes, num_eigens):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, kernel_size=5, padding=2, stride=1), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(Low_dimensional_quadratic(hw, num_classes, num_eigens, bias=False))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class BasicBlock(nn.Module):           # resnet_cifar10.py
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, Relu=True):
        super().__init__()
        self.relu = Relu
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        if self.relu:
            out = F.relu(out)
        return out


class ResNet(nn.Module):               # resnet_cifar10.py (head: nn.Linear, or their quadratic layers)
    def __init__(self, block, num_blocks, num_classes=10, head="linear", rank=4):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2, Relu=True)
        if head == "linear":
            self.linear = nn.Linear(512 * block.expansion, num_classes)
        else:
            self.linear = Low_dimensional_quadratic(512 * block.expansion, num_classes, number_eigens=rank, bias=False)

    def _make_layer(self, block, planes, num_blocks, stride, Relu=True):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride, Relu))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def _randomise_bn(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def teacher_labels(f, X):
    with torch.no_grad():
        return f(X).argmax(1)


def close(a, b, rtol=1e-9):
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300)


def assert_reports_match(r1, r2, keys=REPORT_KEYS, rtol=1e-9):
    for k in keys:
        a, b = getattr(r1, k), getattr(r2, k)
        if isinstance(a, float) and math.isinf(a):
            assert a == b, k
        else:
            assert close(a, b, rtol), (k, a, b)
    assert (r1.A1, r1.A2, r1.A3) == (r2.A1, r2.A2, r2.A3)


# ---------------------------------------------------------------------------
# Reading files safely
# ---------------------------------------------------------------------------
class Hostile:
    """A pickle payload: unpickling it would create a file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_hostile_pickle_is_refused_without_running_it(tmp_path, capsys):
    target = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2, 2), "payload": Hostile(target)}, evil)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="never unpickles") as ei:
        foreign.read_state_dict(evil)
    assert "\n" not in str(ei.value) and "it refers to getattr" in str(ei.value)
    with pytest.raises(CheckpointError, match="weights_only"):
        margin_theory.load_checkpoint(evil, spec={"model": "linear", "input_shape": [2], "num_classes": 2})
    rc = check.main([str(evil), "--model", "linear", "--dataset", "xor"])
    _, err = capsys.readouterr()
    assert rc == 2 and "never unpickles" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()
    # a whole pickled module is refused the same way
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="state_dict"):
        foreign.read_state_dict(tmp_path / "module.pt")


def _lowrank_reference(d=6, C=3, r=2, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(d, C * r, bias=False).to(DT)

    def f(x):
        return (lin(x.flatten(1)) ** 2).view(-1, C, r).sum(-1)

    return lin, f


@pytest.mark.parametrize("fmt", ["pt", "pth", "safetensors", "nested-state_dict", "nested-model", "nested-net",
                                 "dataparallel", "nested-dataparallel", "compiled", "ours"])
def test_every_foreign_format_round_trips(tmp_path, fmt):
    d, C, r = 6, 3, 2
    lin, f = _lowrank_reference(d, C, r)
    sd = {"lin.weight": lin.weight.detach().clone()}
    path = tmp_path / f"m.{fmt.split('-')[0] if fmt in ('pt', 'pth', 'safetensors') else 'pt'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif fmt.startswith("nested-dataparallel"):
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    elif fmt.startswith("nested-"):
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, fmt.split("-")[1]: sd}, path)
    elif fmt == "dataparallel":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    elif fmt == "compiled":
        torch.save({"_orig_mod." + k: v for k, v in sd.items()}, path)
    elif fmt == "ours":
        ours = build_model("lowrank", (d,), C, rank=r).to(DT)
        with torch.no_grad():
            ours.head.weight.copy_(lin.weight.view(C, r, d))
        torch.save(ours.state_dict(), path)
    else:
        torch.save(sd, path)
    spec = {"model": "lowrank", "rank": r, "input_shape": [d], "num_classes": C}
    model, cfg = margin_theory.load_checkpoint(path, spec=spec)
    assert cfg["model"] == "lowrank" and cfg["rank"] == r
    X = torch.randn(9, d, dtype=DT)
    assert torch.allclose(model(X), f(X), rtol=1e-12, atol=0)
    assert model.degree == 2 and model.head.weight.dtype == DT


def test_spec_files_json_and_toml(tmp_path):
    lin, f = _lowrank_reference(4, 3, 2)
    torch.save({"fc.weight": lin.weight.detach()}, tmp_path / "m.pt")
    (tmp_path / "s.json").write_text(json.dumps({"model": "lowrank", "rank": 2, "input_shape": [4], "num_classes": 3}))
    (tmp_path / "s.toml").write_text('model = "lowrank"\nrank = 2\ninput_shape = [4]\nnum_classes = 3\n'
                                     '[keys]\n"fc.weight" = "head.weight"\n')
    X = torch.randn(5, 4, dtype=DT)
    for s in ("s.json", "s.toml"):
        model, _ = margin_theory.load_checkpoint(tmp_path / "m.pt", spec=tmp_path / s)
        assert torch.allclose(model(X), f(X), rtol=1e-12, atol=0)
    (tmp_path / "bad.json").write_text(json.dumps({"model": "lowrank", "learning_rate": 1}))
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        margin_theory.load_checkpoint(tmp_path / "m.pt", spec=tmp_path / "bad.json")


def test_deeply_nested_spec_file_is_one_line_error(tmp_path):
    f = tmp_path / "spec.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not valid JSON"):
        foreign.read_spec(f)


@pytest.mark.parametrize("state,spec,match", [
    ({"w": torch.zeros(3 * 3, 4)}, {"model": "lowrank", "rank": 2}, r"no tensor fits the head weight \(3, 2, 4\).*w \(9, 4\)"),
    ({"w": torch.zeros(6, 4), "extra": torch.zeros(7)}, {"model": "lowrank", "rank": 2}, r"tensor extra of shape \(7,\) has no place"),
    ({"a": torch.zeros(6, 4), "b": torch.zeros(6, 4)}, {"model": "lowrank", "rank": 2}, r"a, b all fit the head weight"),
    ({"lin.weight": torch.ones(6, 4), "lin.bias": torch.ones(3)}, {"model": "lowrank", "rank": 2}, r"lin.bias.*output bias"),
    ({"classifier.0.eigen": torch.zeros(3, 4, 3)}, {"model": "lowrank", "rank": 2}, r"head.eigen.*\(3, 4, 3\).*\(3, 4, 2\)"),
    ({"features.0.weight": torch.zeros(2, 1, 5, 5), "head.weight": torch.zeros(3, 1, 4)},
     {"model": "conv-lowrank"}, r"features.0.weight has shape \(2, 1, 5, 5\).*\(1, 1, 5, 5\)"),
])
def test_mismatch_is_one_line_naming_key_and_shape(state, spec, match):
    shape = (1, 2, 2) if spec["model"].startswith("conv") else (4,)
    with pytest.raises(CheckpointError, match=match) as ei:
        foreign.map_state_dict(state, spec, shape, 3)
    assert "\n" not in str(ei.value)


def test_zero_bias_dropped_nonzero_bias_folded_in_exactly():
    d, C, r = 5, 3, 2
    torch.manual_seed(1)
    lin = nn.Linear(d, C * r).to(DT)
    X = torch.randn(7, d, dtype=DT)
    m = foreign.map_state_dict(dict(lin.state_dict()), {"model": "lowrank", "rank": r}, (d,), C)
    assert torch.allclose(m(X), (lin(X) ** 2).view(-1, C, r).sum(-1), rtol=1e-12, atol=0)
    assert m.foreign_augmented and m.degree == 2      # (a.x + b)^2 is 2-homogeneous in (a, b) jointly
    with torch.no_grad():
        lin.bias.zero_()
    m = foreign.map_state_dict(dict(lin.state_dict()), {"model": "lowrank", "rank": r}, (d,), C)
    assert not m.foreign_augmented and any("zero: dropped" in n for n in m.foreign_notes)
    # a linear classifier with a bias
    lc = nn.Linear(d, C).to(DT)
    m = foreign.map_state_dict(dict(lc.state_dict()), {"model": "linear"}, (d,), C)
    assert torch.allclose(m(X), lc(X), rtol=1e-12, atol=1e-15) and m.degree == 1


def test_bias_fold_keeps_float64_exactly_and_a_stray_linear_term_is_refused():
    d, C = 5, 3
    torch.manual_seed(4)
    lc = nn.Linear(d, C).to(DT)
    with torch.no_grad():               # values a float32 cannot hold
        lc.weight.mul_(1 / 3)
        lc.bias.add_(1 / 7)
    m = foreign.map_state_dict(dict(lc.state_dict()), {"model": "linear"}, (d,), C)
    assert m.foreign_augmented and m.head.weight.dtype == DT
    assert torch.equal(m.head.weight, torch.cat([lc.weight, lc.bias[:, None]], 1).detach())
    X = torch.randn(9, d, dtype=DT)
    assert torch.allclose(m(X), lc(X), rtol=1e-13, atol=1e-15)
    # General_quadratic's w.x has no place in a lowrank head: refused in one line, not dropped or a traceback
    net = SimpleNet_0(d, C, bias=False).to(DT)
    assert bool(net.classifier[0].weight.any())
    with pytest.raises(CheckpointError, match="nonzero linear term"):
        foreign.map_state_dict(dict(net.state_dict()), {"model": "lowrank", "rank": d}, (d,), C)
    with pytest.raises(CheckpointError, match="cannot build model 'lowrank'"):
        foreign.map_state_dict(dict(lc.state_dict()), {"model": "lowrank", "layers": 2000}, (d,), C)


# ---------------------------------------------------------------------------
# The authors' state dicts
# ---------------------------------------------------------------------------
def test_authors_low_dimensional_quadratic_matches_our_lowrank(tmp_path):
    d, C, r, N = 16, 3, 3, 40
    torch.manual_seed(2)
    net = SimpleNet_1(d, C, r).to(DT)
    torch.save(net.state_dict(), tmp_path / "ldq.pt")
    assert set(net.state_dict()) == {"classifier.0.eigen"} and net.classifier[0].eigen.shape == (C, d, r)
    model, _ = margin_theory.load_checkpoint(tmp_path / "ldq.pt",
                                             spec={"model": "lowrank", "rank": r, "input_shape": [d], "num_classes": C})
    X = torch.randn(N, d, dtype=DT)
    y = teacher_labels(lambda x: net(x) + 0.3 * torch.randn(x.shape[0], C, dtype=DT), X)
    assert torch.allclose(model(X), net(X), rtol=1e-12, atol=0)
    # our equivalent model, written here: head weight (C, r, d) = eigen transposed
    ours = build_model("lowrank", (d,), C, rank=r).to(DT)
    with torch.no_grad():
        ours.head.weight.copy_(torch.stack([net.classifier[0].eigen[c].T for c in range(C)]))
    r_ours = theorem2_report(ours, X, y, subset=None)
    assert_reports_match(theorem2_report(model, X, y, subset=None), r_ours)
    # and their module itself, through check_model (degree measured): same parametrisation
    r_theirs = foreign.check_model(net, X, y, subset=None)
    assert r_theirs.degree == 2 and "measured" in r_theirs.note
    assert_reports_match(r_theirs, r_ours)


@pytest.mark.parametrize("linear_term", [False, True])
def test_authors_general_quadratic_matches_our_quadratic(tmp_path, linear_term):
    d, C, N = 6, 3, 30
    torch.manual_seed(3)
    net = SimpleNet_0(d, C, bias=linear_term).to(DT)
    gq = net.classifier[0]
    if not linear_term:
        with torch.no_grad():
            gq.weight.zero_()
    torch.save(net.state_dict(), tmp_path / "gq.pt")
    model, _ = margin_theory.load_checkpoint(tmp_path / "gq.pt",
                                             spec={"model": "quadratic", "input_shape": [d], "num_classes": C})
    X = torch.randn(N, d, dtype=DT)
    y = teacher_labels(lambda x: net(x) + 0.3 * torch.randn(x.shape[0], C, dtype=DT), X)
    assert torch.allclose(model(X), net(X), rtol=1e-12, atol=1e-14)
    A = gq.weight_a.detach()
    if linear_term:
        # our equivalent: a quadratic head on [x; 1] with M = [[A/2, w/4], [w^T/4, b/2]]
        w, b = gq.weight.detach(), gq.bias.detach()
        M = torch.zeros(C, d + 1, d + 1, dtype=DT)
        M[:, :d, :d] = A / 2
        M[:, :d, d] = M[:, d, :d] = w / 4
        M[:, d, d] = b / 2
        head = QuadraticHead(d + 1, C).to(DT)
        with torch.no_grad():
            head.weight.copy_(M)
        ours = Classifier(foreign.AppendOne(), head, 0, "quadratic", (d,))
        assert model.foreign_augmented
    else:
        ours = build_model("quadratic", (d,), C).to(DT)
        with torch.no_grad():
            ours.head.weight.copy_(A / 2)
        assert not model.foreign_augmented and model.head.in_features == d
    assert torch.allclose(ours(X), net(X), rtol=1e-12, atol=1e-14)
    assert model.degree == 1
    assert_reports_match(theorem2_report(model, X, y, subset=None), theorem2_report(ours, X, y, subset=None))


def test_general_quadratic_onto_our_linear_term_head(tmp_path):
    """--linear-term: General_quadratic maps onto head.weight = A, head.linear = w (no [x; 1]); the
    function is theirs, (x^T A x + w.x)/2 written out here; a missing w or a nonzero bias is refused."""
    d, C, N = 5, 3, 20
    torch.manual_seed(5)
    net = SimpleNet_0(d, C, bias=True).to(DT)
    gq = net.classifier[0]
    spec = {"model": "quadratic", "linear_term": True, "input_shape": [d], "num_classes": C}
    X = torch.randn(N, d, dtype=DT)
    A, w = gq.weight_a.detach(), gq.weight.detach()
    direct = (torch.einsum("ni,cij,nj->nc", X, A, X) + X @ w.T) / 2
    with torch.no_grad():
        gq.bias.zero_()
    torch.save(net.state_dict(), tmp_path / "gq.pt")
    model, _ = margin_theory.load_checkpoint(tmp_path / "gq.pt", spec=spec)
    assert model.head.linear is not None and not model.foreign_augmented
    assert torch.allclose(model(X), direct, rtol=1e-12, atol=1e-12)
    ours = build_model("quadratic", (d,), C, linear_term=True).to(DT)   # our own export maps back exactly
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    back, _ = margin_theory.load_checkpoint(tmp_path / "ours.pt", spec=spec)
    assert torch.allclose(back(X), ours(X), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        gq.bias.fill_(0.5)
    torch.save(net.state_dict(), tmp_path / "gqb.pt")
    with pytest.raises(CheckpointError, match="bias is nonzero"):
        margin_theory.load_checkpoint(tmp_path / "gqb.pt", spec=spec)
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith((".weight", ".bias"))},
               tmp_path / "noline.pt")
    with pytest.raises(CheckpointError, match="has no tensor"):
        margin_theory.load_checkpoint(tmp_path / "noline.pt", spec=spec)


def test_authors_fmnist_conv_matches_our_conv_lowrank(tmp_path):
    H, C, r, N = 6, 3, 2, 20
    torch.manual_seed(4)
    net = SimpleNet_2(H * H, C, r).to(DT)
    assert set(net.state_dict()) == {"features.0.weight", "features.0.bias", "classifier.0.eigen"}
    torch.save(net.state_dict(), tmp_path / "fm.pt")
    model, _ = margin_theory.load_checkpoint(tmp_path / "fm.pt", spec={
        "model": "conv-lowrank", "rank": r, "input_shape": [1, H, H], "num_classes": C})
    X = torch.randn(N, 1, H, H, dtype=DT)
    y = teacher_labels(lambda x: net(x) + 0.3 * torch.randn(x.shape[0], C, dtype=DT), X)
    assert torch.allclose(model(X), net(X), rtol=1e-12, atol=0)
    assert model.degree == 4
    r_theirs = foreign.check_model(net, X, y, subset=None)
    assert r_theirs.degree == 4
    assert_reports_match(theorem2_report(model, X, y, subset=None), r_theirs, rtol=1e-8)


@pytest.mark.parametrize("head", ["linear", "lowrank"])
def test_authors_cifar_resnet_dataparallel_matches_our_resnet(tmp_path, head):
    C, N = 4, 8
    torch.manual_seed(5)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=C, head=head, rank=2).to(DT)
    _randomise_bn(net)
    net.eval()
    sd = {"module." + k: v for k, v in net.state_dict().items()}      # nn.DataParallel(net).state_dict()
    assert any(k.startswith("module.linear.") for k in sd)
    torch.save({"net": sd, "acc": 91.0, "epoch": 249}, tmp_path / "ckpt.pth")   # their training script's dict
    model, _ = margin_theory.load_checkpoint(tmp_path / "ckpt.pth", spec={
        "model": f"resnet10-{head}", "rank": 2 if head == "lowrank" else 1, "input_shape": [3, 32, 32],
        "num_classes": C})
    X = torch.randn(N, 3, 32, 32, dtype=DT)
    with torch.no_grad():
        ref = net(X)
    y = ref.argmax(1)
    assert torch.allclose(model(X), ref, rtol=1e-10, atol=1e-12)
    assert model.degree is None                        # BatchNorm, residual sums: head normalisation
    r_ours = theorem2_report(model, X, y, subset=None, normalisation="head")
    r_theirs = foreign.check_model(net, X, y, subset=None, head="linear", homogeneity_samples=2)
    assert r_ours.normalisation == r_theirs.normalisation == "head"
    assert r_ours.degree == r_theirs.degree == (1 if head == "linear" else 2)
    assert_reports_match(r_ours, r_theirs, rtol=1e-8)


# ---------------------------------------------------------------------------
# check_model on any module
# ---------------------------------------------------------------------------
class PlainLowRank(nn.Module):
    """The README recipe's model: nn.Linear(d, C*r, bias=False), squared, summed per class."""

    def __init__(self, d, C, r, bias=False, out_bias=False):
        super().__init__()
        self.C, self.r = C, r
        self.lin = nn.Linear(d, C * r, bias=bias)
        self.out_bias = nn.Parameter(0.5 * torch.ones(C)) if out_bias else None

    def forward(self, x):
        f = (self.lin(x.flatten(1)) ** 2).view(-1, self.C, self.r).sum(-1)
        return f + self.out_bias if self.out_bias is not None else f


def _data(d=5, C=3, N=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=DT)
    y = torch.arange(N) % C
    return X, y


def test_check_model_measures_degree_and_refuses_a_wrong_one():
    torch.manual_seed(0)
    m = PlainLowRank(5, 3, 2).to(DT)
    X, y = _data()
    rep = foreign.check_model(m, X, y)
    assert rep.degree == 2 and rep.normalisation == "full" and "Degree L = 2 (measured" in rep.note
    assert "confirmed" in foreign.check_model(m, X, y, degree=2).note
    with pytest.raises(NotHomogeneousError, match="declared degree 3 contradicts.*c\\^2"):
        foreign.check_model(m, X, y, degree=3)
    # theorem2_report verifies a degree it is given, too; unverified it gets the velocity wrong
    with pytest.raises(NotHomogeneousError, match="declared degree 3 contradicts"):
        theorem2_report(m, X, y, degree=3)
    assert close(theorem2_report(m, X, y, degree=2).velocity, rep.velocity)
    wrong = theorem2_report(m, X, y, degree=3, check_degree=False)
    assert not close(wrong.velocity, rep.velocity, 1e-3)


def test_check_model_refuses_a_bias_unless_head_normalisation():
    torch.manual_seed(0)
    m = PlainLowRank(5, 3, 2, out_bias=True).to(DT)
    X, y = _data()
    with pytest.raises(NotHomogeneousError, match="not homogeneous.*out_bias"):
        foreign.check_model(m, X, y, degree=2)
    with pytest.raises(NotHomogeneousError, match="not homogeneous.*out_bias"):
        theorem2_report(m, X, y, degree=2)
    with pytest.raises(NotHomogeneousError, match="no head"):
        foreign.check_model(m, X, y)
    # a module with a head: the features are inputs, the head's own degree is measured
    net = nn.Sequential()
    net.features = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))   # hidden bias after ReLU
    net.head = nn.Linear(4, 3, bias=False)
    net = net.to(DT)
    with pytest.raises(NotHomogeneousError, match="not homogeneous"):
        foreign.check_model(net, X, y, normalisation="full")
    rep = foreign.check_model(net, X, y)
    assert rep.normalisation == "head" and rep.degree == 1 and "head 'head'" in rep.note
    phi = net.features(X).detach()
    # the reference: our linear head alone with the same weights, on the features as inputs
    lin = LinearHead(4, 3).to(DT)
    with torch.no_grad():
        lin.weight.copy_(net.head.weight)
    ref = theorem2_report(Classifier(nn.Identity(), lin, 0, "linear", (4,)), phi, y)
    assert_reports_match(rep, ref)


# ---------------------------------------------------------------------------
# Theorem 2 pinned to a brute-force implementation (full Jacobians)
# ---------------------------------------------------------------------------
def brute_force_theorem2(f, theta, X, y, L):
    """Every quantity of SPEC §5 from the full N x C x P Jacobian, written out."""
    logits = f(theta)
    N, C = logits.shape
    J = torch.autograd.functional.jacobian(f, theta)                 # (N, C, P)
    others = logits.clone()
    others[torch.arange(N), y] = -math.inf
    j = others.argmax(1)
    q = logits[torch.arange(N), y] - logits[torch.arange(N), j]
    if C > 2:
        o2 = others.clone()
        o2[torch.arange(N), j] = -math.inf
        delta = float((logits[torch.arange(N), j] - o2.max(1).values).min())
    else:
        delta = math.inf
    H = J[torch.arange(N), y] - J[torch.arange(N), j]               # rows h_n
    tn = theta.norm()
    Pm = torch.eye(theta.numel(), dtype=DT) - torch.outer(theta, theta) / tn ** 2
    Gamma = Pm @ H.T                                                # P x N
    sv = torch.linalg.svdvals(Gamma)
    smax = float(sv[0])
    ones = torch.ones(N, dtype=DT)
    rho = float((Gamma @ ones).norm()) / (math.sqrt(N) * smax)
    p = torch.softmax(logits, 1)
    w = p[torch.arange(N), j]
    wbar = float(w.mean())
    cv = float((w - wbar).norm()) / (math.sqrt(N) * wbar)
    B = float(J.norm(dim=2).max())
    eps = 2 * (C - 2) * math.exp(-delta) * B * math.sqrt(N) / smax if C > 2 else 0.0
    th = theta.clone().requires_grad_(True)
    loss = F.cross_entropy(f(th), y)
    (grad,) = torch.autograd.grad(loss, th)
    velocity = float((Gamma @ ones) @ (-grad)) / (N * float(tn) ** L)
    lower = wbar * rho * smax ** 2 * (rho - cv - eps) / (N * float(tn) ** L)
    return dict(gamma_bar=float(q.mean()) / float(tn) ** L, delta_min=delta, B=B, sigma_max=smax, rho=rho,
                w_bar=wbar, cv=cv, eps=eps, velocity=velocity, lower_bound=lower)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), r=st.integers(1, 2), N=st.integers(4, 10), spread=st.sampled_from([0.3, 1.0, 3.0]))
def test_theorem2_quantities_equal_brute_force_on_three_classes(seed, r, N, spread):
    d, C = 4, 3
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=DT)
    y = torch.arange(N) % C
    model = build_model("lowrank", (d,), C, rank=r).to(DT)
    with torch.no_grad():
        model.head.weight.copy_(spread * torch.randn(C, r, d, generator=g, dtype=DT))

    def f(theta):
        return torch.einsum("crd,nd->ncr", theta.view(C, r, d), X).square().sum(-1)

    theta = model.head.weight.detach().reshape(-1).clone()
    ref = brute_force_theorem2(f, theta, X, y, L=2)
    for method in ("closed", "func"):
        rep = theorem2_report(model, X, y, subset=None, method=method)
        for k, v in ref.items():
            assert close(getattr(rep, k), v, 1e-8), (method, k, getattr(rep, k), v)
        assert rep.A3 == (ref["rho"] > ref["cv"] + ref["eps"])
    assert ref["eps"] > 0          # three classes: eps is really tested


def test_theorem2_brute_force_deep_and_conv():
    """The same pin through the torch.func path of a model with parametrised features."""
    d, C, N = 3, 3, 8
    g = torch.Generator().manual_seed(7)
    X = torch.randn(N, d, generator=g, dtype=DT)
    y = torch.arange(N) % C
    model = build_model("lowrank", (d,), C, rank=1, layers=2, hidden=[2]).to(DT)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).clone()

    def f(t):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            ps[n] = t[i:i + k].view(s)
            i += k
        return torch.func.functional_call(model, ps, (X,))

    ref = brute_force_theorem2(f, theta, X, y, L=6)
    rep = theorem2_report(model, X, y, subset=None)
    for k, v in ref.items():
        assert close(getattr(rep, k), v, 1e-8), (k, getattr(rep, k), v)


# ---------------------------------------------------------------------------
# The command line on foreign files
# ---------------------------------------------------------------------------
def _iris_model_file(tmp_path, kind="pt"):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3 * 2, bias=False)
    sd = {"lin.weight": lin.weight.detach().clone()}
    path = tmp_path / f"mine.{kind}"
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_cli_checks_a_plain_file_like_our_own_model(tmp_path, capsys, kind):
    path, sd = _iris_model_file(tmp_path, kind)
    rc = check.main([str(path), "--model", "lowrank", "--rank", "2", "--dataset", "iris", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    (row,) = doc["checkpoints"]
    assert row["epoch"] is None and row["degree"] == 2 and row["normalisation"] == "full"
    assert "class-major" in " ".join(row["foreign"]["notes"])
    from margin_theory.data import load_dataset

    ds = load_dataset("iris", seed=0)
    ours = build_model("lowrank", (4,), 3, rank=2)
    with torch.no_grad():
        ours.head.weight.copy_(sd["lin.weight"].view(3, 2, 4))
    ref = theorem2_report(ours, ds.X_train, ds.y_train, subset=512, seed=0).as_dict()
    for k in ("gamma_bar", "rho", "cv", "eps", "velocity", "lower_bound", "delta_min"):
        assert close(row[k], ref[k], 1e-9), k
    # the human report says what was mapped
    assert check.main([str(path), "--model", "lowrank", "--rank", "2", "--dataset", "iris"]) == 0
    out, _ = capsys.readouterr()
    assert "foreign state dict mapped onto lowrank (rank 2" in out


def test_cli_spec_file_and_missing_description(tmp_path, capsys):
    path, _ = _iris_model_file(tmp_path)
    rc = check.main([str(path)])
    _, err = capsys.readouterr()
    assert rc == 2 and "not a margin_theory checkpoint" in err and "--model" in err and "--spec" in err
    (tmp_path / "spec.toml").write_text('model = "lowrank"\nrank = 2\ndataset = "iris"\n')
    assert check.main([str(path), "--spec", str(tmp_path / "spec.toml"), "--json"]) == 0
    doc = json.loads(capsys.readouterr()[0])
    assert doc["checkpoints"][0]["model"] == "lowrank"
    # flags override the spec: a wrong rank is a one-line error naming the shapes
    rc = check.main([str(path), "--spec", str(tmp_path / "spec.toml"), "--rank", "3"])
    _, err = capsys.readouterr()
    assert rc == 2 and "(3, 3, 4)" in err and "(6, 4)" in err
    # the data must be named (never a silent default)
    rc = check.main([str(path), "--model", "lowrank", "--rank", "2"])
    _, err = capsys.readouterr()
    assert rc == 2 and "--dataset NAME" in err
    # a flag that does not apply to the model is an error
    rc = check.main([str(path), "--model", "linear", "--rank", "2", "--dataset", "iris"])
    _, err = capsys.readouterr()
    assert rc == 2 and "--rank applies to" in err


def test_cli_authors_state_dict(tmp_path, capsys):
    torch.manual_seed(1)
    net = SimpleNet_1(4, 3, 2)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "authors.pth")
    rc = check.main([str(tmp_path / "authors.pth"), "--model", "lowrank", "--rank", "2", "--dataset", "iris",
                     "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    notes = " ".join(json.loads(out)["checkpoints"][0]["foreign"]["notes"])
    assert "'state_dict'" in notes and "module." in notes and "eigen" in notes
