r"""Lemma 2 and the Theorem 2 monitors: does the average margin grow? (SPEC §5)

Evaluated on a seeded subset :math:`S` of the training set (default 512 points) at one instant
:math:`\theta`, in float64 on a CPU copy of the model. With
:math:`q_n = f_{y_n}(x_n) - f_{j_n}(x_n)`, runner-up :math:`j_n = \arg\max_{j\ne y_n} f_j(x_n)`:

* :math:`\delta_n = f_{j_n}(x_n) - \max_{j\notin\{y_n, j_n\}} f_j(x_n)` (``inf`` when C = 2),
  :math:`\delta = \min_n \delta_n`;
* :math:`h_n = \nabla_\theta q_n`, :math:`g_n = P h_n`, :math:`P = I - \theta\theta^\top/\|\theta\|^2`,
  :math:`\Gamma = [g_1 \dots g_N]`; :math:`\sigma_{\max}, \sigma_{\min}` its extreme singular
  values (from the N x N Gram matrix :math:`\Gamma^\top\Gamma`, never from the P x N matrix);
* :math:`\rho = \|\Gamma 1\| / (\sqrt N \sigma_{\max}) \in [0, 1]`,
  :math:`\kappa = \sigma_{\max}/\sigma_{\min}` when N <= P and rank N (else ``None``);
* :math:`p_{nj} = \mathrm{softmax}_j f(x_n)`, :math:`w_n = p_{n j_n}`, :math:`\bar w = \mathrm{mean}\,w`,
  :math:`cv = \|w - \bar w 1\| / (\sqrt N \bar w)`;
* :math:`B = \max_{n,j}\|\nabla_\theta f_j(x_n)\|`,
  :math:`\varepsilon = 2 (C-2) e^{-\delta} B \sqrt N / \sigma_{\max}` (0 when C = 2);
* (A1) :math:`\delta > 0`: every runner-up set :math:`\{f_j(x_n): j\ne y_n\}` is strictly separated
  (a smaller :math:`\delta` only makes :math:`\varepsilon` larger); (A2) :math:`B < \infty`;
  (A3) :math:`\rho > cv + \varepsilon`.

**Lemma 2** (exact, from Euler's identity :math:`\langle h_n, \theta\rangle = L q_n`):
:math:`\frac{d\bar\gamma}{dt} = \langle \Gamma 1, \dot\theta\rangle / (N \|\theta\|^L)`, here with
:math:`\dot\theta = -\nabla_\theta \frac1N\sum_{n\in S} \mathrm{CE}_n` (gradient flow of the
subset's mean cross-entropy). :func:`margin_velocity` computes it exactly,
:func:`finite_difference_velocity` by a central difference along :math:`\dot\theta`.

**Theorem 2** (proved in ``proofs/theorem2_margin.md``): always

.. math:: \frac{d\bar\gamma}{dt} \ \ge\ \frac{\bar w\,\rho\,\sigma_{\max}^2\,(\rho - cv - \varepsilon)}{N\,\|\theta\|^L}
          \quad (=\ \text{``lower_bound''}),

so (A1)-(A3) imply :math:`d\bar\gamma/dt > 0`; they are *sufficient, not necessary*. Normalisation (SPEC
§2): :math:`\theta` = all parameters of a homogeneous model, L its degree; ``normalisation="head"``
(biases, BatchNorm): the head's parameters on fixed features, L the head's degree, the velocity of the
flow in the head's parameters alone (the ``note`` says so).

Per-sample gradients (SPEC §9): closed forms for the three heads (and ``relu2``'s output layer)
on fixed features :math:`\phi`,

* linear :math:`f_i = w_i\cdot\phi (+ b_i)`: :math:`\nabla_{w_i} f_i = \phi`;
* quadratic :math:`f_i = \phi^\top W_i\phi`: :math:`\nabla_{W_i} f_i = \phi\phi^\top`;
* lowrank :math:`f_i = \sum_k (a_{ik}\cdot\phi)^2`: :math:`\nabla_{a_{ik}} f_i = 2 (a_{ik}\cdot\phi)\phi`,

so the Gram matrix :math:`\langle h_n, h_m\rangle` is an N x N kernel; anything else uses ``torch.func``
(``vmap(jacrev)``), chunked. :func:`per_sample_grads_loop` is the slow reference (``--bench``).
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from ._util import ArgumentParser, ConfigError, cli_entry, positive_int, print_json, to_jsonable
from .margins import (NotHomogeneousError, get_normalisation, margin_values, norm_power, runner_up,
                      separation_gaps)
from .models import LinearHead, LowRankHead, QuadraticHead, ReLU2Head

__all__ = [
    "Theorem2Report", "GradStats", "theorem2_report", "margin_velocity",
    "finite_difference_velocity", "gradient_statistics", "per_sample_grads",
    "per_sample_grads_loop", "select_subset", "separation_gaps", "bench_monitors",
    "NotHomogeneousError", "main",
]

#: memory budget (bytes) for the per-sample Jacobian chunks of the torch.func path
DEFAULT_MEMORY_BUDGET = 256 * 2**20
METHODS = ("auto", "closed", "func", "loop")
#: the heads with closed-form per-sample gradients, and which form
_CLOSED_FORMS = ((LowRankHead, "lowrank"), (QuadraticHead, "quadratic"), ((LinearHead, ReLU2Head), "linear"))


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# --- The problem: theta, the function f(theta; u), the inputs u ---
@dataclass
class _Problem:
    """``f(theta; u) = functional_call(module, theta, u)`` on inputs ``u`` (N, ...): X itself, or the fixed
    features phi (head normalisation, or features without parameters)."""

    module: nn.Module
    inputs: torch.Tensor
    y: torch.Tensor
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    kind: str          # "full" | "head"
    degree: int
    head_type: str | None  # closed form available: "linear" | "quadratic" | "lowrank" | None

    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def P(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def theta_flat(self) -> torch.Tensor:
        return _flat(self.params.values())

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split([p.numel() for p in self.params.values()])
        return {n: t.view_as(p) for (n, p), t in zip(self.params.items(), parts)}

    def logits(self, params: dict[str, torch.Tensor] | None = None, inputs: torch.Tensor | None = None):
        p = self.params if params is None else params
        return functional_call(self.module, {**self.buffers, **p}, (self.inputs if inputs is None else inputs,))

    def runner_ups(self) -> torch.Tensor:
        """:math:`j_n` at the current theta."""
        with torch.no_grad():
            return runner_up(self.logits(), self.y)


def _prepare(model: nn.Module, X: torch.Tensor, y: torch.Tensor, normalisation: str,
             dtype: torch.dtype, degree: int | None = None) -> _Problem:
    if X.shape[0] != y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ConfigError("cannot evaluate the Theorem 2 monitors on an empty data set")
    spec = get_normalisation(model, normalisation, degree)  # raises NotHomogeneousError for 'full'
    m = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval().requires_grad_(False)
    X, y = X.detach().to(device="cpu", dtype=dtype), y.detach().to(device="cpu", dtype=torch.long)
    if y.min() < 0:
        raise ConfigError("labels must be non-negative class indices")
    module, inputs = m, X
    if hasattr(m, "head") and hasattr(m, "features") and (
            spec.kind == "head" or not any(True for _ in m.features.parameters())):
        with torch.no_grad():
            module, inputs = m.head, m.features(X).flatten(1)
    params = {n: p.detach() for n, p in module.named_parameters()}
    C = getattr(module, "num_classes", None)
    if C is not None and int(y.max()) >= C:
        raise ConfigError(f"label {int(y.max())} out of range for a {C}-class model")
    head_type = next((t for cls, t in _CLOSED_FORMS if isinstance(module, cls)), None)
    if isinstance(module, QuadraticHead) and module.linear is not None:
        head_type = None   # (x^T W x + w.x)/2: not the bias-free form below; torch.func is exact
    return _Problem(module, inputs, y, params, {n: b.detach() for n, b in module.named_buffers()}, spec.kind,
                    int(spec.degree), head_type)


def select_subset(n: int, subset: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of the seeded subset S: all ``n`` points (in order) if ``n <= subset``, else
    ``subset`` points drawn without replacement by ``torch.randperm`` with ``seed``, sorted."""
    if subset is None or subset >= n:
        return torch.arange(n)
    if subset < 1:
        raise ConfigError(f"subset must be >= 1, got {subset}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:subset].sort().values


# --- Per-sample gradient statistics ---
@dataclass
class GradStats:
    r"""What the monitors need from the per-sample gradients (never the N x C x P Jacobian):
    ``gram[n, m] = <h_n, h_m>`` (unprojected), ``h_theta[n] = <h_n, theta>``,
    ``fnorm[n, j] = ||grad_theta f_j(x_n)||``; ``method`` says how they were computed."""

    gram: torch.Tensor
    h_theta: torch.Tensor
    fnorm: torch.Tensor
    method: str


def _closed_form_stats(prob: _Problem, j: torch.Tensor) -> GradStats:
    """The closed forms of the module docstring on the features phi, with ``E[n] = e_{y_n} - e_{j_n}``
    so that ``h_n = sum_i E[n, i] grad f_i(x_n)``; a bias is the weight of a constant feature 1."""
    m, t, phi = prob.module, prob.head_type, prob.inputs
    if t is None:
        raise ConfigError(f"no closed form for {type(m).__name__}; use method='func'")
    pre = "linear." if isinstance(m, ReLU2Head) else ""
    W, bias = prob.params[pre + "weight"], prob.params.get(pre + "bias")
    if t == "linear" and bias is not None:
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)
        W = torch.cat([W, bias.view(-1, 1)], dim=1)
    C = W.shape[0]
    E = F.one_hot(prob.y, C).to(phi.dtype) - F.one_hot(j, C).to(phi.dtype)
    K = phi @ phi.T
    if t == "linear":       # f_i = <w_i, phi>: <grad_n, grad_m> = K
        return GradStats(K * (E @ E.T), (E * (phi @ W.T)).sum(1), phi.norm(dim=1, keepdim=True).repeat(1, C),
                         "closed")
    if t == "quadratic":    # f_i = <W_i, phi phi^T>: <grad_n, grad_m> = K^2
        f = torch.einsum("nd,cde,ne->nc", phi, W, phi)
        return GradStats(K.square() * (E @ E.T), (E * f).sum(1), phi.square().sum(1, keepdim=True).repeat(1, C),
                         "closed")
    Z = torch.einsum("crd,nd->ncr", W, phi)                  # a_ik . phi_n, W = A of shape (C, r, d)
    U = (E.unsqueeze(-1) * Z).reshape(phi.shape[0], -1)      # (N, C r)
    return GradStats(4.0 * K * (U @ U.T), 2.0 * (E * Z.square().sum(-1)).sum(1),
                     2.0 * Z.norm(dim=-1) * phi.norm(dim=1, keepdim=True), "closed")


def _h_rows(prob: _Problem, j: torch.Tensor, budget: int, rows: slice | None = None):
    """``(H, fnorm)`` of the samples in ``rows`` (all by default), ``H[n] = h_n``, ``fnorm[n, i] = ||grad f_i(x_n)||``,
    by ``vmap(jacrev)`` in chunks whose Jacobian (n x C x P, plus temporaries) stays within ``budget`` bytes."""
    jac = vmap(jacrev(lambda p, u: prob.logits(p, u.unsqueeze(0))[0]), in_dims=(None, 0))
    rows = slice(0, prob.inputs.shape[0]) if rows is None else rows
    with torch.no_grad():
        C = prob.logits(inputs=prob.inputs[:1]).shape[1]
    chunk = max(1, budget // max(C * prob.P * prob.inputs.element_size() * 2, 1))  # Jacobian + temporaries
    Hs, fnorms = [], []
    for s in range(rows.start, rows.stop, chunk):
        sl = slice(s, min(rows.stop, s + chunk))
        J = jac(prob.params, prob.inputs[sl])                      # name -> (n, C, *shape)
        n = sl.stop - sl.start
        ar, ys, js = torch.arange(n), prob.y[sl], j[sl]
        Hs.append(torch.cat([(J[k][ar, ys] - J[k][ar, js]).reshape(n, -1) for k in prob.names], dim=1))
        fnorms.append(sum(torch.linalg.vector_norm(J[k].reshape(n, C, -1), dim=-1).square() for k in prob.names).sqrt())
        del J
    return torch.cat(Hs), torch.cat(fnorms)


def _func_stats(prob: _Problem, j: torch.Tensor, budget: int = DEFAULT_MEMORY_BUDGET) -> GradStats:
    """torch.func path: H = [h_1 .. h_N]^T (N x P) in blocks of at most ``4 * budget`` bytes, the Gram matrix
    accumulated block pair by block pair (later blocks recomputed: bounded memory, more time)."""
    N, theta = prob.inputs.shape[0], prob.theta_flat()
    per_block = max(1, (4 * budget) // max(prob.P * prob.inputs.element_size(), 1))
    blocks = [slice(s, min(N, s + per_block)) for s in range(0, N, per_block)]
    gram = torch.empty(N, N, dtype=prob.inputs.dtype)
    h_theta = torch.empty(N, dtype=prob.inputs.dtype)
    fnorms = []
    for a, sa in enumerate(blocks):
        Ha, fn = _h_rows(prob, j, budget, sa)
        fnorms.append(fn)
        h_theta[sa], gram[sa, sa] = Ha @ theta, Ha @ Ha.T
        for sb in blocks[a + 1:]:
            blk = Ha @ _h_rows(prob, j, budget, sb)[0].T
            gram[sa, sb], gram[sb, sa] = blk, blk.T
    return GradStats(gram, h_theta, torch.cat(fnorms), "func")


def per_sample_grads_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                          normalisation: str = "auto", dtype: torch.dtype = torch.float64,
                          degree: int | None = None):
    r"""SLOW REFERENCE (benchmarks and tests only), a backward pass per (sample, class): ``(H, fnorm)``,
    ``H[n] = grad_theta q_n`` (N x P, runner-up at the current theta), ``fnorm[n, j] =
    ||grad_theta f_j(x_n)||`` (N x C), theta as the normalisation chooses (SPEC §2)."""
    prob = _prepare(model, X, y, normalisation, dtype, degree)
    return _loop_grads(prob, prob.runner_ups())


def _loop_grads(prob: _Problem, j: torch.Tensor):
    params = {n: p.clone().requires_grad_(True) for n, p in prob.params.items()}
    rows, norms = [], []
    for n in range(prob.inputs.shape[0]):
        out = prob.logits(params, prob.inputs[n:n + 1])[0]
        gs = [_flat(torch.autograd.grad(out[i], list(params.values()), retain_graph=i < len(out) - 1))
              for i in range(len(out))]
        rows.append(gs[int(prob.y[n])] - gs[int(j[n])])
        norms.append(torch.stack([g.norm() for g in gs]))
    return torch.stack(rows), torch.stack(norms)


def per_sample_grads(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                     normalisation: str = "auto", dtype: torch.dtype = torch.float64,
                     degree: int | None = None):
    """``(H, fnorm)`` as :func:`per_sample_grads_loop`, but with ``torch.func``
    (``vmap(jacrev)``) in one vectorised pass. Holds the N x P matrix H: for small models."""
    prob = _prepare(model, X, y, normalisation, dtype, degree)
    return _h_rows(prob, prob.runner_ups(), DEFAULT_MEMORY_BUDGET)


def _stats(prob: _Problem, j: torch.Tensor, method: str, budget: int) -> GradStats:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        method = "closed" if prob.head_type is not None else "func"
    if method == "loop":
        H, fnorm = _loop_grads(prob, j)
        return GradStats(H @ H.T, H @ prob.theta_flat(), fnorm, "loop")
    return _closed_form_stats(prob, j) if method == "closed" else _func_stats(prob, j, budget)


def gradient_statistics(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                        normalisation: str = "auto", method: str = "auto",
                        dtype: torch.dtype = torch.float64, degree: int | None = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET) -> GradStats:
    """Gram matrix of the h_n, <h_n, theta> and ||grad f_j(x_n)|| on all of (X, y); ``method``: ``closed``
    (the heads' closed forms), ``func`` (torch.func), ``loop`` (slow reference), ``auto`` (closed if any)."""
    prob = _prepare(model, X, y, normalisation, dtype, degree)
    return _stats(prob, prob.runner_ups(), method, memory_budget)


# --- Lemma 2: the velocity of the average margin ---
def _flow_vectors(prob: _Problem, j: torch.Tensor):
    r"""``(v, s)``: :math:`v = \dot\theta = -\nabla \frac1N\sum_n \mathrm{CE}_n` and
    :math:`s = \sum_n h_n = \nabla\sum_n q_n` (runner-ups fixed), flat P-vectors."""
    params = {n: p.clone().requires_grad_(True) for n, p in prob.params.items()}
    with torch.enable_grad():
        logits = prob.logits(params)
        ar = torch.arange(logits.shape[0])
        gl = torch.autograd.grad(F.cross_entropy(logits, prob.y), list(params.values()), retain_graph=True)
        gq = torch.autograd.grad((logits[ar, prob.y] - logits[ar, j]).sum(), list(params.values()))
    return -_flat(gl), _flat(gq)


def _velocity(prob: _Problem, j: torch.Tensor) -> tuple[float, float]:
    """Lemma 2, and ``||Gamma 1|| ||theta'|| / (N ||theta||^L)``, the Cauchy-Schwarz bound on
    |velocity| (the natural scale for comparing velocities)."""
    theta, (v, s) = prob.theta_flat(), _flow_vectors(prob, j)
    tn2 = float(theta @ theta)
    g1 = s - (float(s @ theta) / tn2) * theta          # Gamma 1 = P s
    denom = prob.inputs.shape[0] * norm_power(math.sqrt(tn2), prob.degree)
    return float(g1 @ v) / denom, float(g1.norm()) * float(v.norm()) / denom


def margin_velocity(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                    normalisation: str = "auto", dtype: torch.dtype = torch.float64,
                    degree: int | None = None) -> float:
    r"""Lemma 2, exact: :math:`d\bar\gamma/dt = \langle\Gamma 1, \dot\theta\rangle/(N\|\theta\|^L)`
    with :math:`\dot\theta = -\nabla_\theta` (mean cross-entropy over all of (X, y)), by two backward
    passes (the loss, :math:`\sum_n q_n`); SPEC §5. Head normalisation: the flow in the head alone."""
    prob = _prepare(model, X, y, normalisation, dtype, degree)
    return _velocity(prob, prob.runner_ups())[0]


def finite_difference_velocity(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                               h: float | None = None, normalisation: str = "auto",
                               dtype: torch.dtype = torch.float64, degree: int | None = None,
                               check_runner_up: bool = True) -> float:
    r"""Central finite difference :math:`[\bar\gamma(\theta + h v) - \bar\gamma(\theta - h v)] / (2h)`,
    :math:`v = -\nabla_\theta` (mean CE over (X, y)), :math:`\bar\gamma` recomputed at both points; default
    ``h = 1e-4 ||theta|| / ||v||``. Agrees with :func:`margin_velocity` unless a runner-up changes within
    the step (:class:`ConfigError` when ``check_runner_up``)."""
    prob = _prepare(model, X, y, normalisation, dtype, degree)
    j = prob.runner_ups()
    (v, _), theta = _flow_vectors(prob, j), prob.theta_flat()
    if h is None:
        if float(v.norm()) == 0.0:
            return 0.0
        h = 1e-4 * float(theta.norm()) / float(v.norm())
    if not h > 0:
        raise ConfigError(f"finite-difference step must be > 0, got {h}")

    def gbar(flat):
        with torch.no_grad():
            logits = prob.logits(prob.unflatten(flat))
        if check_runner_up and not torch.equal(runner_up(logits, prob.y), j):
            raise ConfigError(f"a runner-up class changes within the finite-difference step h = {h:.3g} "
                              "(near tie: gamma_bar is not differentiable there); use a smaller h")
        return float(margin_values(logits, prob.y).mean()) / norm_power(flat.norm(), prob.degree)

    return (gbar(theta + h * v) - gbar(theta - h * v)) / (2.0 * h)


# --- Theorem 2 report ---
@dataclass
class Theorem2Report:
    """The Theorem 2 monitors on a seeded subset S at one instant (SPEC §5); ``as_dict()`` is JSON-able."""

    n_subset: int
    subset_seed: int
    N: int
    P: int
    C: int
    gamma_bar: float
    gamma_min: float
    theta_norm: float
    delta_min: float
    B: float
    sigma_max: float
    sigma_min: float | None
    rank: int
    rho: float
    kappa: float | None
    cv: float
    w_bar: float
    eps: float
    A1: bool
    A2: bool
    A3: bool
    velocity: float
    lower_bound: float
    theorem_applies: bool
    normalisation: str
    degree: int
    method: str
    note: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return to_jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})

    def verdict(self) -> str:
        """``grows`` (A1-A3 hold: Theorem 2 proves d gamma_bar/dt > 0) or ``no-claim`` (the theorem says nothing)."""
        return "grows" if self.theorem_applies else "no-claim"


def _note(r: Theorem2Report, n_total: int) -> str:
    fails = [(a, why) for a, ok, why in (
        ("A1", r.A1, f"runner-up not strictly separated, delta = {r.delta_min:.3g}"), ("A2", r.A2, "B is not finite"),
        ("A3", r.A3, f"rho = {r.rho:.3g} <= cv + eps = {r.cv:.3g} + {r.eps:.3g}")) if not ok]
    parts = [f"A1-A3 hold on the subset: Theorem 2 proves d gamma_bar/dt >= {r.lower_bound:.3g} > 0 "
             f"(exact Lemma-2 velocity {r.velocity:.3g})." if r.theorem_applies else
             f"{' and '.join(a for a, _ in fails)} fail{'s' if len(fails) == 1 else ''} "
             f"({'; '.join(why for _, why in fails)}): "
             "the theorem says nothing here - its conditions are sufficient, not necessary - the margin may still "
             f"grow (exact Lemma-2 velocity {r.velocity:.3g}: "
             f"{'the margin still grows here' if r.velocity > 0 else 'and here it does not grow'})."]
    if r.normalisation == "head":
        parts.append("Normalised by the head's parameters only (features fixed, treated as inputs): the "
                     "velocity is that of the gradient flow in the head's parameters alone; Lemma 2 does "
                     "not give the full velocity of the model's flow in all its parameters (moving features "
                     "add terms it does not contain).")
    parts.append(f"Evaluated on a seeded subset of {r.n_subset} of {n_total} points (seed "
                 f"{r.subset_seed}) for the gradient flow of its mean cross-entropy.")
    return " ".join(parts)


def theorem2_report(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, subset: int | None = 512,
                    seed: int = 0, normalisation: str = "auto", dtype: torch.dtype = torch.float64,
                    method: str = "auto", degree: int | None = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET, check_degree: bool = True) -> Theorem2Report:
    r"""Lemma 2 and Theorem 2's quantities and assumptions (SPEC §5) on the seeded subset S of ``subset``
    points of (X, y) (:func:`select_subset`), in ``dtype`` on a CPU copy of ``model`` (a Classifier or any
    module with ``degree``). ``normalisation``: ``"auto"`` (full if homogeneous, else head), ``"full"``
    (:class:`NotHomogeneousError` if not homogeneous) or ``"head"``; ``method`` as in
    :func:`gradient_statistics`. ``degree``: L for a module that declares none; with ``check_degree`` the
    numeric checker first verifies it on a few points of S (:class:`NotHomogeneousError` if contradicted).
    ``lower_bound`` :math:`= \bar w\rho\sigma_{\max}^2(\rho - cv - \varepsilon)/(N\|\theta\|^L)` never
    exceeds ``velocity`` (proofs/theorem2_margin.md)."""
    t0 = time.perf_counter()
    n_total = int(X.shape[0])
    if y.shape[0] != n_total:
        raise ConfigError(f"X has {n_total} samples but y has {y.shape[0]}")
    idx = select_subset(n_total, subset, seed)
    if degree is not None and check_degree and normalisation != "head":
        from .foreign import verify_degree

        verify_degree(model, X[idx[:8].to(X.device)], degree)
    prob = _prepare(model, X[idx.to(X.device)], y[idx.to(y.device)], normalisation, dtype, degree)
    N, P, theta = prob.inputs.shape[0], prob.P, prob.theta_flat()
    with torch.no_grad():
        logits = prob.logits()
    if not bool(torch.isfinite(logits).all()) or not bool(torch.isfinite(theta).all()):
        raise ConfigError("the model's parameters or outputs are not finite (diverged training?); "
                          "the Theorem 2 monitors need a finite model")
    C, j = logits.shape[1], runner_up(logits, prob.y)
    tnorm = float(theta.norm())
    normL = norm_power(tnorm, prob.degree)
    gamma = margin_values(logits, prob.y) / normL
    delta_min = float(separation_gaps(logits, prob.y).min())
    w = torch.softmax(logits, dim=1)[torch.arange(N), j]
    w_bar = float(w.mean())
    cv = float((w - w_bar).norm()) / (math.sqrt(N) * w_bar) if w_bar > 0 else math.inf
    st = _stats(prob, j, method, memory_budget)
    B = float(st.fnorm.max())
    # Gamma^T Gamma = H H^T - (H theta)(H theta)^T / ||theta||^2   (P = I - theta theta^T/||theta||^2)
    G = st.gram - torch.outer(st.h_theta, st.h_theta) / (tnorm * tnorm)
    G = 0.5 * (G + G.T)
    if not bool(torch.isfinite(G).all()):
        raise ConfigError("non-finite per-sample gradients (diverged parameters?); "
                          "the Theorem 2 monitors need a finite model")
    # ascending eigenvalues on ONE intra-op thread (multi-threaded LAPACK on a busy 2-core machine took
    # 3-7 s for 512 x 512, one thread ~0.03 s); non-convergence falls back to singular values (G is PSD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evals = torch.linalg.eigvalsh(G)
    except RuntimeError:
        evals = torch.linalg.svdvals(G).flip(0)
    finally:
        torch.set_num_threads(threads)
    lam_max = max(float(evals[-1]), 0.0)
    sigma_max = math.sqrt(lam_max)
    rank = int((evals > lam_max * N * torch.finfo(G.dtype).eps * 10).sum()) if lam_max > 0 else 0
    sigma_min = math.sqrt(max(float(evals[0]), 0.0)) if N <= P else None
    kappa = sigma_max / sigma_min if (N <= P and rank == N and sigma_min) else None
    g1 = math.sqrt(max(float(G.sum()), 0.0))          # ||Gamma 1||
    if sigma_max > 0:
        rho = min(g1 / (math.sqrt(N) * sigma_max), 1.0)  # in [0, 1] up to rounding
        eps = 2.0 * (C - 2) * (0.0 if C == 2 else math.exp(-delta_min)) * B * math.sqrt(N) / sigma_max
        lower = w_bar * rho * sigma_max ** 2 * (rho - cv - eps) / (N * normL) if math.isfinite(eps) else -math.inf
    else:  # Gamma = 0: every g_n vanishes, the velocity is exactly 0
        rho, eps, lower = math.nan, math.inf, 0.0
    velocity, vscale = _velocity(prob, j)
    A1, A2, A3 = bool(delta_min > 0), bool(math.isfinite(B)), bool(sigma_max > 0 and rho > cv + eps)
    rep = Theorem2Report(
        n_subset=N, subset_seed=int(seed), N=N, P=P, C=C, gamma_bar=float(gamma.mean()),
        gamma_min=float(gamma.min()), theta_norm=tnorm, delta_min=delta_min, B=B, sigma_max=sigma_max,
        sigma_min=sigma_min, rank=rank, rho=rho, kappa=kappa, cv=cv, w_bar=w_bar, eps=eps, A1=A1, A2=A2,
        A3=A3, velocity=velocity, lower_bound=lower, theorem_applies=A1 and A2 and A3, normalisation=prob.kind,
        degree=prob.degree, method=st.method, note="",
        extra={"indices": idx, "norm_Gamma1": g1, "eigenvalues": evals, "velocity_scale": vscale})
    rep.note, rep.seconds = _note(rep, n_total), time.perf_counter() - t0
    return rep


# --- Benchmark ---
def bench_monitors(n: int = 512, rank: int = 8, *, data: str = "random", seed: int = 0,
                   loop: bool = True) -> dict[str, Any]:
    """Time the Theorem 2 monitors on MNIST shapes (lowrank rank ``rank``, d = 784, C = 10,
    ``n`` samples) by closed form, torch.func, and the slow loop of per-sample backward
    passes, all in one run; returns times, ratios and the agreement of the three."""
    from .models import build_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X, y, src = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "random"
    if data == "mnist-5k":
        try:
            from .data import load_dataset

            ds = load_dataset("mnist-5k", seed=seed)
            X, y, src = ds.X_train[:n].reshape(-1, 1, 28, 28).to(torch.float32), ds.y_train[:n].long(), data
        except Exception as exc:  # data missing or different: fall back, say so
            print(f"(mnist-5k unavailable: {exc}; using random data)", file=sys.stderr)     # --json: stdout clean
    model = build_model("lowrank", (1, 28, 28), 10, rank=rank)
    out: dict[str, Any] = {"n": int(X.shape[0]), "rank": rank, "d": 784, "C": 10, "data": src,
                           "P": sum(p.numel() for p in model.parameters()),
                           "torch_threads": torch.get_num_threads()}
    methods = ("closed", "func") + (("loop",) if loop else ())
    for method in methods:   # warm-up (lazy initialisation of torch / functorch), not timed
        theorem2_report(model, X[:4], y[:4], subset=4, method=method)
    reports = {}
    for method in methods:
        t = time.perf_counter()
        reports[method] = theorem2_report(model, X, y, subset=n, method=method)
        out[f"seconds_{method}"] = time.perf_counter() - t
    if loop:
        out["ratio_loop_over_closed"] = out["seconds_loop"] / out["seconds_closed"]
        out["ratio_loop_over_func"] = out["seconds_loop"] / out["seconds_func"]
    ref = reports["closed"]
    out["max_rel_diff"] = {
        m: max(abs(getattr(r, k) - getattr(ref, k)) / max(abs(getattr(ref, k)), 1e-300)
               for k in ("sigma_max", "rho", "B", "velocity"))
        for m, r in reports.items() if m != "closed"}
    out["report"] = ref.as_dict()
    return out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m margin_theory.assumptions",
                       description="Theorem 2 monitors (SPEC §5). --bench times them on MNIST shapes "
                                   "against a Python loop of per-sample backward passes.")
    p.add_argument("--bench", action="store_true", help="run the monitor benchmark")
    p.add_argument("--n", type=positive_int, default=512, help="samples (default 512)")
    p.add_argument("--rank", type=positive_int, default=8, help="lowrank rank (default 8)")
    p.add_argument("--data", choices=("random", "mnist-5k"), default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-loop", action="store_true", help="skip the slow loop reference")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads for the benchmark (default: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


@cli_entry("python -m margin_theory.assumptions")
def main(argv=None) -> int:
    """Benchmark the Theorem 2 monitors (``--bench``)."""
    args = build_parser().parse_args(argv)
    if not args.bench:
        raise ConfigError("nothing to do: pass --bench (checkpoints are checked by python -m margin_theory.check)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = bench_monitors(args.n, args.rank, data=args.data, seed=args.seed, loop=not args.no_loop)
    if args.json:
        print_json(res)
        return 0
    print(f"Theorem 2 monitors, lowrank rank {res['rank']} on MNIST shapes (d=784, C=10, P={res['P']}), "
          f"N={res['n']} {res['data']} samples, float64 CPU, {res['torch_threads']} threads\n"
          f"  closed form      : {res['seconds_closed']:8.3f} s\n  torch.func vmap  : {res['seconds_func']:8.3f} s")
    if "seconds_loop" in res:
        print(f"  loop (reference) : {res['seconds_loop']:8.3f} s   ({res['n'] * 10} backward passes)\n"
              f"  speed-up: loop / closed = {res['ratio_loop_over_closed']:.1f}x, "
              f"loop / torch.func = {res['ratio_loop_over_func']:.1f}x")
    for m, d in res["max_rel_diff"].items():
        print(f"  max relative difference {m} vs closed (sigma_max, rho, B, velocity): {d:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
