"""The models of SPEC §1: linear and ReLU baselines, the full quadratic classifier (DIQNN,
paper eq. 1), the Low-Rank DIQNN (paper eq. 3), its deep form, and conv / ResNet features
with a choice of head. Inputs ``(B, *input_shape)``, logits ``(B, C)``.

Every classifier is a :class:`Classifier` = ``features`` then ``head``, with ``degree`` L of f
in *all* parameters (SPEC §3; ``None`` when a bias or BatchNorm breaks homogeneity) and
``head_degree``, the degree in the head's parameters alone (linear 1, quadratic 1, lowrank 2).
Degrees compose layer by layer: a bias-free linear map L -> L+1, a Low-Rank layer
L -> 2(L+1), a full quadratic head L -> 2L+1; :mod:`margin_theory.homogeneity` checks them.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import ConfigError, is_int

__all__ = [
    "LinearHead", "QuadraticHead", "LowRankHead", "Classifier", "ResNetFeatures",
    "BasicBlock", "build_model", "symmetrise", "parameter_count", "unique_parameter_count",
    "MODEL_NAMES", "RESNET_BLOCKS", "HEADS", "describe_model_names", "INITS", "AffineInput", "ModelSpec",
]

#: initialisation schemes (SPEC §2 "Protocols"), set in each head's ``reset_parameters``:
#: ``paper`` (this toolkit's default) and ``authors`` (their ``model/Linear_quadratic.py``)
INITS = ("paper", "authors")


def _check_init(init: str) -> str:
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    return init


HEADS = ("linear", "lowrank", "quadratic")
#: the deepest Low-Rank DIQNN accepted: Lemma 1's degree 2^(n+1) - 2 stays a finite float64
MAX_LAYERS = 1022
#: BasicBlocks per stage of each ResNet depth
RESNET_BLOCKS = {10: (1, 1, 1, 1), 12: (2, 1, 1, 1), 14: (2, 2, 1, 1), 16: (2, 2, 2, 1), 18: (2, 2, 2, 2)}
MODEL_NAMES = (["linear", "relu2", "quadratic", "lowrank"] + [f"conv-{h}" for h in HEADS]
               + [f"resnet{k}-{h}" for k in RESNET_BLOCKS for h in HEADS])


def describe_model_names() -> str:
    return ("linear, relu2, quadratic, lowrank (--layers n for the deep form), "
            "conv-{linear,lowrank,quadratic}, resnet{10,12,14,16,18}-{linear,lowrank,quadratic}")


# --- Heads ---
class LinearHead(nn.Module):
    r"""Bias-free linear classifier :math:`f(x) = W x`, ``weight`` ``(C, d)``: degree 1; on features of
    degree :math:`L_f`, :math:`L_f + 1` (SPEC §1, §3)."""

    param_degree = 1

    def __init__(self, in_features: int, num_classes: int, bias: bool = False, init: str = "paper"):
        super().__init__()
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.init = _check_init(init)      # the same U(+-1/sqrt(d)) under both schemes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    @staticmethod
    def compose_degree(feature_degree: int | None) -> int | None:
        return None if feature_degree is None else feature_degree + 1

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"


class QuadraticHead(nn.Module):
    r"""Full quadratic (DIQNN) classifier, paper eq. 1: :math:`f_i(x) = x^\top W_i x`.

    The parameter is ``weight`` :math:`V` ``(C, d, d)``; :math:`W_i = \mathrm{sym}(V_i) = (V_i + V_i^\top)/2`
    (:attr:`W`) is exactly symmetric (SPEC §1). As :math:`x^\top V x = x^\top \mathrm{sym}(V) x` the
    forward pass uses V (one batched GEMM). V starts symmetric and its antisymmetric part is a null
    direction the gradient :math:`\sum_n c_n x_n x_n^\top` never moves, so :math:`\|V\| = \|W\|`.
    Degree 1 in its parameters; on features of degree :math:`L_f`, :math:`2 L_f + 1`.

    ``linear_term=True``: the authors' ``General_quadratic`` (bias-free),
    :math:`f_i(x) = (x^\top W_i x + w_i\cdot x)/2`, parameter ``linear`` ``(C, d)``; degree 1 on raw
    inputs, not homogeneous on features of degree :math:`L_f > 0`.
    """

    param_degree = 1

    def __init__(self, in_features: int, num_classes: int, linear_term: bool = False, init: str = "paper"):
        super().__init__()
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.init = _check_init(init)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, in_features))
        self.linear = nn.Parameter(torch.empty(num_classes, in_features)) if linear_term else None
        self.reset_parameters()

    def compose_degree(self, feature_degree: int | None) -> int | None:
        if self.linear is not None:
            return 1 if feature_degree == 0 else None
        return None if feature_degree is None else 2 * feature_degree + 1

    def reset_parameters(self) -> None:
        """``paper``: U(-1/sqrt(d), 1/sqrt(d)) (as ``nn.Bilinear``), then symmetrised, linear term
        alike; ``authors``: N(0, (1/d)^2) then symmetrised, linear term N(-1/sqrt(d), 1/sqrt(d))."""
        d, authors = self.in_features, self.init == "authors"
        b = 1.0 / math.sqrt(d)
        with torch.no_grad():
            if authors:
                nn.init.normal_(self.weight, std=1.0 / d)
            else:
                nn.init.uniform_(self.weight, -b, b)
            self.weight.copy_(symmetrise(self.weight))
            if self.linear is not None:
                (nn.init.normal_ if authors else nn.init.uniform_)(self.linear, -b, b)   # (mean, std) or (lo, hi)

    @property
    def W(self) -> torch.Tensor:
        """The exactly symmetric matrices :math:`W_i = (V_i + V_i^\top)/2`, shape ``(C, d, d)``."""
        return symmetrise(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = torch.matmul(x.unsqueeze(0), self.weight)           # (C, B, d)
        out = (xw * x.unsqueeze(0)).sum(-1).transpose(0, 1)      # (B, C)
        if self.linear is not None:
            out = (out + F.linear(x, self.linear)) * 0.5
        return out

    def unique_parameters(self) -> int:
        d = self.in_features
        return self.num_classes * d * (d + 1) // 2 + (0 if self.linear is None else self.linear.numel())

    def extra_repr(self) -> str:
        lin = ", f=(x^T W x + w.x)/2" if self.linear is not None else ""
        return f"in_features={self.in_features}, num_classes={self.num_classes}, W=sym(weight){lin}, init={self.init}"


def symmetrise(v: torch.Tensor) -> torch.Tensor:
    """:math:`(V + V^\top)/2` over the last two dimensions: bitwise symmetric (float addition commutes)."""
    return (v + v.transpose(-1, -2)) * 0.5


class LowRankHead(nn.Module):
    r"""Low-Rank DIQNN layer, paper eq. 3: :math:`f_i(x) = \sum_{k=1}^{r} (a_{ik}\cdot x)^2`,
    i.e. :math:`W_i = \sum_k a_{ik} a_{ik}^\top \succeq 0`; ``weight`` ``(C, r, d)``, no bias.
    Degree 2 in its parameters; on features of degree :math:`L_f`, :math:`2 (L_f + 1)` (SPEC §3, Lemma 1).
    """

    param_degree = 2

    def __init__(self, in_features: int, num_classes: int, rank: int = 1, init: str = "paper"):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"rank must be >= 1, got {rank}")
        self.in_features, self.num_classes, self.rank = int(in_features), int(num_classes), int(rank)
        self.init = _check_init(init)
        self.weight = nn.Parameter(torch.empty(num_classes, rank, in_features))
        self.reset_parameters()

    @staticmethod
    def compose_degree(feature_degree: int | None) -> int | None:
        return None if feature_degree is None else 2 * (feature_degree + 1)

    def reset_parameters(self) -> None:
        """``paper``: U(-1/sqrt(d), 1/sqrt(d)); ``authors``: ``kaiming_normal_(a=10)`` of their
        ``[C, d, r]`` tensor, fan-in d r: N(0, 2 / (101 d r))."""
        if self.init == "authors":
            nn.init.normal_(self.weight, std=math.sqrt(2.0 / 101.0) / math.sqrt(self.in_features * self.rank))
        else:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, self.weight.reshape(-1, self.in_features))          # (B, C r)
        return z.square().reshape(x.shape[0], self.num_classes, self.rank).sum(-1)

    def quadratic_forms(self) -> torch.Tensor:
        """The equivalent full matrices :math:`W_i = A_i^\\top A_i`, shape ``(C, d, d)``."""
        return torch.einsum("crd,cre->cde", self.weight, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, rank={self.rank}, init={self.init}"


# --- Feature extractors ---
class BasicBlock(nn.Module):
    """CIFAR ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN (+ shortcut), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetFeatures(nn.Module):
    """CIFAR-style ResNet body (SPEC §1, Table 3): 3x3 stem 3->64, BN, ReLU, no max-pool;
    BasicBlock stages of widths 64/128/256/512 with strides 1/2/2/2 and ``blocks``
    blocks each; global average pool (4x4 on 32x32 inputs) -> 512 features."""

    def __init__(self, blocks: Sequence[int], in_channels: int = 3):
        super().__init__()
        self.blocks = tuple(blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, in_planes = [], 64
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), self.blocks):
            for s in [stride] + [1] * (n - 1):
                layers.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.out_features = 512

    def forward(self, x):
        out = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"blocks={list(self.blocks)}"


class Classifier(nn.Module):
    r"""``f(x) = head(features(x))`` with the degrees of SPEC §2-3: ``feature_degree`` (0 without
    parameters, ``None`` if not homogeneous), ``degree`` (L in all parameters or ``None``: margins
    then use the head) and ``head_degree`` (L in the head's parameters, features held fixed)."""

    def __init__(self, features: nn.Module, head: nn.Module, feature_degree: int | None,
                 name: str, input_shape: Sequence[int]):
        super().__init__()
        self.features = features
        self.head = head
        self.feature_degree = feature_degree
        self.degree = head.compose_degree(feature_degree)
        self.head_degree = head.param_degree if getattr(head, "bias", None) is None else None
        self.name = name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = head.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, degree={self.degree}, head_degree={self.head_degree}"


class ReLU2Head(nn.Module):
    """Output layer of ``relu2``: ``W2 h + b2``; jointly 1-homogeneous in (W2, b2)."""

    param_degree = 1

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes

    @staticmethod
    def compose_degree(feature_degree):  # the bias b2 breaks full homogeneity
        return None

    def forward(self, h):
        return self.linear(h)


class AffineInput(nn.Module):
    r"""Flatten and append a constant: :math:`x \mapsto [x, 1]` (``affine=True``).

    A quadratic form of :math:`[x, 1]` is :math:`x^\top A x + 2 b\cdot x + c`, still homogeneous in
    :math:`\theta` with the same L (the 1 is an input); without it f(x) = f(-x).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


# --- Factory ---
def _widths(hidden, layers: int, default: int) -> list[int]:
    hidden = list(hidden or [default])
    if len(hidden) == 1:
        return hidden * (layers - 1)
    if len(hidden) != layers - 1:
        raise ConfigError(f"--hidden gives {len(hidden)} widths for {layers} layers; need {layers - 1} (or one)")
    return hidden


def _parse_name(name) -> tuple[str, str]:
    """``(body, head)`` of a model name: body in {vector, conv, resnet10..18}, head in
    {linear, relu2, quadratic, lowrank}; the only place that reads a model name."""
    if name in ("linear", "relu2", "quadratic", "lowrank"):
        return "vector", name
    m = re.fullmatch(r"(conv|resnet(\d+))-(\w+)", str(name))
    if m and (m.group(2) is None or int(m.group(2)) in RESNET_BLOCKS):
        if m.group(3) not in HEADS:
            raise ConfigError(f"unknown head {m.group(3)!r}; choose from {', '.join(HEADS)}")
        return m.group(1), m.group(3)
    raise ConfigError(f"unknown model {name!r}; valid: {describe_model_names()}")


@dataclass(frozen=True)
class ModelSpec:
    """A model's name and options (SPEC §1), stored verbatim (:meth:`as_dict`) in configs and checkpoints.

    ``name``: one of :data:`MODEL_NAMES`. ``rank``: r of every Low-Rank layer. ``layers``: n Low-Rank
    layers (``lowrank``; n > 1 is the deep DIQNN). ``hidden``: relu2's width (8000) or the deep
    lowrank's (32 each). ``conv_channels``/``conv_bias``: the 5x5 conv of ``conv-*`` (1 and a bias as
    the paper; homogeneous either way). ``init``: one of :data:`INITS`. ``linear_term``: the authors'
    full head. ``affine``: inputs ``[x, 1]`` (:class:`AffineInput`).
    """

    name: str = "lowrank"
    rank: int = 1
    layers: int = 1
    hidden: tuple[int, ...] | None = None
    conv_channels: int = 1
    conv_bias: bool = True
    linear_term: bool = False
    affine: bool = False
    init: str = "paper"

    def __post_init__(self):
        h = self.hidden
        if h is not None:
            h = (h,) if isinstance(h, int) else tuple(h) if isinstance(h, (list, tuple)) else None
            if not h or any(not is_int(v) or v < 1 for v in h):
                raise ConfigError(f"hidden width must be >= 1, got {self.hidden!r}")
            object.__setattr__(self, "hidden", h)
        for k in ("rank", "layers", "conv_channels"):
            v = getattr(self, k)
            if not is_int(v):
                raise ConfigError(f"{k.replace('_', ' ')} must be an integer, got {v!r}")
            if v < 1:
                raise ConfigError(f"{k.replace('_', ' ')} must be >= 1, got {v}")
        if self.layers > MAX_LAYERS:
            raise ConfigError(f"--layers {self.layers}: Lemma 1's degree 2^(n+1) - 2 overflows float64 beyond "
                              f"n = {MAX_LAYERS} layers")
        _check_init(self.init)
        _parse_name(self.name)

    @classmethod
    def args(cls) -> tuple[str, ...]:
        """The option names (every field but ``name``)."""
        return tuple(f.name for f in fields(cls) if f.name != "name")

    @classmethod
    def from_mapping(cls, m, **override) -> "ModelSpec":
        """From a config / checkpoint dict (``name`` or ``model``); other keys are ignored,
        ``None`` means the default."""
        d = {**m, **override}
        kw = {k: d[k] for k in cls.args() if d.get(k) is not None}
        return cls(name=d.get("name") or d.get("model"), **kw)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = None if self.hidden is None else list(self.hidden)
        return d

    @property
    def body(self) -> str:
        """``vector``, ``conv`` or ``resnetK``."""
        return _parse_name(self.name)[0]

    @property
    def head(self) -> str:
        """``linear``, ``relu2``, ``quadratic`` or ``lowrank``."""
        return _parse_name(self.name)[1]

    def check_applicable(self) -> "ModelSpec":
        """Options that do not apply to this model are errors, never silently ignored."""
        self._check_buildable()
        n, h, body = self.name, self.head, self.body
        if self.rank != 1 and h != "lowrank":
            raise ConfigError(f"--rank applies to models with lowrank layers (lowrank, conv-lowrank, "
                              f"resnet*-lowrank), not {n!r}")
        if self.hidden is not None:
            if n == "relu2":
                if len(self.hidden) != 1:
                    raise ConfigError(f"relu2 has one hidden layer: --hidden takes one width, got {list(self.hidden)}")
            elif n != "lowrank" or self.layers == 1:
                raise ConfigError(f"--hidden applies to relu2 and to the deep lowrank model (--layers > 1), "
                                  f"not {n!r}" + (" with one layer" if n == "lowrank" else ""))
        if body != "conv" and self.conv_channels != 1:
            raise ConfigError(f"--conv-channels applies to the conv-* models, not {n!r}")
        if body != "conv" and not self.conv_bias:
            raise ConfigError(f"--no-conv-bias applies to the conv-* models, not {n!r}")
        return self

    def _check_buildable(self) -> None:
        """The options that no module can honour (:meth:`build` refuses them too)."""
        n = self.name
        if self.layers != 1 and n != "lowrank":
            raise ConfigError(f"--layers applies to the lowrank model only, not {n!r}")
        if self.affine and (self.body != "vector" or self.head == "relu2"):
            raise ConfigError(f"--affine: affine inputs apply to linear, quadratic and lowrank, not {n!r} "
                              "(a constant beside features of degree > 0 would break homogeneity)")
        if self.linear_term and self.head != "quadratic":
            raise ConfigError(f"--linear-term: the linear term belongs to the full quadratic head (quadratic, "
                              f"conv-quadratic, resnet*-quadratic), not {n!r}")

    def describe(self) -> str:
        """The options that matter for this model, e.g. ``rank 2, 3 layers``."""
        hidden = self.hidden is not None and (self.name == "relu2" or self.layers != 1)
        conv = f"{self.conv_channels} conv channels" + ("" if self.conv_bias else ", no conv bias")
        bits = ((self.head == "lowrank", f"rank {self.rank}"),
                (self.layers != 1, f"{self.layers} layers"),
                (hidden, f"hidden {list(self.hidden or ())}"),
                (self.body == "conv", conv),
                (self.linear_term, "linear term (x^T W x + w.x)/2"),
                (self.affine, "affine inputs [x, 1]"))
        return ", ".join(text for applies, text in bits if applies)

    def build(self, input_shape: Sequence[int], num_classes: int) -> "Classifier":
        """The classifier for inputs of ``input_shape`` (one sample) and ``num_classes`` = C;
        it keeps this spec as ``model.spec``."""
        model = self._build(input_shape, num_classes)
        model.spec = self
        return model

    def _build(self, input_shape, num_classes) -> "Classifier":
        name, body, kind, C, r, init = self.name, self.body, self.head, int(num_classes), self.rank, self.init
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s < 1 for s in input_shape):
            raise ConfigError(f"invalid input shape {input_shape}")
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {num_classes}")
        self._check_buildable()
        if body == "vector":
            d = math.prod(input_shape) + (1 if self.affine else 0)
            features, fdeg = AffineInput() if self.affine else nn.Flatten(), 0
            if kind == "relu2":
                h = self.hidden[0] if self.hidden else 8000
                features = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU())
                return Classifier(features, ReLU2Head(h, C), None, name, input_shape)
            if self.layers > 1:
                mods = [features]
                for h in _widths(self.hidden, self.layers, 32):
                    mods.append(LowRankHead(d, h, r, init=init))
                    fdeg, d = 2 * (fdeg + 1), h
                features = nn.Sequential(*mods)
        elif len(input_shape) != 3:
            raise ConfigError(f"{name} needs image inputs (C, H, W), got shape {input_shape}")
        elif body == "conv":
            cin, H, W = input_shape
            c = self.conv_channels
            features = nn.Sequential(nn.Conv2d(cin, c, 5, padding=2, bias=self.conv_bias), nn.ReLU(), nn.Flatten())
            # (c w) * x + c b = c (w * x + b) and ReLU is positively homogeneous: degree 1 *with or
            # without* the bias (SPEC §3 says otherwise: proofs/lemma1_homogeneity.md, "Correction to SPEC §3")
            d, fdeg = c * H * W, 1
        else:
            features = ResNetFeatures(RESNET_BLOCKS[int(body[6:])], in_channels=input_shape[0])
            d, fdeg = features.out_features, None
        if kind == "linear":
            head = LinearHead(d, C, init=init)
        elif kind == "lowrank":
            head = LowRankHead(d, C, r, init=init)
        else:
            head = QuadraticHead(d, C, linear_term=self.linear_term, init=init)
        return Classifier(features, head, fdeg, name, input_shape)


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> Classifier:
    """``ModelSpec(name, **options).build(input_shape, num_classes)`` (SPEC §1)."""
    return ModelSpec(name, **options).build(input_shape, num_classes)


def parameter_count(model: nn.Module) -> int:
    """Dense count of trainable parameters (SPEC §1 counts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unique_parameter_count(model: nn.Module) -> int:
    """Count with each symmetric W_i counted once per unordered pair (i <= j)."""
    return sum(m.unique_parameters() if isinstance(m, QuadraticHead) else
               sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
