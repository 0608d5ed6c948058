r"""Homogeneity of the models in their parameters (SPEC §3; paper Definition 1, Lemma 1).

Definition 1: f is *L-homogeneous* in :math:`\theta` if :math:`f(c\theta; x) = c^L f(\theta; x)`
for every :math:`c > 0`, :math:`\theta` and x; then Euler's identity
:math:`\langle \nabla_\theta f_j, \theta\rangle = L f_j` holds (``proofs/lemma1_homogeneity.md``).
Lemma 1: a Low-Rank DIQNN of n quadratic layers has :math:`L_n = 2(L_{n-1} + 1)`, :math:`L_1 = 2`,
i.e. :math:`L_n = 2^{n+1} - 2`. Two independent checkers; neither is told the degree.

**Symbolic** (:func:`symbolic_homogeneity`, exact) checks the module that trains, built at tiny sizes
and traced with :func:`torch.fx.symbolic_trace`; the graph is interpreted over numpy object arrays of
polynomials (``sympy.polys.rings`` over Z, or Q: the full head's 0.5 is exactly 1/2) by a table of ops
(``F.linear``, ``matmul``, ``*``, ``+``, ``sum``, ``reshape``, ``cat``, ``nn.Conv2d``, ``nn.ReLU``, ...);
any other op (BatchNorm) is a one-line :class:`ConfigError`. Every parameter entry enters as
:math:`c\,\theta_k`; f is homogeneous iff every monomial has one c-exponent L, and then
:math:`f(c\theta) = c^L f(\theta)` identically. Two methods:

* ``"expand"``: parameters (named as torch's, ``head.weight[1,0,1]``) and inputs are ring generators;
  Euler is checked as :math:`\sum_p p\,\partial f/\partial p - L f \equiv 0`.
  :math:`\mathrm{relu}(z) = z\,\mathbb 1[z > 0]` with a gate generator ``g_k``, unchanged by
  :math:`\theta \to c\theta` when z is homogeneous (:math:`\mathbb 1[cz > 0] = \mathbb 1[z > 0]`), derivative 0;
  a gate whose argument is not homogeneous is a failure. A non-homogeneous f names the parameters in
  monomials below the top c-exponent (``relu2``: the output bias).
* ``"ray"`` (automatic beyond ``max_terms`` monomials, e.g. four layers): exact integers at ``trials``
  random points :math:`\theta_0, x_0` (entries in :math:`[-10^6, 10^6] \setminus \{0\}`); every value is a
  polynomial in c, and Euler, :math:`\frac{d}{dc} f(c\theta_0)|_{c=1} = L f(\theta_0)`, follows from one
  exponent. By Schwartz-Zippel a non-zero polynomial of degree D vanishes there with probability
  at most :math:`D / (2\cdot 10^6)`.

The ``quadratic`` head's parameters are the entries of the stored V (:math:`x^\top V x = x^\top W x`,
:math:`W = (V + V^\top)/2`, linear in V).

**Numeric** (:func:`numeric_homogeneity`, any ``torch.nn.Module``, float64, eval mode, parameters
substituted by :func:`torch.func.functional_call`, the model untouched): L from
:math:`\log(f_j(c\theta)/f_j(\theta)) / \log c`; homogeneous when, for every c,
:math:`\max_j |f_j(c\theta) - c^L f_j(\theta)| \le \mathrm{rtol}\,\max_j |c^L f_j(\theta)|` at :math:`\theta` and at a
*generic* :math:`\theta'` (each tensor plus Gaussian noise of half its RMS: a zero bias would hide);
Euler's identity by one :func:`torch.func.jvp`; the head's degree with its input held fixed. Breaking
parameters (biases and :data:`NORM_LAYER_TYPES` layers), at :math:`\theta'`: neutralise all (biases zero, norm
layers the identity); if f is then homogeneous, each one put back alone breaks it iff f is then not
(``relu2``'s b2, not b1: :math:`W_1x + b_1 = [W_1\ b_1][x; 1]`); otherwise the architecture breaks it
(``structural``) and the tensors P in which f is not separately homogeneous are named
(:math:`\langle\nabla_P (w\cdot f), P\rangle / (w\cdot f)` depends on random weights w): every BatchNorm of a ResNet.
A bias in the *first* parameterised layer does not break homogeneity (proof §4),
:math:`(cW)x + cb = c(Wx + b)`: ``conv-<head>`` is homogeneous with or without its conv bias.

CLI: ``python -m margin_theory.homogeneity --model lowrank --layers 3 --json``.
"""
from __future__ import annotations

import argparse
import functools
import math
import operator
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ._util import ArgumentParser, ConfigError, check_memory, cli_entry, one_line, print_json
from ._util import positive_int as _positive_int, nonneg_int as _nonneg_int
from .models import ModelSpec, build_model, describe_model_names

__all__ = [
    "lemma1_degree", "SymbolicResult", "symbolic_homogeneity", "SYMBOLIC_MODELS",
    "NumericResult", "numeric_homogeneity", "default_input_shape", "check_model",
    "NORM_LAYER_TYPES", "main",
]


def lemma1_degree(layers: int) -> int:
    r"""Lemma 1's closed form :math:`L_n = 2^{n+1} - 2` (only *compared* with what is derived)."""
    if int(layers) < 1:
        raise ConfigError(f"layers must be >= 1, got {layers}")
    return 2 ** (int(layers) + 1) - 2


# --- Symbolic checker: the real module's fx graph, interpreted over exact polynomials ---
SYMBOLIC_MODELS = ("linear", "quadratic", "lowrank", "relu2", "conv-linear", "conv-lowrank",
                   "conv-quadratic")
_BOUND = 10 ** 6  # ray: entries of the random points


class _TooLarge(Exception):
    pass


class _GateNotHomogeneous(Exception):
    pass


def _objects(shape, fill: Callable[[int], Any]) -> np.ndarray:
    """An object array of ``shape`` with entry ``fill(k)`` at flat index k."""
    arr = np.empty(tuple(shape), dtype=object)
    for k, idx in enumerate(np.ndindex(*arr.shape)):
        arr[idx] = fill(k)
    return arr


def _exact(v) -> int | Fraction:
    """A Python number as an exact int or Fraction (a float's exact binary value: 0.5 -> 1/2)."""
    q = Fraction(v)
    return q.numerator if q.denominator == 1 else q


def _c_degrees(polys) -> set[int]:
    """The exponents of c (the last generator) in the monomials of ``polys``."""
    return {m[-1] for p in polys for m in p.keys()}


class _Dry:
    """Scalars for :func:`_interpret`: ``leaf(name, shape)`` a parameter tensor (the input if ``name=None``),
    ``const`` an exact number, ``gate(z)`` :math:`\\mathrm{relu}(z) = z\\,\\mathbb 1[z > 0]`, ``check`` every node's
    value. This base class is the dry run over zeros: it counts the gates and picks the domain."""

    n_gates, domain = 0, "ZZ"           # sympy's domains by name: sympy loads only for the exact check

    def leaf(self, name, shape):
        return _objects(shape, lambda k: 0)

    def const(self, q):
        if isinstance(q, Fraction):
            self.domain = "QQ"
        return q

    def gate(self, z):
        self.n_gates += 1
        return z

    def check(self, v) -> None:
        pass


class _Exact(_Dry):
    """Polynomials in c and, for ``expand`` (``point=None``), in generators for the parameters,
    the inputs ``x0, x1, ...`` and the gates ``g0, g1, ...``; for ``ray`` the parameters and
    inputs are the integers of ``point``. A parameter entry is c times its value."""

    def __init__(self, model: nn.Module, n_inputs: int, dry: _Dry, point=None, max_terms=math.inf):
        import sympy.polys.rings

        self.expand, self.max_terms, self._next = point is None, max_terms, 0
        self.P = sum(p.numel() for p in model.parameters())
        self.param_names = [f"{n}[{','.join(map(str, idx))}]" for n, p in model.named_parameters()
                            for idx in np.ndindex(*p.shape)] if self.expand else []
        names = self.param_names + [f"x{k}" for k in range(n_inputs)] + [f"g{k}" for k in range(dry.n_gates)]
        self.R, *gens = sympy.polys.rings.ring(names + ["c"] if self.expand else ["c"], dry.domain)
        self.c = gens[-1]
        self.values = gens[:self.P + n_inputs] if self.expand else [self.R(v) for v in point]
        self.gates = gens[self.P + n_inputs:-1]

    def leaf(self, name, shape):
        if name is None:
            return _objects(shape, lambda k: self.values[self.P + k])
        k0, self._next = self._next, self._next + math.prod(shape)
        return _objects(shape, lambda k: self.c * self.values[k0 + k])

    def const(self, q):
        return self.R(q)

    def gate(self, z):
        if len(_c_degrees([z])) > 1:
            raise _GateNotHomogeneous(z)
        self.n_gates += 1
        if self.expand:
            return z * self.gates[self.n_gates - 1]
        return z if z and z.LC > 0 else self.R.zero  # z = a c^k: 1[z > 0] = 1[a > 0] for c > 0

    def check(self, v) -> None:
        n = sum(len(e) for e in v.flat if isinstance(e, dict)) if isinstance(v, np.ndarray) else 0
        if n > self.max_terms:
            raise _TooLarge(n)

    def breaking(self, polys) -> list[str]:
        """(expand) The parameter tensors in the monomials of a lower c-degree than the top one."""
        if not self.expand:
            return []
        top = max(_c_degrees(polys))
        hit = {k for p in polys for m in p.keys() if m[-1] != top for k in range(self.P) if m[k]}
        return sorted({self.param_names[k].split("[")[0] for k in hit})


# --- the ops the models use, over object arrays (torch names; method and function alike) ---
def _lift(B, v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, (int, float, Fraction)):
        return _objects((), lambda k: B.const(_exact(v)))
    raise ConfigError(f"symbolic checker: cannot use a {type(v).__name__} as a number")


def _arith(op):
    def f(B, a, b):
        if not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):
            return op(a, b)  # shape arithmetic
        return op(_lift(B, a), _lift(B, b))
    return f


def _flatten(B, x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])


def _reshape(B, x, *shape):
    return x.reshape(tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


def _sum(B, x, dim=None, keepdim=False):
    return np.sum(x, axis=tuple(dim) if isinstance(dim, (list, tuple)) else dim, keepdims=keepdim)


def _linear(B, x, weight, bias=None):
    y = np.matmul(x, np.swapaxes(weight, -1, -2))
    return y if bias is None else y + bias


def _relu(B, x, inplace=False):  # relu(z) = z 1[z > 0]: the backend's gate
    return _objects(x.shape, lambda k: B.gate(x.flat[k]))


def _pow(B, x, n):
    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"symbolic checker: unsupported op 'pow' with exponent {n!r} "
                          "(only positive integers)")
    return functools.reduce(operator.mul, [x] * n)


def _getattr(B, x, name):
    if name not in ("shape", "ndim", "T"):
        raise ConfigError(f"symbolic checker: unsupported op 'getattr .{name}'")
    return getattr(x, name)


def _conv2d(B, m, p, x):
    if (m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros"
            or isinstance(m.padding, str)):
        raise ConfigError("symbolic checker: unsupported op 'Conv2d' with groups, dilation or a padding mode")
    w, b = p("weight"), p("bias")
    (ph, pw), (sh, sw) = m.padding, m.stride
    N, Cin, H, W = x.shape
    kh, kw = w.shape[2:]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ConfigError(f"kernel {kh}x{kw} with padding {ph} does not fit a {H}x{W} image")
    xp = _objects((N, Cin, H + 2 * ph, W + 2 * pw), lambda k: B.const(0))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    out = sum(np.tensordot(xp[:, :, u:u + sh * (Ho - 1) + 1:sh, v:v + sw * (Wo - 1) + 1:sw], w[:, :, u, v],
                           axes=([1], [1])) for u in range(kh) for v in range(kw))    # (N, Ho, Wo, Cout)
    out = np.moveaxis(out, -1, 1)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


_TENSOR_OPS: dict[str, Callable] = {
    "flatten": _flatten, "reshape": _reshape, "view": _reshape, "sum": _sum, "relu": _relu,
    "unsqueeze": lambda B, x, dim: np.expand_dims(x, dim),
    "transpose": lambda B, x, d0, d1: np.swapaxes(x, d0, d1),
    "square": lambda B, x: x * x,
    "matmul": lambda B, a, b: np.matmul(a, b),
    "add": _arith(operator.add), "mul": _arith(operator.mul),
    # the backends have + and * only
    "sub": lambda B, a, b: _arith(operator.add)(B, a, _arith(operator.mul)(B, -1, b)),
    "neg": lambda B, x: _arith(operator.mul)(B, -1, x),
    "pow": _pow, "size": lambda B, x, dim=None: x.shape if dim is None else x.shape[dim],
}
_SHAPE_OPS = (_TENSOR_OPS["size"], _getattr)
#: op -> implementation(B, *args): call_method names, and the torch / F functions of the same name
_OPS: dict[Any, Callable] = dict(_TENSOR_OPS)
_OPS.update({getattr(ns, n): fn for n, fn in _TENSOR_OPS.items() for ns in (torch, F) if hasattr(ns, n)})
_OPS.update({
    operator.add: _OPS["add"], operator.mul: _OPS["mul"], operator.sub: _OPS["sub"],
    operator.neg: _OPS["neg"], operator.matmul: _OPS["matmul"], operator.pow: _pow,
    operator.getitem: lambda B, x, idx: x[idx], getattr: _getattr, F.linear: _linear,
    torch.cat: lambda B, xs, dim=0: np.concatenate(xs, axis=dim),
    torch.ones_like: lambda B, x, **kw: _objects(x.shape, lambda k: B.const(1)),
    torch.zeros_like: lambda B, x, **kw: _objects(x.shape, lambda k: B.const(0)),
})
#: leaf module type -> implementation(B, module, param_of, *args)
_MODULES: dict[type, Callable] = {
    nn.Flatten: lambda B, m, p, x: _flatten(B, x, m.start_dim, m.end_dim),
    nn.Linear: lambda B, m, p, x: _linear(B, x, p("weight"), p("bias")),
    nn.ReLU: lambda B, m, p, x: _relu(B, x),
    nn.Identity: lambda B, m, p, x: x,
    nn.Conv2d: _conv2d,
}


def _interpret(B, model: nn.Module, graph, input_shape) -> list:
    """Evaluate ``model``'s traced ``graph`` node by node over object arrays of B's scalars, on one
    sample ``(1, *input_shape)``."""
    params = {n: B.leaf(n, tuple(p.shape)) for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    env: dict = {}
    for node in graph.nodes:
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
        if node.op == "placeholder":
            v = B.leaf(None, (1,) + tuple(input_shape))
        elif node.op == "get_attr":
            v = params.get(node.target)
            if v is None:
                obj = operator.attrgetter(node.target)(model)
                vals = obj.detach().reshape(-1).tolist() if isinstance(obj, torch.Tensor) else None
                v = obj if vals is None else _objects(obj.shape, lambda k: B.const(_exact(vals[k])))
        elif node.op == "output":
            return [B.const(e) if isinstance(e, (int, Fraction)) else e for e in _lift(B, args[0]).reshape(-1)]
        elif node.op == "call_module":
            m = modules[node.target]
            if type(m) not in _MODULES:
                raise ConfigError(f"symbolic checker: unsupported op {type(m).__name__!r} "
                                  f"(module {node.target})")
            v = _MODULES[type(m)](B, m, lambda a, t=node.target: params.get(f"{t}.{a}"), *args, **kwargs)
        else:
            impl = _OPS.get(node.target)
            if impl is None:
                name = (f"Tensor.{node.target}" if node.op == "call_method"
                        else getattr(node.target, "__name__", "?"))
                raise ConfigError(f"symbolic checker: unsupported op {name!r} (node {node.name})")
            v = impl(B, *args, **kwargs)
            if (not isinstance(v, np.ndarray) and impl not in _SHAPE_OPS
                    and any(type(a) is np.ndarray for a in args)):
                v = _objects((), lambda k, v=v: v)  # numpy returns 0-d results as scalars
        B.check(v)
        env[node] = v
    raise ConfigError("symbolic checker: the traced graph has no output")


@dataclass
class SymbolicResult:
    """Outcome of :func:`symbolic_homogeneity` (exact; see the module docstring)."""

    model: str
    method: str
    sizes: dict
    n_parameters: int
    homogeneous: bool
    degree: int | None
    degrees: list
    euler_ok: bool
    expression_size: int
    breaking_parameters: list
    lemma1_formula: int | None
    seconds: float
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def symbolic_homogeneity(model_name: str = "lowrank", *, layers: int = 1, d: int = 2,
                         hidden: int | Sequence[int] = 2, rank: int = 1, num_classes: int = 2,
                         conv_bias: bool = False, image: Sequence[int] = (2, 2), kernel: int = 5,
                         padding: int = 2, channels: int = 1, method: str = "auto",
                         max_terms: int = 20_000, trials: int = 3, seed: int = 0) -> SymbolicResult:
    r"""Derive exactly the degree of ``build_model(model_name, ...)`` at tiny sizes (SPEC §3): ``layers`` n of
    ``lowrank`` (Lemma 1: expect :math:`2^{n+1}-2`, never assumed), input dimension ``d``, ``hidden``, ``rank``,
    C = ``num_classes``; ``conv-`` models on a one-channel ``image`` (the model's ``kernel`` 5, ``padding`` 2).
    ``method``: ``"expand"``, ``"ray"`` (``trials`` random points) or ``"auto"`` (ray beyond ``max_terms``)."""
    if model_name not in SYMBOLIC_MODELS:
        raise ConfigError(f"no symbolic form for model {model_name!r}; --symbolic supports "
                          f"{', '.join(SYMBOLIC_MODELS)}")
    shape = (1, *(int(v) for v in image)) if model_name.startswith("conv-") else (int(d),)
    sizes = {"input_shape": list(shape), "num_classes": int(num_classes), "rank": int(rank),
             "layers": int(layers), "conv_bias": bool(conv_bias), "conv_channels": int(channels),
             "hidden": hidden if hidden is None or isinstance(hidden, int) else list(hidden)}
    with torch.random.fork_rng(devices=[]):  # the initial values are never used
        model = build_model(model_name, shape, int(num_classes), rank=int(rank), layers=int(layers),
                            hidden=hidden, conv_bias=bool(conv_bias), conv_channels=int(channels))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and (m.kernel_size[0], m.padding[0]) != (int(kernel), int(padding)):
            raise ConfigError(f"kernel {kernel} / padding {padding}: the model's conv has kernel "
                              f"{m.kernel_size[0]} and padding {m.padding[0]}")
    res = _symbolic_module(model, shape, method=method, max_terms=max_terms, trials=trials, seed=seed)
    res.model, res.sizes = model_name, sizes
    res.lemma1_formula = lemma1_degree(layers) if model_name == "lowrank" else None
    return res


def _symbolic_module(model: nn.Module, shape: Sequence[int], *, method: str = "auto", max_terms: int = 20_000,
                     trials: int = 3, seed: int = 0) -> SymbolicResult:
    """The exact check of any module whose traced graph uses only :data:`_OPS` and :data:`_MODULES`."""
    if method not in ("auto", "expand", "ray"):
        raise ConfigError(f"method must be auto, expand or ray, got {method!r}")
    if int(trials) < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure is a one-line refusal
        raise ConfigError(f"torch.fx cannot trace {type(model).__name__}: {one_line(exc, 200)}") from None
    t0, dry, notes = time.perf_counter(), _Dry(), []
    _interpret(dry, model, graph, shape)
    n_in, n_params = math.prod(shape), sum(p.numel() for p in model.parameters())
    res = None
    if method != "ray":
        expand = _Exact(model, n_in, dry, max_terms=max_terms if method == "auto" else math.inf)
        try:
            res = _derive(model, graph, shape, [expand], 1, notes)
        except _TooLarge as exc:
            notes.append(f"expansion exceeded {max_terms} monomials ({exc.args[0]} at some node): "
                         "switched to exact integer arithmetic along random rays")
    if res is None:
        rng = random.Random(seed)
        points = (_Exact(model, n_in, dry, point=[rng.choice((-1, 1)) * rng.randint(1, _BOUND)
                                                  for _ in range(n_params + n_in)])
                  for _ in range(50 * int(trials)))
        notes.append(f"exact integer arithmetic at {trials} random points (entries in [-{_BOUND}, {_BOUND}] "
                     "\\ {0}); Euler's identity d/dc f(c theta) = L f at c = 1 follows from one c-exponent")
        res = _derive(model, graph, shape, points, int(trials), notes)
    res.model, res.sizes = getattr(model, "name", type(model).__name__), {"input_shape": list(shape)}
    res.n_parameters, res.seconds = n_params, time.perf_counter() - t0
    return res


def _derive(model, graph, shape, backends, wanted: int, notes: list) -> SymbolicResult:
    """Evaluate f(c theta) with each backend until ``wanted`` of them gave a non-zero f and read off
    the c-degrees; ``expand`` verifies Euler's identity as a polynomial identity."""
    degrees, breaking, size, done, tried, euler = set(), [], 0, 0, 0, True
    for B in backends:
        tried += 1
        try:
            f = _interpret(B, model, graph, shape)
        except _GateNotHomogeneous as exc:
            notes.append(f"a ReLU gate's argument is not homogeneous (c-degrees {sorted(_c_degrees(exc.args))}), "
                         "so the activation pattern changes along the ray c*theta: f is not homogeneous")
            return _symbolic_result(B, notes, breaking=B.breaking(exc.args))
        degs, size = _c_degrees(f), max(size, sum(len(fi) for fi in f))
        if not degs:  # f = 0 here (every ReLU closed at a ray's point): uninformative
            continue
        done, degrees = done + 1, degrees | degs
        if len(degs) > 1:
            breaking = B.breaking(f)
        elif B.expand:  # sum_p p df/dp = L f at c = 1
            f1 = [fi.subs(B.c, 1) for fi in f]
            euler &= all(sum((t * g.diff(t) for t in B.values[:B.P]), B.R.zero) == max(degs) * g for g in f1)
        if done == wanted:
            break
    if done < wanted:
        notes.append("f is identically zero" if B.expand else
                     f"only {done} informative points in {tried} draws (f vanished at the others)")
    homogeneous = len(degrees) == 1
    if not homogeneous and degrees:
        notes.append(f"monomials of c-degrees {sorted(degrees)}; " + (
            f"named: the parameters of those of degree != {max(degrees)}" if B.expand
            else "method='expand' names the parameters"))
    elif homogeneous and euler and B.expand:
        notes.append("f(c theta) = c^L f(theta) and sum_p p df/dp - L f expands to the zero polynomial")
    return _symbolic_result(B, notes, homogeneous, max(degrees) if homogeneous else None, degrees,
                            euler and homogeneous, size, breaking)


def _symbolic_result(B, notes, homogeneous=False, degree=None, degrees=(), euler_ok=False, size=0,
                     breaking=()) -> SymbolicResult:
    return SymbolicResult("", "expand" if B.expand else "ray", {}, 0, homogeneous, degree, sorted(degrees),
                          euler_ok, size, sorted(breaking), None, 0.0, notes)


# --- Numeric checker ---
NORM_LAYER_TYPES: tuple = tuple(t for t in (
    getattr(nn.modules.batchnorm, "_NormBase", None), nn.LayerNorm, nn.GroupNorm,
    getattr(nn, "RMSNorm", None), getattr(nn, "LocalResponseNorm", None)) if t is not None)


@dataclass
class NumericResult:
    """Outcome of :func:`numeric_homogeneity` (see the module docstring for the method)."""

    homogeneous: bool
    degree: int | None
    degree_estimate: float | None
    per_c_estimates: dict
    max_rel_err: float | None
    homogeneous_at_theta: bool
    homogeneous_at_generic_theta: bool | None
    euler_ok: bool
    euler_max_rel_err: float | None
    euler_degree_fit: float | None
    breaking_parameters: list
    breaking_groups: dict
    structural: bool
    homogeneous_without_breaking: bool | None
    degree_without_breaking: int | None
    head_degree: int | None
    head_degree_estimate: float | None
    declared_degree: Any = None
    declared_head_degree: Any = None
    agrees_with_declared: bool | None = None
    n_parameters: int = 0
    n_outputs: int = 0
    cs: list = field(default_factory=list)
    rtol: float = 0.0
    dtype: str = "float64"
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Fit:
    homogeneous: bool
    degree: float | int | None
    estimate: float | None
    per_c: dict
    max_rel_err: float | None
    reason: str = ""


def _ray_test(fn: Callable[[dict], torch.Tensor], params: dict, cs, rtol, early_exit: bool = False) -> _Fit:
    r"""Evaluate :math:`f(c\theta)` for c in ``cs``, estimate L as the mean over c of the median over outputs of
    :math:`\log(f_c/f_0)/\log c` and verify :math:`\max|f_c - c^L f_0| \le \mathrm{rtol} \max|c^L f_0|`.
    ``early_exit``: stop at the first c whose log-ratios spread by more than 1e-3 (not homogeneous)."""
    with torch.no_grad():
        f0 = fn(params).reshape(-1).to(torch.float64)
        scale = float(f0.abs().max()) if f0.numel() else 0.0
        if not math.isfinite(scale) or scale == 0.0:
            return _Fit(False, None, None, {}, None, "f vanishes at these inputs: degree undetermined"
                        if scale == 0.0 else "f(theta) is not finite")
        sig = f0.abs() >= 1e-6 * scale
        per_c, fcs = {}, {}
        for c in cs:
            fcs[c] = fc = fn({n: v * c for n, v in params.items()}).to(f0)
            r = fc[sig] / f0[sig]
            lr = torch.log(r) / math.log(c) if bool(torch.isfinite(fc).all() and (r > 0).all()) else None
            per_c[repr(c)] = None if lr is None else float(torch.median(lr))
            if early_exit and len(fcs) < len(cs) and (lr is None or float(lr.max() - lr.min()) > 1e-3):
                break
    if None in per_c.values():
        return _Fit(False, None, None, per_c, None, "f(c theta)/f(theta) changes sign or is not finite")
    est = float(np.mean(list(per_c.values())))
    L = int(round(est)) if abs(est - round(est)) < 1e-6 else est
    err = max(float((fc - c ** L * f0).abs().max() / (c ** L * f0).abs().max()) for c, fc in fcs.items())
    ok = err <= rtol
    return _Fit(ok, L if ok else None, est, per_c, err,
                "" if ok else f"f(c theta) != c^L f(theta) (max rel. error {err:.3g} for L = {est:.6g})")


def _generic_point(params: dict, gen: torch.Generator) -> dict:
    """Every float tensor plus Gaussian noise of half its RMS (0.1 if it is zero)."""
    out = dict(params)
    for n, p in params.items():
        if p.is_floating_point() and p.numel():
            rms = float(p.pow(2).mean().sqrt())
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            out[n] = p + (0.5 * rms if rms > 0 else 0.1) * noise
    return out


def _separate_euler(fn, params: dict, names: list[str], gen: torch.Generator, k: int = 2,
                    tol: float = 1e-6) -> list[str]:
    r"""The tensors P of ``names`` in which f is *not* separately homogeneous: with random output weights
    :math:`w_1..w_k`, :math:`\langle\nabla_P(w\cdot f), P\rangle = \rho_P\,(w\cdot f)`, one :math:`\rho_P` for all w."""
    if not names:
        return []
    others = {n: v for n, v in params.items() if n not in names}
    primals = tuple(params[n] for n in names)
    out, vjp_fn = torch.func.vjp(lambda *ps: fn({**others, **dict(zip(names, ps))}).reshape(-1), *primals)
    W = torch.randn(k, out.numel(), generator=gen, dtype=torch.float64).to(out)
    s = W @ out.detach()
    failing = []
    for n, g, p in zip(names, torch.func.vmap(vjp_fn)(W), primals):
        d = g.reshape(k, -1) @ p.reshape(-1)
        rho = float((d @ s) / (s @ s))
        if float((d - rho * s).abs().max() / (s.abs().max() * max(1.0, abs(rho)))) > tol:
            failing.append(n)
    return failing


def numeric_homogeneity(model: nn.Module, x: torch.Tensor, *, cs: Sequence[float] = (0.5, 2.0, 3.0),
                        rtol: float | None = None, dtype: torch.dtype = torch.float64, seed: int = 0,
                        generic: bool = True, attribute: bool = True) -> NumericResult:
    r"""Numeric homogeneity check of any torch module on the batch ``x`` (SPEC §3; method in the module
    docstring): scale factors ``cs`` (positive, != 1), ``rtol`` (default 1e-7 in float64, 1e-3 otherwise),
    ``seed`` of the generic point and the per-tensor test; ``generic``: also test at a generic point;
    ``attribute``: name the breaking parameters."""
    cs = [float(c) for c in cs]
    if not cs or any(not (c > 0) or c == 1.0 or not math.isfinite(c) for c in cs):
        raise ConfigError(f"scale factors must be positive, finite and != 1, got {cs}")
    rtol = float(rtol if rtol is not None else 1e-7 if dtype == torch.float64 else 1e-3)
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ConfigError("x must be a non-empty batch of inputs (a tensor with a batch dimension)")
    named = dict(model.named_parameters())
    if not named:
        raise ConfigError(f"{type(model).__name__} has no parameters: homogeneity in theta is undefined")
    gen, was_training = torch.Generator().manual_seed(int(seed)), model.training
    model.eval()
    try:
        params, buffers = ({n: t.detach().to(dtype) if t.is_floating_point() else t.detach() for n, t in ts}
                           for ts in (named.items(), model.named_buffers()))
        x = x.detach().to(device=next(iter(named.values())).device, dtype=dtype)

        def fn(ps: dict) -> torch.Tensor:
            return functional_call(model, (ps, buffers), (x,)).reshape(-1)

        fit = _ray_test(fn, params, cs, rtol)
        params_g = _generic_point(params, gen) if generic else params
        fit_g = _ray_test(fn, params_g, cs, rtol, early_exit=True) if generic else fit
        homogeneous = fit.homogeneous and fit_g.homogeneous and fit_g.degree == fit.degree
        notes = [fit.reason] if fit.reason else []
        if fit.homogeneous and not homogeneous:
            notes.append(f"homogeneous along this theta's ray (L = {fit.degree}) but not at a generic theta "
                         "(e.g. a bias that happens to be zero): f is not homogeneous")
        degree = fit.degree if homogeneous else None
        f0, jv = _j_theta(fn, params, notes)
        euler_ok, euler_err, euler_fit = False, None, None
        if float(f0.abs().max()) > 0:  # Euler's identity at theta: J theta = L f
            euler_fit = float((jv @ f0) / (f0 @ f0))
            L = degree if degree is not None else euler_fit
            euler_err = float((jv - L * f0).abs().max()) / float((L * f0 if L else f0).abs().max())
            euler_ok = degree is not None and euler_err <= max(rtol, 1e-9) * 10
        head_degree, head_est = _head_degree(model, fn, params, cs, rtol, seed, generic)
        attr = _attribute(model, fn, params_g, cs, rtol, gen, notes) if not homogeneous and attribute else None
        breaking, groups, structural, hom_wo, deg_wo = attr or ([], {}, False, None, None)
    finally:
        model.train(was_training)
    declared, declared_head = (getattr(model, k, "undeclared") for k in ("degree", "head_degree"))
    agrees = None if declared == "undeclared" else declared == degree and declared_head in ("undeclared", head_degree)
    if agrees is False:
        notes.append(f"the model declares degree {declared} and head degree {declared_head}; "
                     f"measured: degree {degree}, head degree {head_degree}")
        if declared is None and degree is not None:
            notes.append("the declaration is conservative: f is homogeneous; a bias in the first "
                         "parameterised layer (e.g. the conv's) is jointly homogeneous with its weight, "
                         "W x + b = [W b][x; 1], so it does not break homogeneity")
    return NumericResult(
        homogeneous=bool(homogeneous), degree=degree, degree_estimate=fit.estimate, per_c_estimates=fit.per_c,
        max_rel_err=fit.max_rel_err, homogeneous_at_theta=bool(fit.homogeneous),
        homogeneous_at_generic_theta=bool(fit_g.homogeneous) if generic else None, euler_ok=bool(euler_ok),
        euler_max_rel_err=euler_err, euler_degree_fit=euler_fit, breaking_parameters=breaking,
        breaking_groups=groups, structural=structural, homogeneous_without_breaking=hom_wo,
        degree_without_breaking=deg_wo, head_degree=head_degree, head_degree_estimate=head_est,
        declared_degree=None if declared == "undeclared" else declared, agrees_with_declared=agrees,
        declared_head_degree=None if declared_head == "undeclared" else declared_head,
        n_parameters=sum(p.numel() for p in params.values()), n_outputs=int(f0.numel()), cs=cs, rtol=rtol,
        dtype=str(dtype).replace("torch.", ""), notes=notes)


def _j_theta(fn, params: dict, notes: list) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(f(theta), J theta)``, :math:`(J\theta)_j = \langle\nabla_\theta f_j, \theta\rangle`: one
    forward-mode jvp, or one backward per output for ops without a forward-mode formula."""
    names, primal = list(params), tuple(params.values())
    try:
        with warnings.catch_warnings():  # torch's jvp decompositions use the deprecated torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            f0, jv = torch.func.jvp(lambda *ps: fn(dict(zip(names, ps))), primal, primal)
        return f0.detach(), jv.detach()
    except (RuntimeError, NotImplementedError):
        notes.append("Euler's identity checked with reverse-mode gradients (one backward per output)")
    ps = {n: p.detach().clone().requires_grad_(p.is_floating_point()) for n, p in params.items()}
    leaves, out = [p for p in ps.values() if p.requires_grad], fn(ps)
    grads = [torch.autograd.grad(o, leaves, retain_graph=True, allow_unused=True) for o in out]
    jv = [sum((g * p).sum() for g, p in zip(gs, leaves) if g is not None) for gs in grads]
    return out.detach(), torch.stack([torch.as_tensor(v, dtype=out.dtype) for v in jv]).detach()


def _head_degree(model, fn, params, cs, rtol, seed, generic):
    """``(degree, estimate)`` of f in ``model.head``'s parameters alone: :func:`numeric_homogeneity` of the
    head on its input, captured once and held fixed; ``(None, None)`` without a head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        return None, None
    captured: list = []
    h = head.register_forward_pre_hook(lambda mod, args: captured.append(args))
    try:
        with torch.no_grad():
            fn(params)
    finally:
        h.remove()
    if not captured or len(captured[0]) != 1:
        return None, None
    res = numeric_homogeneity(head, captured[0][0], cs=cs, rtol=rtol, seed=seed, generic=generic, attribute=False)
    return res.degree, res.degree_estimate


def _attribute(model, fn, base, cs, rtol, gen, notes: list):
    """Name the parameters that break homogeneity (see the module docstring): ``(breaking,
    groups, structural, homogeneous_without_breaking, degree_without_breaking)``."""
    norm: dict[str, tuple[nn.Module, list[str]]] = {}  # module name -> (module, its parameter names)
    for mname, m in model.named_modules():
        pn = [f"{mname}.{n}" if mname else n for n, _ in m.named_parameters(recurse=False)]
        if isinstance(m, NORM_LAYER_TYPES) and pn:
            norm[mname] = (m, pn)
    in_norm = [p for _, pn in norm.values() for p in pn]
    biases = [n for n in base if n.endswith("bias") and n not in in_norm]
    zero_b = {n: torch.zeros_like(base[n]) for n in biases}

    def neutral_fit(keep_bias: str | None = None, keep_norm: str | None = None) -> _Fit:
        ps = {**base, **{n: z for n, z in zero_b.items() if n != keep_bias}}
        hooks = [m.register_forward_hook(lambda mod, args, out: args[0])  # the identity
                 for k, (m, _) in norm.items() if k != keep_norm]
        try:
            return _ray_test(fn, ps, cs, rtol, early_exit=True)
        finally:
            for h in hooks:
                h.remove()

    groups: dict[str, list[str]] = {}
    fit0 = neutral_fit() if norm or biases else None
    if fit0 is not None and fit0.homogeneous:
        for b in biases:
            if not neutral_fit(keep_bias=b).homogeneous:
                groups.setdefault("bias", []).append(b)
        for k, (_, pn) in norm.items():
            if not neutral_fit(keep_norm=k).homogeneous:
                groups.setdefault("normalisation", []).extend(pn)
        what = " and ".join(w for w, v in (("biases set to zero", biases), ("normalisation layers removed", norm))
                            if v)
        notes.append(f"with {what} f is homogeneous of degree {fit0.degree}; each listed parameter breaks "
                     "homogeneity on its own (the others neutralised)")
        if not groups:
            groups["combination"] = sorted(biases + in_norm)
            notes.append("no single bias/normalisation parameter breaks it alone; only their combination does")
        return [p for v in groups.values() for p in v], groups, False, True, fit0.degree
    for n in _separate_euler(fn, base, biases + in_norm, gen):  # structural: the architecture breaks it
        groups.setdefault("normalisation" if n in in_norm else "bias", []).append(n)
    if not groups:
        groups["other"] = _separate_euler(fn, base, [n for n in base if n not in biases + in_norm], gen)
    why = ("even with biases set to zero and normalisation layers removed f is not homogeneous: the architecture "
           "itself breaks homogeneity (e.g. residual sums of branches of different degrees)" if fit0 is not None
           else "the model has no biases or normalisation layers; f is not homogeneous because of its architecture")
    notes.append(f"{why}; listed: the parameters in which f is not even separately homogeneous")
    return [p for v in groups.values() for p in v], groups, True, False if fit0 is not None else None, None


# --- Convenience: build a model by name and check it ---
def default_input_shape(model_name: str) -> tuple[int, ...]:
    """MNIST ``(1, 28, 28)`` for vector and conv models, CIFAR ``(3, 32, 32)`` for ResNets."""
    return (3, 32, 32) if model_name.startswith("resnet") else (1, 28, 28)


#: float64 copies of the parameters the numeric check holds at once (model, scaled copies, generic point,
#: gradients), with headroom: the memory check before building
_COPIES = 8


def check_model(model: str | ModelSpec, *, num_classes: int = 10, input_shape: Sequence[int] | None = None,
                batch: int = 2, seed: int = 0, cs: Sequence[float] = (0.5, 2.0, 3.0),
                symbolic: bool = False, symbolic_method: str = "auto", **options) -> dict:
    """Build ``model`` (a name with :class:`~margin_theory.models.ModelSpec` ``options``, or a spec; seeded),
    check it numerically on ``batch`` random inputs in [0, 1) and return a JSON-ready report; ``symbolic``
    adds the exact check on a tiny instance. A model (built on the ``meta`` device) or batch that cannot fit
    in memory is refused before allocating (a depth whose Lemma-1 degree overflows float64: by ModelSpec)."""
    spec = (model if isinstance(model, ModelSpec) else ModelSpec(model, **options)).check_applicable()
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(spec.name)
    with torch.device("meta"):
        try:
            n = sum(p.numel() for p in spec.build(shape, num_classes).parameters())
        except (RuntimeError, OverflowError) as exc:
            raise ConfigError(f"model {spec.name} cannot be built: {one_line(exc, 200)}") from None
    check_memory(8.0 * _COPIES * n, f"model {spec.name} with {n:,} parameters")
    check_memory(8.0 * _COPIES * batch * math.prod(shape), f"--batch {batch} inputs of shape {tuple(shape)}")
    report: dict[str, Any] = {"model": spec.name}
    if symbolic:
        kw = ({"layers": spec.layers, "hidden": 2} if spec.name == "lowrank" else
              {"conv_bias": spec.conv_bias} if spec.body == "conv" else {})
        if spec.head == "lowrank":
            kw["rank"] = min(spec.rank, 2)
        sym = symbolic_homogeneity(spec.name, method=symbolic_method, seed=seed, **kw).as_dict()
    torch.manual_seed(int(seed))
    net = spec.build(shape, num_classes)
    x = torch.rand((batch,) + shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    t0 = time.perf_counter()
    res = numeric_homogeneity(net, x, cs=cs, seed=seed)
    report.update({**res.as_dict(), "input_shape": list(shape), "batch": batch, "seed": seed,
                   "num_classes": num_classes, "seconds": time.perf_counter() - t0})
    if spec.name == "lowrank":
        report.update({"layers": spec.layers, "lemma1_formula": lemma1_degree(spec.layers),
                       "agrees_with_lemma1": res.degree == lemma1_degree(spec.layers)})
    if spec.head == "lowrank":
        report["rank"] = spec.rank
    if spec.body == "conv":
        report.update({"conv_bias": spec.conv_bias, "conv_channels": spec.conv_channels})
    if symbolic:
        report["symbolic"] = sym
    return report


# --- CLI ---
def _numbers(conv: Callable, expected: str) -> Callable[[str], tuple]:
    """Parse ``"1,28,28"`` (or ``"3x8x8"``) into a tuple; the values are checked where they are used."""
    def parse(s: str) -> tuple:
        try:
            return tuple(conv(p) for p in s.replace("x", ",").split(",") if p.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
    return parse


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m margin_theory.homogeneity",
        description="Check that a model is L-homogeneous in its parameters (SPEC §3, paper Definition 1, "
                    "Lemma 1): estimate L from f(c theta) = c^L f(theta), verify Euler's identity "
                    "<grad f_j, theta> = L f_j, give the head's degree and name the parameters that "
                    "break homogeneity. --symbolic adds an exact sympy derivation on a tiny instance.")
    p.add_argument("--model", required=True, help=describe_model_names())
    p.add_argument("--layers", type=_positive_int, default=1, help="Low-Rank layers n (lowrank only)")
    p.add_argument("--rank", type=_positive_int, default=1, help="rank r of every Low-Rank layer")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=None,
                   help="hidden width(s): relu2 (default 8000), deep lowrank (default 32)")
    p.add_argument("--conv-bias", action=argparse.BooleanOptionalAction, default=True,
                   help="bias of the conv of conv-<head> models (default: on, as the paper's code)")
    p.add_argument("--conv-channels", type=_positive_int, default=1, help="channels of the conv models")
    p.add_argument("--num-classes", type=_positive_int, default=10, help="classes C (default 10)")
    p.add_argument("--input-shape", type=_numbers(int, "a shape like 1,28,28 or 3x8x8"), default=None,
                   help="shape of one input, e.g. 1,28,28 (default) or 3,32,32 (resnet default); "
                        "3,8,8 keeps a resnet fast")
    p.add_argument("--batch", type=_positive_int, default=2, help="number of random inputs (default 2)")
    p.add_argument("--cs", type=_numbers(float, "comma-separated scale factors"), default=(0.5, 2.0, 3.0),
                   help="scale factors c (default 0.5,2,3)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the model, inputs and generic point")
    p.add_argument("--symbolic", action="store_true", help="add the exact sympy check on a tiny instance")
    p.add_argument("--symbolic-method", choices=("auto", "expand", "ray"), default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _human(r: dict) -> str:
    desc = r["model"]
    if "layers" in r:
        desc += f" ({r['layers']} layer{'s' if r['layers'] > 1 else ''}, rank {r['rank']})"
    if "conv_bias" in r:
        desc += f" (conv bias {'on' if r['conv_bias'] else 'off'}, {r['conv_channels']} channel(s))"
    per_c = ", ".join(f"c={c}: {'n/a' if e is None else f'{e:.6f}'}" for c, e in r["per_c_estimates"].items())
    lines = [f"model: {desc}; {r['n_parameters']:,} parameters; {r['batch']} random inputs of shape "
             f"{tuple(r['input_shape'])}; {r['dtype']}, eval mode",
             f"homogeneous: yes, degree L = {r['degree']}  (f(c theta) = c^L f(theta); estimates {per_c}; "
             f"max rel. error {r['max_rel_err']:.2e})" if r["homogeneous"] else
             "homogeneous: NO" + (f"  (log-ratio estimates {per_c})" if r["degree_estimate"] is not None else "")]
    if "lemma1_formula" in r:
        lines.append(f"Lemma 1: 2^(n+1) - 2 = {r['lemma1_formula']}  "
                     f"[{'agrees' if r['agrees_with_lemma1'] else 'DISAGREES'}]")
    if r["euler_ok"]:
        lines.append(f"Euler's identity <grad f_j, theta> = L f_j: holds (max rel. error {r['euler_max_rel_err']:.2e})")
    elif r["euler_degree_fit"] is not None:
        lines.append(f"Euler's identity: fails (best single L = {r['euler_degree_fit']:.4g}, "
                     f"max rel. error {r['euler_max_rel_err']:.3g})")
    agree = {None: "", True: "  [agrees]", False: "  [DISAGREES with the measurement]"}[r["agrees_with_declared"]]
    deg = {k: "none (not homogeneous)" if r[k] is None else r[k] for k in ("head_degree", "declared_degree",
                                                                           "declared_head_degree")}
    lines += [f"head degree (head parameters scaled alone, features fixed): {deg['head_degree']}",
              f"declared by the model: degree {deg['declared_degree']}, head degree "
              f"{deg['declared_head_degree']}{agree}"]
    if not r["breaking_parameters"]:
        lines.append("parameters breaking homogeneity: none")
    else:
        lines.append(f"parameters breaking homogeneity ({len(r['breaking_parameters'])}):")
        lines += [f"  {g}: {', '.join(names[:8])}" + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
                  for g, names in r["breaking_groups"].items()]
        if r["structural"]:
            lines.append("  structural: yes (not homogeneous even without biases and normalisation layers)")
        elif r["degree_without_breaking"] is not None:
            lines.append(f"  without them f is homogeneous of degree {r['degree_without_breaking']}")
    lines += [f"note: {n}" for n in r["notes"]]
    if "symbolic" in r:
        s = r["symbolic"]
        breaking = f"; breaking: {', '.join(s['breaking_parameters'])}" if s["breaking_parameters"] else ""
        verdict = (f"homogeneous, L = {s['degree']}, Euler {'holds' if s['euler_ok'] else 'FAILS'}"
                   if s["homogeneous"] else f"NOT homogeneous (c-degrees {s['degrees']}{breaking})")
        lines.append(f"symbolic ({s['method']}, sizes {s['sizes']}, {s['n_parameters']} parameters, "
                     f"{s['expression_size']} monomials): {verdict}  [{s['seconds']:.2f} s]")
    return "\n".join(lines)


@cli_entry("python -m margin_theory.homogeneity")
def main(argv=None) -> int:
    """Check a model's homogeneity (SPEC §3); one line + exit 2 on bad input."""
    opts = vars(build_parser().parse_args(argv))
    as_json = opts.pop("json")
    report = check_model(opts.pop("model"), **opts)  # every other flag is a keyword of check_model
    if as_json:
        print_json(report)
    else:
        print(_human(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
