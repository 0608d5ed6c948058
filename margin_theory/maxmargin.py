r"""The max-margin limits that gradient descent heads for, solved exactly (beyond the paper).

On separable data gradient descent on the cross-entropy converges in *direction* to a max-margin
solution (Soudry et al. 2018; Lyu & Li 2020: a KKT point, for homogeneous models). The optima are
solved with cvxpy (Clarabel, SCS as fallback); the reductions are proved in ``proofs/maxmargin.md``
and checked by ``proofs/check_maxmargin.py``. Data ``x_n`` in R^d, labels ``y_n``, C classes, pairs
``(n, j)``, ``j != y_n``:

* ``linear`` head, :math:`f_i = w_i\cdot x` (L = 1, :math:`\gamma = q/\|W\|_F`): the multiclass
  hard-margin SVM :math:`\min \tfrac12\|W\|_F^2` s.t. :math:`(w_{y_n} - w_j)\cdot x_n \ge 1`.
* ``quadratic`` head, :math:`f_i = x^\top W_i x = \langle W_i, x x^\top\rangle` (L = 1,
  :math:`\gamma = q/\|V\|_F`, :math:`W = \mathrm{sym}(V)`): the same SVM on the features
  :math:`x x^\top` (kernel :math:`(x\cdot x')^2`), primal over symmetric :math:`W_i` (scaled
  half-vectorisation ``svec``, :math:`\langle \mathrm{svec}A, \mathrm{svec}B\rangle = \langle A, B\rangle_F`)
  or dual :math:`\max \sum\alpha - \tfrac12\sum_i c_i^\top K c_i`,
  :math:`c_{ni} = [i = y_n]\sum_j\alpha_{nj} - \alpha_{ni}`, :math:`K = (X X^\top)^{\circ 2}`,
  whichever has fewer variables.
* ``lowrank`` head, :math:`W_i = A_i^\top A_i`, :math:`\|\theta\|^2 = \sum_i \mathrm{tr} W_i`
  (L = 2): the convex relaxation (rank dropped, an SDP) :math:`\min \sum_i \mathrm{tr} W_i` s.t.
  :math:`x_n^\top (W_{y_n} - W_j) x_n \ge 1`, :math:`W_i \succeq 0`; its :math:`\gamma^\star` bounds every
  rank-r model's :math:`\gamma_{\min}`, attained once :math:`r \ge \max_i \mathrm{rank} W_i^\star` (always for r >= d).

At unit margins the objective is :math:`\|\theta^\star\|^2` and
:math:`\gamma^\star = \max_\theta \gamma_{\min}(\theta) = \|\theta^\star\|^{-L}` in the toolkit's
normalisation (``margins.compute_margins``). Every optimum lies in the data's span (:math:`W = U S U^\top`,
linear :math:`W = S U^\top`), so the solver works in the k = rank X coordinates :math:`z_n = U^\top x_n`.
Sizes are bounded by :data:`LIMITS` (:class:`ProblemTooLargeError` names the limit; solve a
:func:`seeded_subset`). Non-separable data are reported, not raised: ``separable=False``.

Command line::

    python -m margin_theory.maxmargin --dataset iris --head quadratic [--affine] [--n-train N]
        [--classes 0,1] [--seed S] [--json]
"""
from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._util import (ArgumentParser, ConfigError, MarginTheoryError, check_output_path, cli_entry, explicit_options,
                    fmt_number, is_int, is_number, nonneg_int, one_line, positive_int, print_json, progress,
                    save_figure, use_agg_backend)

__all__ = [
    "MaxMarginResult", "ProblemTooLargeError", "LIMITS", "HEAD_DEGREE", "solve_max_margin", "solve_linear_svm",
    "solve_quadratic_svm", "solve_lowrank_sdp", "seeded_subset", "head_of", "model_direction", "compare_with_optimum",
    "cosine", "gamma_min_of", "gradient_descent", "GDResult", "log_steps", "plot_gap", "head_logits_and_grad",
    "GapMonitor", "MONITOR_MAX_POINTS", "run_gap_rows", "run_experiment_cases", "render_markdown", "main",
]

PROG = "python -m margin_theory.maxmargin"
#: homogeneity degree L of each head in its own parameters (SPEC §3): gamma = q / ||theta||^L
HEAD_DEGREE = {"linear": 1, "quadratic": 1, "lowrank": 2}
HEADS = tuple(HEAD_DEGREE)
#: the largest problems solved here (after the reduction to the span of the data)
LIMITS = {
    "constraints": 5_000,           # N (C - 1) margin constraints, every problem
    "linear_variables": 20_000,     # C k
    "quadratic_variables": 5_000,   # min(C k(k+1)/2 primal, N(C-1) dual)
    "quadratic_dual_points": 2_000,  # N for the N x N kernel of the dual
    "sdp_block": 64,                # k: each W_i is a k x k PSD block
    "sdp_variables": 8_000,         # C k(k+1)/2
    "sdp_constraints": 2_000,       # N (C - 1)
}
#: SDPs with more variables than this go to SCS (first order) before Clarabel (interior point)
SDP_CLARABEL_MAX = 2_000
_SOLVER_OPTIONS = {"SCS": {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 200_000}}
_OK = ("optimal", "optimal_inaccurate")
_NOT_SEPARABLE = ("infeasible", "infeasible_inaccurate", "unbounded", "unbounded_inaccurate")


class ProblemTooLargeError(ConfigError):
    """The max-margin problem exceeds a size limit of :data:`LIMITS` (the message names it)."""


@dataclass
class MaxMarginResult:
    """What :func:`solve_max_margin` returns (fields like scipy's ``OptimizeResult``); arrays in R^d."""

    head: str
    degree: int                     # L: gamma = q / ||theta||^L
    separable: bool | None          # True: some point has every margin >= 1; False: certified none; None: failed
    gamma_star: float | None        # max_theta gamma_min(theta) (lowrank: the relaxation's bound), if separable
    status: str
    solver: str | None
    problem: str                    # primal, dual or sdp
    n: int
    d: int
    C: int
    k: int                          # the dimension of the data's span
    variables: int
    constraints: int
    seconds: float
    objective: float | None = None  # ||theta*||^2 at unit margins: ||W*||_F^2 (linear, quadratic), sum_i tr W_i*
    W: np.ndarray | None = None     # the optimum, (C, d) (linear) or (C, d, d)
    direction: np.ndarray | None = None  # W / ||W||_F
    margins: np.ndarray | None = None    # (N, C): (W_{y_n} - W_j)(x_n), inf at j = y_n
    q: np.ndarray | None = None          # its row minima
    duals: np.ndarray | None = None      # (N, C) multipliers alpha_nj >= 0 of the margin constraints
    support: np.ndarray | None = None    # the n with some alpha_nj > dual_tol
    psd_duals: np.ndarray | None = None  # lowrank: (C, d, d) multipliers Z_i >= 0 (PSD) of W_i >= 0
    ranks: list[int] | None = None       # lowrank: numerical ranks of W_i*, the rank that attains gamma_star
    dual_tol: float = 1e-6
    message: str = ""

    def summary(self) -> dict:
        """A JSON-able summary (no arrays)."""
        keys = ("head", "degree", "separable", "gamma_star", "objective", "status", "solver", "problem", "n", "d",
                "C", "k", "variables", "constraints", "seconds")
        return {**{k: getattr(self, k) for k in keys},
                "support_vectors": None if self.support is None else int(len(self.support)),
                "min_margin": None if self.q is None else float(self.q.min()), "ranks": self.ranks,
                "message": self.message}


# --- Inputs ---
def _np(a, dtype=None) -> np.ndarray:
    """A numpy array of an array-like or a torch tensor (any device)."""
    return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=dtype)


def _as_arrays(X, y, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    X, y = _np(X, np.float64), _np(y)
    if X.ndim < 2:
        raise ConfigError(f"X must have shape (N, d) (or (N, *shape)), got {X.shape}")
    X = X.reshape(X.shape[0], -1)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ConfigError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    if X.shape[0] == 0:
        raise ConfigError("no data points")
    if not np.all(np.isfinite(X)):
        raise ConfigError("X contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise ConfigError("labels y must be integers")
    y = y.astype(np.int64)
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if C < 2:
        raise ConfigError(f"need at least 2 classes, got {C}")
    if y.min() < 0 or y.max() >= C:
        raise ConfigError(f"labels must lie in 0..{C - 1}, got {y.min()}..{y.max()}")
    return X, y, C


def seeded_subset(y, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n`` points, stratified by label when possible
    (the monitors' rule, ``assumptions``/``data``); all points if ``n >= N``."""
    from .data import _sample_indices

    return np.arange(len(y)) if n >= len(y) else _sample_indices(_np(y), int(n), int(seed))[0]


def _lift(U: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Matrices on the span (C, k, k) mapped back to R^d: U S_i U^T."""
    return np.einsum("ak,ikl,bl->iab", U, S, U)


def _margins_table(W: np.ndarray, X: np.ndarray, y: np.ndarray, head: str) -> np.ndarray:
    """(N, C) margins f_{y_n}(x_n) - f_j(x_n), inf at j = y_n, of f_i(x) = w_i . x (linear) or x^T W_i x."""
    scores = X @ W.T if head == "linear" else np.einsum("na,iab,nb->ni", X, W, X)
    m = scores[np.arange(len(y)), y][:, None] - scores
    m[np.arange(len(y)), y] = np.inf
    return m


def _check(name: str, value: int, what: str) -> None:
    if value > LIMITS[name]:
        raise ProblemTooLargeError(f"max-margin problem too large: {what} = {value:,} exceeds the limit "
                                   f"{name} = {LIMITS[name]:,} (use a seeded subset, maxmargin.seeded_subset)")


def _solve(prob, solvers: Sequence[str]) -> tuple[str, str | None, str]:
    """Solve with the first solver that gives a definite status; (status, solver, message)."""
    import cvxpy as cp

    status, used, msgs = "solver_error", None, []
    for s in solvers:
        if s not in cp.installed_solvers():
            msgs.append(f"{s} not installed")
            continue
        try:
            with warnings.catch_warnings():          # "inaccurate" is reported in status and message
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=s, **_SOLVER_OPTIONS.get(s, {}))
        except (cp.error.SolverError, ValueError, ArithmeticError) as exc:
            msgs.append(f"{s}: {one_line(exc, 200)}")
            continue
        status, used = str(prob.status), s
        if status == "optimal" or status in _NOT_SEPARABLE:
            break
        msgs.append(f"{s}: status {status}")
    return status, used, "; ".join(msgs)


class _Problem:
    """One solve: the checked data, an orthonormal basis U (d, k) of their span, Z = X U (N, k), the
    N(C-1) margin ``pairs`` (n, j), j != y_n, and the sparse ``Dm`` (P, N C) with
    ``Dm vec(F) = F[n, y_n] - F[n, j]`` for scores F (N, C) vectorised row-major; the clock."""

    def __init__(self, head: str, X, y, num_classes: int | None, rtol: float = 1e-10):
        import scipy.sparse as sp

        self.t0, self.head = time.perf_counter(), head
        self.X, self.y, self.C = _as_arrays(X, y, num_classes)
        self.N, self.d = self.X.shape
        self.ncons = self.N * (self.C - 1)              # refused before the SVD, not after
        _check("constraints", self.ncons, "N (C - 1) margin constraints")
        _, s, vt = np.linalg.svd(self.X, full_matrices=False)
        self.U = vt[:int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0].T
        self.Z = self.X @ self.U
        self.k = self.U.shape[1]
        self.D = self.k * (self.k + 1) // 2
        n, j = np.nonzero(np.arange(self.C) != self.y[:, None])      # row-major: n, then j
        self.pairs, P = (n, j), len(n)
        self.Dm = sp.csr_matrix((np.repeat([1.0, -1.0], P), (np.tile(np.arange(P), 2), np.concatenate(
            [n * self.C + self.y[n], n * self.C + j]))), shape=(P, self.N * self.C))

    def result(self, problem: str, nvar: int, status: str, solver: str | None, msg: str, S=None, lam=None,
               **kw) -> MaxMarginResult:
        r"""The result at the optimum ``S`` (span coordinates) with the pairs' multipliers ``lam``, or the
        certificate / failure ``status``. The objective is :math:`\|\theta^\star\|^2` (linear, quadratic
        :math:`\|S\|_F^2`, lowrank :math:`\sum_i\mathrm{tr}S_i`), :math:`\gamma^\star = \|\theta^\star\|^{-L}`."""
        L = HEAD_DEGREE[self.head]
        common = dict(head=self.head, degree=L, status=status, solver=solver, problem=problem, n=self.N, d=self.d,
                      C=self.C, k=self.k, variables=nvar, constraints=self.ncons, seconds=time.perf_counter() - self.t0)
        if status in _NOT_SEPARABLE:
            why = ("the solver certified the SDP infeasible: no PSD W_i separate the data (no rank can)"
                   if self.head == "lowrank" else "the solver certified that no point has every margin >= 1: "
                   f"the data are not separable by the {self.head} head")
            return MaxMarginResult(separable=False, gamma_star=None, message=why + (f" ({msg})" if msg else ""),
                                   **common)
        if status not in _OK or S is None:
            return MaxMarginResult(separable=None, gamma_star=None, message=f"no solution: {msg or status}", **common)
        W = S @ self.U.T if self.head == "linear" else _lift(self.U, S)
        objective = float(np.trace(S, axis1=1, axis2=2).sum() if self.head == "lowrank" else np.sum(S ** 2))
        nrm, duals, dual_tol = float(np.linalg.norm(W)), None, 1e-6
        if lam is not None:
            duals = np.zeros((self.N, self.C))
            duals[self.pairs] = np.maximum(np.asarray(lam, dtype=np.float64).ravel(), 0.0)
            dual_tol = 1e-6 * max(1.0, float(duals.max()))
        margins = _margins_table(W, self.X, self.y, self.head)
        return MaxMarginResult(separable=True, gamma_star=objective ** (-L / 2), objective=objective, W=W,
                               direction=W / nrm if nrm > 0 else W, margins=margins, q=margins.min(1), duals=duals,
                               dual_tol=dual_tol,
                               support=None if duals is None else np.flatnonzero((duals > dual_tol).any(1)),
                               message=msg if status == "optimal" else f"inaccurate solution ({msg})", **common, **kw)

    def no_data(self, problem: str) -> MaxMarginResult:
        return self.result(problem, 0, "infeasible", None, "all inputs are 0")


# --- The three problems ---
def _svm_on_features(p: _Problem, F: np.ndarray, solvers) -> tuple:
    """min 1/2 ||W||_F^2 s.t. (w_{y_n} - w_j) . F_n >= 1 on features F (N, D):
    (status, solver, msg, W (C, D) or None, the pairs' multipliers)."""
    import cvxpy as cp
    import scipy.sparse as sp

    w = cp.Variable(F.shape[1] * p.C)                     # w[e C + i] = W[i, e]
    cons = [(p.Dm @ sp.kron(F, sp.eye(p.C))).tocsr() @ w >= 1]
    status, solver, msg = _solve(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w)), cons), solvers)
    W = None if status not in _OK or w.value is None else np.asarray(w.value).reshape(F.shape[1], p.C).T
    return status, solver, msg, W, cons[0].dual_value


def solve_linear_svm(X, y, num_classes: int | None = None, *, solvers=("CLARABEL", "SCS")) -> MaxMarginResult:
    r"""Linear head: :math:`\min\tfrac12\|W\|_F^2` s.t. :math:`(w_{y_n}-w_j)\cdot x_n \ge 1`;
    :math:`\gamma^\star = 1/\|W^\star\|_F` (L = 1)."""
    p = _Problem("linear", X, y, num_classes)
    _check("linear_variables", p.C * p.k, "C k variables")
    return p.no_data("primal") if p.k == 0 else p.result("primal", p.C * p.k, *_svm_on_features(p, p.Z, solvers))


def solve_quadratic_svm(X, y, num_classes: int | None = None, *, form: str = "auto",
                        solvers=("CLARABEL", "SCS")) -> MaxMarginResult:
    r"""Full quadratic head: the SVM in feature space :math:`x x^\top`, kernel :math:`(x\cdot x')^2`;
    :math:`\gamma^\star = 1/\|W^\star\|_F` (L = 1). ``form``: ``primal`` (over symmetric
    :math:`W_i`, svec coordinates), ``dual`` or ``auto`` (fewer variables)."""
    import cvxpy as cp

    if form not in ("auto", "primal", "dual"):
        raise ConfigError(f"form must be auto, primal or dual, got {form!r}")
    p = _Problem("quadratic", X, y, num_classes)
    N, C, Z = p.N, p.C, p.Z
    if form == "auto":
        form = "primal" if C * p.D <= p.ncons or N > LIMITS["quadratic_dual_points"] else "dual"
    nvar = C * p.D if form == "primal" else p.ncons
    _check("quadratic_variables", nvar, f"{'C k(k+1)/2' if form == 'primal' else 'N (C - 1)'} variables ({form})")
    if form == "dual":
        _check("quadratic_dual_points", N, "N (kernel size, dual)")
    if p.k == 0:
        return p.no_data(form)
    S = None
    if form == "primal":    # svec: <svec(z z^T), svec(S)> = z^T S z for symmetric S (off-diagonal times sqrt 2)
        iu, ju = np.triu_indices(p.k)
        scale = np.where(iu == ju, 1.0, math.sqrt(2.0))
        status, solver, msg, w, lam = _svm_on_features(p, Z[:, iu] * Z[:, ju] * scale, solvers)
        if w is not None:
            S = np.zeros((C, p.k, p.k))
            S[:, iu, ju] = S[:, ju, iu] = w / scale
    else:
        ev, evec = np.linalg.eigh((Z @ Z.T) ** 2)
        keep = ev > 1e-12 * max(ev.max(), 1e-300)
        R = evec[:, keep] * np.sqrt(ev[keep])                      # K = R R^T
        a = cp.Variable(p.ncons, nonneg=True)
        c = cp.reshape(p.Dm.T @ a, (N, C), order="C")              # c_ni = [i = y_n] sum_j a_nj - a_ni
        status, solver, msg = _solve(cp.Problem(cp.Maximize(cp.sum(a) - 0.5 * cp.sum_squares(R.T @ c))), solvers)
        lam = None if status not in _OK or a.value is None else np.maximum(a.value, 0.0)
        if lam is not None:
            S = np.einsum("ni,nk,nl->ikl", (p.Dm.T @ lam).reshape(N, C), Z, Z)
    return p.result(form, nvar, status, solver, msg, S, lam)


def solve_lowrank_sdp(X, y, num_classes: int | None = None, *, solvers=None,
                      rank_rtol: float = 1e-6) -> MaxMarginResult:
    r"""Low-Rank head, convex relaxation: :math:`\min\sum_i\mathrm{tr}W_i` s.t.
    :math:`x_n^\top(W_{y_n}-W_j)x_n \ge 1`, :math:`W_i\succeq 0`; :math:`\gamma^\star = 1/\mathrm{OPT}`
    (L = 2), an upper bound on every rank-r model, attained when r >= ``max(ranks)``. SDPs above
    :data:`SDP_CLARABEL_MAX` variables try SCS first."""
    import cvxpy as cp

    p = _Problem("lowrank", X, y, num_classes)
    C, Z, nvar = p.C, p.Z, p.C * p.D
    _check("sdp_constraints", p.ncons, "N (C - 1) SDP margin constraints")
    _check("sdp_block", p.k, "k (PSD block size = rank of the data)")
    _check("sdp_variables", nvar, "C k(k+1)/2 SDP variables")
    if p.k == 0:
        return p.no_data("sdp")
    Ws = [cp.Variable((p.k, p.k), symmetric=True) for _ in range(C)]
    psd = [Wi >> 0 for Wi in Ws]
    scores = cp.vstack([cp.sum(cp.multiply(Z @ Wi, Z), axis=1) for Wi in Ws])     # (C, N)
    marg = p.Dm @ cp.vec(scores, order="F") >= 1
    if solvers is None:
        solvers = ("CLARABEL", "SCS") if nvar <= SDP_CLARABEL_MAX else ("SCS", "CLARABEL")
    status, solver, msg = _solve(cp.Problem(cp.Minimize(sum(cp.trace(Wi) for Wi in Ws)), [marg] + psd), solvers)
    if status not in _OK or any(Wi.value is None for Wi in Ws):
        return p.result("sdp", nvar, status, solver, msg)
    S = np.stack([0.5 * (Wi.value + Wi.value.T) for Wi in Ws])
    ev = np.linalg.eigvalsh(S)
    ranks = [int(v) for v in np.sum(ev > rank_rtol * np.maximum(ev.max(1, keepdims=True), 1e-300), axis=1)]
    Zd = [c.dual_value for c in psd]
    return p.result("sdp", nvar, status, solver, msg, S, marg.dual_value, ranks=ranks,
                    psd_duals=None if any(z is None for z in Zd) else _lift(p.U, np.stack([np.asarray(z) for z in Zd])))


_SOLVERS = {"linear": solve_linear_svm, "quadratic": solve_quadratic_svm, "lowrank": solve_lowrank_sdp}


def solve_max_margin(X, y, head: str, num_classes: int | None = None, **kw) -> MaxMarginResult:
    """Dispatch on ``head`` (``linear``, ``quadratic``, ``lowrank``); see the module docstring."""
    if head not in _SOLVERS:
        raise ConfigError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    return _SOLVERS[head](X, y, num_classes, **kw)


# --- Comparing a model with the optimum ---
def head_of(model) -> str:
    """``linear``, ``quadratic`` or ``lowrank`` for a single-head model on raw inputs
    (features without parameters); :class:`ConfigError` otherwise."""
    from .models import LinearHead, LowRankHead, QuadraticHead

    head, feats = getattr(model, "head", model), getattr(model, "features", None)
    if feats is not None and any(True for _ in feats.parameters()):
        raise ConfigError(f"the max-margin optimum applies to a head on fixed inputs; model "
                          f"{getattr(model, 'name', type(model).__name__)!r} has trainable features")
    if getattr(head, "linear", None) is not None:
        raise ConfigError("no max-margin problem for a quadratic head with the authors' linear term "
                          "(--linear-term); the optimum here is for x^T W x alone")
    for cls, kind in ((LinearHead, "linear"), (QuadraticHead, "quadratic"), (LowRankHead, "lowrank")):
        if isinstance(head, cls) and getattr(head, "bias", None) is None:
            return kind
    raise ConfigError(f"no max-margin problem for head {type(head).__name__} (linear without bias, "
                      "quadratic or lowrank only)")


def model_direction(model) -> tuple[str, np.ndarray]:
    r"""(head, W) with W the model's matrices: linear ``weight`` (C, d); quadratic
    :math:`W = \mathrm{sym}(V)` (C, d, d); lowrank :math:`W_i = A_i^\top A_i` (C, d, d); float64."""
    import torch

    kind, head = head_of(model), getattr(model, "head", model)
    with torch.no_grad():
        W = (head.W if kind == "quadratic" else head.weight).detach().to(torch.float64)
        if kind == "lowrank":
            W = torch.einsum("crd,cre->cde", W, W)
    return kind, W.cpu().numpy()


def cosine(W, Wstar) -> float:
    """Cosine between two stacks of class matrices (Frobenius inner product over all classes)."""
    a, b = np.asarray(W, dtype=np.float64).ravel(), np.asarray(Wstar, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float("nan") if na == 0 or nb == 0 else float(a @ b / (na * nb))


def gamma_min_of(W, X, y, head: str) -> float:
    r""":math:`\gamma_{\min}` of class matrices W in the toolkit's normalisation: linear / quadratic
    :math:`\min_n q_n/\|W\|_F`, lowrank (PSD W) :math:`\min_n q_n/\sum_i\mathrm{tr}W_i`."""
    X, y, C = _as_arrays(X, y, np.asarray(W).shape[0])
    W = np.asarray(W, dtype=np.float64)
    norm = np.trace(W, axis1=1, axis2=2).sum() if head == "lowrank" else np.linalg.norm(W)
    return float(_margins_table(W, X, y, head).min() / norm)


def compare_with_optimum(model, X, y, result: MaxMarginResult, *, gamma_min: float | None = None) -> dict:
    r"""``gamma_min / gamma_star`` and the cosine between the model's direction (W_i, or
    :math:`A_i^\top A_i`) and the optimum's. ``gamma_min``: pass it if already computed on the
    same (X, y) (else ``margins.compute_margins`` in float64). For ``lowrank`` the ratio is against
    the relaxation's bound (<= 1 for every rank; -> 1 possible when r >= max(result.ranks))."""
    import torch

    from .margins import compute_margins

    kind, W = model_direction(model)
    if kind != result.head:
        raise ConfigError(f"the model has a {kind} head but the optimum is for the {result.head} head")
    if result.W is not None and W.shape != result.W.shape:
        raise ConfigError(f"model matrices {W.shape} do not match the optimum's {result.W.shape}")
    out = {"head": kind, "degree": result.degree, "gamma_star": result.gamma_star, "separable": result.separable,
           "n": result.n}
    if not result.separable:
        return {**out, "gamma_min": gamma_min, "ratio": None, "cosine": None,
                "note": "no optimum: " + (result.message or result.status)}
    if gamma_min is None:
        Xt = torch.as_tensor(_np(X), dtype=torch.float64)
        Xt = Xt.reshape(Xt.shape[0], *getattr(model, "input_shape", (Xt[0].numel(),)))
        gamma_min = compute_margins(copy.deepcopy(model).to("cpu", torch.float64), Xt,
                                    torch.as_tensor(_np(y), dtype=torch.int64)).gamma_min
    return {**out, "gamma_min": float(gamma_min), "ratio": float(gamma_min) / result.gamma_star,
            "cosine": cosine(W, result.W)}


# --- Full-batch gradient descent (the experiment's runs) ---
@dataclass
class GDResult:
    """History of :func:`gradient_descent`: one dict per recorded step (``step, loss,
    gamma_min, ratio, cosine, theta_norm, train_acc``), the final model and timing."""

    history: list[dict]
    model: Any
    seconds: float
    lr: float
    steps: int
    diverged: bool = False


def log_steps(steps: int, points: int = 60) -> list[int]:
    """Step numbers 0, 1, ..., ``steps``, about ``points`` of them log-spaced (always 0 and ``steps``)."""
    if steps <= 0:
        return [0]
    s = np.unique(np.round(np.logspace(0, math.log10(steps), max(points, 2))).astype(int))
    return [0] + [int(v) for v in s if 1 <= v <= steps] + ([steps] if steps not in s else [])


def head_logits_and_grad(kind: str, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Mean cross-entropy of a head with parameters ``P`` and its gradient in closed form
    (numpy float64; the same model as :mod:`margin_theory.models`). With
    :math:`G = (\mathrm{softmax}(F) - \mathrm{onehot}(y))/N`:
    linear (``P`` = W, (C, d)) :math:`\nabla W = G^\top X`; quadratic (``P`` = V, (C, d, d))
    :math:`\nabla V_i = X^\top \mathrm{diag}(G_{:i}) X`; lowrank (``P`` = A, (C, r, d))
    :math:`\nabla a_{ik} = 2\sum_n G_{ni} (a_{ik}\cdot x_n) x_n`."""
    N, C, d = X.shape[0], P.shape[0], X.shape[1]
    if kind == "linear":
        F = X @ P.T
    elif kind == "quadratic":
        F = ((X @ P.transpose(1, 0, 2).reshape(d, C * d)).reshape(N, C, d) * X[:, None, :]).sum(2)
    else:
        r = P.shape[1]
        Z = (X @ P.reshape(C * r, d).T).reshape(N, C, r)
        F = (Z * Z).sum(2)
    Fm = F - F.max(1, keepdims=True)
    E = np.exp(Fm)
    S = E.sum(1, keepdims=True)
    loss = float(np.mean(np.log(S[:, 0]) - Fm[np.arange(N), y]))
    G = E / S
    G[np.arange(N), y] -= 1.0
    G /= N
    if kind == "linear":
        return loss, G.T @ X
    if kind == "quadratic":
        return loss, np.matmul((G.T[:, :, None] * X[None]).transpose(0, 2, 1), X)
    return loss, 2.0 * ((G[:, :, None] * Z).reshape(N, C * r).T @ X).reshape(C, r, d)


def gradient_descent(model, X, y, *, lr: float, steps: int, optimum: MaxMarginResult | None = None,
                     record: Sequence[int] | None = None, progress_desc: str | None = None,
                     quiet: bool = True) -> GDResult:
    r"""Full-batch gradient descent :math:`\theta \leftarrow \theta - \eta\nabla\,\mathrm{mean\ CE}`
    of a single-head model (linear, quadratic or lowrank on raw inputs) in float64, by the closed-form
    gradient of :func:`head_logits_and_grad`, on a float64 copy of ``model`` (``GDResult.model``). At the
    steps ``record`` (default :func:`log_steps`) it records ``margins.compute_margins``'s loss, gamma_min,
    gamma_bar and, with ``optimum``, :func:`compare_with_optimum`'s ratio and cosine."""
    import torch

    from .margins import compute_margins

    if not (is_number(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if not is_int(steps) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    kind = head_of(model)
    m = copy.deepcopy(model).to("cpu", torch.float64)     # the data below are on the CPU
    Xn, yn, _ = _as_arrays(X, y, m.num_classes)
    Xt, yt = torch.as_tensor(Xn).reshape(Xn.shape[0], *m.input_shape), torch.as_tensor(yn)
    P = m.head.weight.detach().numpy()                    # shares memory: a step in P is a step of m
    rec = {int(s) for s in (record if record is not None else log_steps(steps))}
    hist: list[dict] = []
    t0, diverged = time.perf_counter(), False
    bar = progress(total=steps, desc=progress_desc, quiet=quiet or progress_desc is None, unit="step")
    try:
        for step in range(steps + 1):
            if step in rec:
                mr = compute_margins(m, Xt, yt)
                hist.append({"step": step, "loss": mr.loss, "gamma_min": mr.gamma_min, "gamma_bar": mr.gamma_bar,
                             "theta_norm": mr.theta_norm, "train_acc": mr.accuracy})
                if optimum is not None and optimum.separable:
                    c = compare_with_optimum(m, Xn, yn, optimum, gamma_min=mr.gamma_min)
                    hist[-1].update(ratio=c["ratio"], cosine=c["cosine"])
            if step == steps:
                break
            loss, grad = head_logits_and_grad(kind, P, Xn, yn)
            if not (math.isfinite(loss) and np.all(np.isfinite(grad))):
                diverged = True
                break
            P -= lr * grad
            if (step + 1) % 256 == 0 or step + 1 == steps:
                bar.update((step + 1) - bar.n)
    finally:
        bar.close()
    return GDResult(history=hist, model=m, seconds=time.perf_counter() - t0, lr=float(lr), steps=steps,
                    diverged=diverged)


# --- The gap along a run (trainer monitors, check) ---
#: the trainer's and check's max-margin monitors solve on at most this many points
MONITOR_MAX_POINTS = 256


class GapMonitor:
    """The max-margin problem of a model's head solved once on a seeded subset of at most
    ``min(subset, MONITOR_MAX_POINTS)`` training points (``assumptions.select_subset``: inside the
    Theorem 2 monitors' S of any larger size), then
    :meth:`report`: ``gamma_min/gamma_star`` and the cosine for any later state, or a ``note`` saying why not."""

    def __init__(self, model, X, y, *, subset: int = MONITOR_MAX_POINTS, seed: int = 0, num_classes: int | None = None):
        import torch

        from .assumptions import select_subset

        self.note, self.result, self.N, self.seed = None, None, int(y.shape[0]), int(seed)
        idx = select_subset(self.N, min(subset, MONITOR_MAX_POINTS), seed)
        self.idx, self.n = idx.numpy(), len(idx)
        self.data = (f"all {self.N} training points" if self.n == self.N else
                     f"a seeded subset of {self.n} of {self.N} training points (seed {seed})")
        self.X, self.y = (_np(a[idx.to(a.device)]) if hasattr(a, "device") else _np(a)[self.idx]  # on its device
                          for a in (X, y))
        C = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        try:
            kind, feats = head_of(model), getattr(model, "features", None)     # feats: without parameters
            with torch.no_grad():           # the head's inputs (e.g. [x, 1] under --affine), not raw x
                Z = self.X.reshape(self.n, -1) if feats is None else \
                    _np(feats(torch.as_tensor(self.X, dtype=torch.float64)).flatten(1))
            self.result = solve_max_margin(Z, self.y, kind, C)
            if not self.result.separable:
                self.note = self.result.message or self.result.status
        except MarginTheoryError as exc:
            self.note = one_line(exc)
        except ImportError as exc:          # cvxpy missing: a monitor must never stop training
            self.note = f"the convex solver is unavailable ({exc}); pip install cvxpy clarabel"

    def report(self, model) -> dict:
        base, note = {"data": self.data, "n": self.n, "seed": self.seed}, self.note
        if self.result is not None and self.result.separable:
            try:                            # a monitor must never stop training or a check
                c = compare_with_optimum(model, self.X, self.y, self.result)
                return {**base, "available": True,
                        **{k: c[k] for k in ("head", "degree", "gamma_star", "gamma_min", "ratio", "cosine")},
                        "solver_seconds": self.result.seconds, "note": None}
            except MarginTheoryError as exc:
                note = one_line(exc)
        return {**base, "available": False, "note": note, "gamma_star": None, "ratio": None, "cosine": None}


# --- Figures ---
def plot_gap(cases: dict[str, tuple[str, dict[str, list[dict]]]], out, title: str = ""):
    """One row per case (``{name: (description, {label: rows with step, ratio, cosine})}``):
    gamma_min/gamma_star (left) and the cosine to the optimum's W* (right) against steps, log x, the
    optimum's level 1 dashed, the final values in the legend; PNG written atomically."""
    use_agg_backend()
    import matplotlib.pyplot as plt

    n = max(1, len(cases))
    fig, axes = plt.subplots(n, 2, figsize=(12, 1 + 3.3 * n), squeeze=False)
    for (ax1, ax2), (name, (desc, curves)) in zip(axes, cases.items()):
        for label, rows in curves.items():
            pts = [r for r in rows if r.get("step", 0) > 0 and r.get("ratio") is not None]
            if not pts:
                ax1.plot([], [], label=f"{label}: not separable")
                continue
            x = [r["step"] for r in pts]
            line, = ax1.plot(x, [r["ratio"] for r in pts], lw=1.3, label=f"{label} ({pts[-1]['ratio']:.3f})")
            ax2.plot(x, [r["cosine"] for r in pts], lw=1.3, color=line.get_color(),
                     label=f"{label} ({pts[-1]['cosine']:.3f})")
        for ax, ylabel in ((ax1, r"$\gamma_{\min}(t)/\gamma^\star$"), (ax2, "cosine with optimum W*")):
            ax.axhline(1.0, color="k", ls="--", lw=1)
            ax.set(xscale="log", xlabel="step (log scale)", ylabel=ylabel)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, loc="lower right")
        drawn = [line for line in ax1.get_lines() if len(line.get_ydata()) > 1]
        ax1.set_ylim(bottom=max(-1.0, min([float(np.min(line.get_ydata())) for line in drawn] or [0.0])) - 0.02,
                     top=1.05)
        below = [line.get_label().split(" (")[0] for line in drawn if float(np.max(line.get_ydata())) < -1.0]
        if below:
            ax1.text(0.02, 0.5, "below -1 throughout (not yet separated): " + ", ".join(below),
                     transform=ax1.transAxes, fontsize=8, color="0.3")
        ax1.set_title(f"{name}: margin ratio (lowrank: to the SDP bound)", fontsize=9)
        ax2.set_title(f"{name}: direction ({desc[:70]})", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / n) if title else None)
    return save_figure(fig, out)


# --- The experiment ``maxmargin`` (experiments/maxmargin.toml; experiment.analysis_maxmargin) ---
#: the runs of every case: label -> (model name, rank; "d" = the case's input dimension)
GD_HEADS = {"linear": ("linear", None), "quadratic": ("quadratic", None),
            "lowrank-1": ("lowrank", 1), "lowrank-d": ("lowrank", "d")}
#: predicted exponents p of gap ~ (log t)^-p for heads linear in theta (Soudry et al. 2018, generic
#: case: w(t) = w_hat log t + O(1), so 1 - ratio = O(1/log t) and 1 - cos = O(1/log^2 t))
PREDICTED_P = {"ratio": 1.0, "cosine": 2.0}


def _fit_exponent(rows: list[dict], key: str) -> float | None:
    """p in 1 - key ~ c (log t)^-p, least squares over the recorded steps t >= sqrt(T) (t >= 3)
    at which the data are already separated (ratio > 0); None with fewer than 3 such steps."""
    T = max(r["step"] for r in rows)
    pts = [(math.log(math.log(r["step"])), math.log(1.0 - r[key])) for r in rows
           if r["step"] >= max(3.0, math.sqrt(T)) and r.get(key) is not None and 0 < 1.0 - r[key]
           and (r.get("ratio") or 0) > 0]
    return None if len(pts) < 3 or pts[-1][0] - pts[0][0] <= 0 else float(-np.polyfit(*zip(*pts), 1)[0])


def verdict(row_end: dict, row_mid: dict, opt: MaxMarginResult, rank: int | None) -> str:
    """Rule (stated in docs/maxmargin.md): ``not separable`` (solver certificate); ``at optimum``
    (ratio and cosine >= 0.999); ``converging`` (both gaps 1 - ratio, 1 - cos shrank from step
    sqrt(T) to T); ``stalled below the bound`` (ratio < 0.999 and its gap shrank by less than 5%);
    ``mixed`` otherwise."""
    if not opt.separable:
        return "not separable"
    r, c = row_end.get("ratio"), row_end.get("cosine")
    if r is None or c is None:
        return "n/a"
    if r >= 0.999 and c >= 0.999:
        return "at optimum"
    g_end, g_mid = 1 - r, 1 - row_mid["ratio"]
    if g_end < g_mid and 1 - c < 1 - row_mid["cosine"] and r > 0:
        if rank is not None and opt.ranks and rank < max(opt.ranks) and g_end > 0.95 * g_mid:
            return "stalled below the bound"
        return "converging"
    if g_end >= 0.95 * g_mid:
        return "stalled below the bound" if opt.head == "lowrank" else "not converging"
    return "mixed"


def run_case(case: dict, *, steps: int, lr: float, seed: int = 0, heads: Sequence[str] = tuple(GD_HEADS),
             points: int = 60, data_dir: str | None = None, quiet: bool = True) -> dict:
    """One case of the experiment: its data (:func:`load_case`, then scaled to max_n ||x_n|| = 1:
    ratios and cosines do not depend on that scale), the three optima, then full-batch GD of each
    head in ``heads`` (the toolkit's models, seeded init) for ``steps`` steps at ``lr``."""
    import torch

    from .models import build_model

    X, y, C, desc = load_case(case["dataset"], affine_inputs=bool(case.get("affine")),
                              classes=case.get("classes"), n_train=case.get("n_train"), pool=case.get("pool"),
                              seed=seed, data_dir=data_dir, name=case.get("name"))
    X, desc = X / max(float(np.linalg.norm(X, axis=1).max()), 1e-300), desc + ", scaled to max ||x_n|| = 1"
    N, d = X.shape
    optima = {h: solve_max_margin(X, y, h, C) for h in HEADS}
    out = {"name": case["name"], "data": desc, "N": N, "d": d, "C": C,
           "optima": {h: o.summary() for h, o in optima.items()}, "runs": [], "steps": steps, "lr": lr, "seed": seed,
           **({"closed_form": case["closed_form"]} if case.get("closed_form") else {})}
    for label in heads:
        model_name, rank = GD_HEADS[label]
        r, opt = d if rank == "d" else rank, optima[model_name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(model_name, (d,), C, rank=r or 1)
        gd = gradient_descent(model, X, y, lr=lr, steps=steps, optimum=opt, record=log_steps(steps, points),
                              progress_desc=f"{case['name']} {label}", quiet=quiet)
        hist = gd.history
        end = hist[-1]          # and mid: the recorded row nearest to step sqrt(T) on a log scale
        mid = min((h for h in hist if h["step"] > 0), key=lambda h: abs(math.log(h["step"] / end["step"] ** 0.5)))
        lowrank = model_name == "lowrank"
        out["runs"].append({
            "label": label, "model": model_name, "rank": r, "lr": lr, "steps": steps, "seconds": gd.seconds,
            "diverged": gd.diverged, "separable": opt.separable, "gamma_star": opt.gamma_star,
            "final": {k: end.get(k) for k in ("step", "loss", "gamma_min", "ratio", "cosine", "theta_norm",
                                              "train_acc")},
            "at_sqrt_T": {k: mid.get(k) for k in ("step", "ratio", "cosine")},
            "p_ratio": _fit_exponent(hist, "ratio") if opt.separable else None,
            "p_cosine": _fit_exponent(hist, "cosine") if opt.separable else None,
            "bound_attainable": bool(r >= max(opt.ranks or [0])) if lowrank and opt.separable else None,
            "verdict": "diverged" if gd.diverged else verdict(end, mid, opt, r if lowrank else None),
            "history": [{k: (float(f"{v:.7g}") if isinstance(v, float) and math.isfinite(v) else v)
                         for k, v in row.items()} for row in hist]})
    return out


def run_experiment_cases(cfg: dict, scale: str, out, *, seed: int = 0, data_dir: str | None = None,
                         quiet: bool = True) -> dict:
    """The analysis ``maxmargin`` of ``python -m margin_theory.experiment maxmargin``: every case of
    ``cfg['cases']`` (restricted to ``cfg['only']`` if given) with :func:`run_case`; one figure."""
    cases = list(cfg.get("cases", []))
    if not cases:
        raise ConfigError("[maxmargin] defines no cases")
    if only := cfg.get("only"):
        if unknown := sorted(set(only) - {c.get("name") for c in cases}):
            raise ConfigError(f"[maxmargin] only names unknown case(s) {', '.join(unknown)}")
        cases = [c for c in cases if c.get("name") in only]
    t0, res = time.perf_counter(), []
    for case in cases:
        steps = case["steps"].get(scale) if isinstance(case.get("steps"), dict) else None
        steps = int(steps if steps is not None else cfg.get("steps", 1000))
        if steps < 1:
            raise ConfigError(f"[maxmargin] case {case.get('name')!r}: steps must be >= 1, got {steps}")
        res.append(run_case(case, steps=steps, lr=float(case.get("lr", cfg.get("lr", 0.5))), seed=seed,
                            heads=cfg.get("heads", tuple(GD_HEADS)), points=int(cfg.get("points", 60)),
                            data_dir=data_dir, quiet=quiet))
    title = f"Gradient descent vs the max-margin optimum ({scale} scale): margin ratio and cosine"
    fig = plot_gap({c["name"]: (c["data"], {r["label"]: r["history"] for r in c["runs"]}) for c in res},
                   Path(out) / "maxmargin_gap.png", title=title)
    return {"cases": res, "predicted_p": PREDICTED_P, "seconds": time.perf_counter() - t0, "figures": [Path(fig).name]}


def render_markdown(an: dict) -> list[str]:
    """The results.md section of the analysis ``maxmargin``."""
    def f(v, spec=".4f"):
        return fmt_number(v, spec)

    L = ["## Max-margin limit of gradient descent (beyond the paper)", "",
         "gamma_star: the solver's optimum of gamma_min in the toolkit's normalisation q/||theta||^L "
         "(linear, quadratic: hard-margin SVM, L = 1; lowrank: the PSD relaxation's upper bound, L = 2). "
         "ratio = gamma_min(t)/gamma_star, cos = cosine between the model's W (lowrank: A_i^T A_i) and W*. "
         f"p = fitted exponent of gap ~ (log t)^-p over t >= sqrt(T); predicted for the linear and "
         f"quadratic heads {an['predicted_p']['ratio']:g} (ratio) and {an['predicted_p']['cosine']:g} (cosine).", ""]
    for c in an["cases"]:
        L += [f"### {c['name']}: {c['data']} (N = {c['N']}, d = {c['d']}, C = {c['C']})", ""]
        L.append("Optima: " + "; ".join(
            f"{h} " + (f"gamma* = {v['gamma_star']:.5g} ({v['problem']}, {v['variables']:,} variables, "
                       f"{v['seconds']:.2f} s" + (f", ranks {v['ranks']}" if v.get("ranks") else "") + ")"
                       if v["separable"] else f"not separable ({v['status']})")
            for h, v in c["optima"].items()) + ".")
        if c.get("closed_form"):
            L.append(f"Closed form: {c['closed_form']}.")
        L += ["", f"GD: {c['steps']} full-batch steps, lr {c['lr']:g}.", "",
              "| head | final ratio | final cos | ratio at sqrt(T) | cos at sqrt(T) | p (ratio) | p (cos) | "
              "gamma_min | loss | bound attainable | verdict |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in c["runs"]:
            fi, mi = r["final"], r["at_sqrt_T"]
            ba = {None: "-", True: "yes", False: "no"}[r["bound_attainable"]]
            L.append(f"| {r['label']} | {f(fi['ratio'])} | {f(fi['cosine'])} | {f(mi['ratio'])} | {f(mi['cosine'])} | "
                     f"{f(r['p_ratio'], '.2f')} | {f(r['p_cosine'], '.2f')} | {f(fi['gamma_min'], '+.4g')} | "
                     f"{f(fi['loss'], '.3g')} | {ba} | {r['verdict']} |")
        L.append("")
    return L


# --- CLI ---
def _classes_arg(s: str) -> list[int]:
    v = [p.strip() for p in s.split(",") if p.strip()]
    if len(v) < 2 or not all(p.isdecimal() for p in v) or len(set(map(int, v))) != len(v):
        raise argparse.ArgumentTypeError(f"expected at least 2 distinct comma-separated class indices >= 0: {s!r}")
    return [int(p) for p in v]


def load_case(dataset: str, *, affine_inputs: bool = False, classes: Sequence[int] | None = None,
              n_train: int | None = None, seed: int = 0, data_dir: str | None = None, pool: int | None = None,
              name: str | None = None):
    """(X (N, d) float64, y relabelled 0..C-1, C, description) of a dataset's training set, in this
    order: ``classes`` kept, a seeded subset of ``n_train``, ``pool`` x ``pool`` average pooling of
    square images, affine inputs [x, 1] (``name``: the experiment case, for errors)."""
    from .data import load_dataset

    ds = load_dataset(dataset, data_dir, seed=seed)
    X, y = ds.X_train.reshape(ds.X_train.shape[0], -1).double().numpy(), ds.y_train.numpy()
    desc = f"{ds.name} training set"
    if classes:
        if bad := [c for c in classes if c >= ds.num_classes]:
            raise ConfigError(f"{ds.name} has classes 0..{ds.num_classes - 1}; no class {bad[0]}")
        keep = np.isin(y, classes)
        X, y = X[keep], np.searchsorted(np.array(sorted(classes)), y[keep])
        desc += f", classes {sorted(classes)}"
    if n_train is not None and n_train < len(y):
        idx = seeded_subset(y, n_train, seed)
        X, y = X[idx], y[idx]
        desc += f", seeded subset of {n_train} (seed {seed})"
    if pool:
        k, side = int(pool), int(round(math.sqrt(X.shape[1])))
        if side * side != X.shape[1] or side % k:
            raise ConfigError(f"case {name}: pool = {k} needs square images with side divisible by {k}")
        X = X.reshape(len(X), side // k, k, side // k, k).mean(axis=(2, 4)).reshape(len(X), -1)
        desc += f", {k}x{k} average pooling to {side // k}x{side // k}"
    if affine_inputs:
        X = np.hstack([X, np.ones((len(X), 1))])
        desc += ", affine inputs [x, 1]"
    return X, y, int(y.max()) + 1, desc


def run_gap_rows(run_dir) -> tuple[list[dict], str]:
    """(rows, data): a trainer run's available ``maxmargin`` monitors in ``metrics.jsonl``, each with
    ``step = epoch * ceil(N / batch_size)``, and their ``data``; :class:`ConfigError` if none."""
    from .runfolder import read_config, read_json, read_metrics

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"--run {run}: no such run folder")
    cfg = read_config(run, required=True)
    summ = read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    metrics = read_metrics(run)
    rows = [r for r in metrics if isinstance(r.get("maxmargin"), dict) and r["maxmargin"].get("available")]
    if not rows:
        notes = {(r.get("maxmargin") or {}).get("note") for r in metrics} - {None}
        raise ConfigError(f"--run {run}: no max-margin monitor in metrics.jsonl (train with --monitor-every K"
                          + (f"; the monitor said: {sorted(notes)[0]}" if notes else "") + ")")
    per_epoch = -(-int(summ.get("n_train") or rows[0]["maxmargin"]["n"]) // int(cfg.get("batch_size", 1)))
    out = [{"step": r["epoch"] * per_epoch, "epoch": r["epoch"], "ratio": r["maxmargin"]["ratio"],
            "cosine": r["maxmargin"]["cosine"]} for r in rows]
    return out, rows[0]["maxmargin"]["data"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=(
        "Solve the max-margin problem that gradient descent converges to (in direction) for a head: the "
        "multiclass hard-margin SVM (linear, quadratic = kernel (x.x')^2) or the PSD relaxation (lowrank). "
        "Prints gamma_star in the toolkit's normalisation q/||theta||^L, separability, support vectors."))
    p.add_argument("--dataset", default=None, help="a dataset name (see python -m margin_theory.data list)")
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="instead: plot gamma_min/gamma* and the cosine of a trainer run's max-margin monitors "
                        "(trained with --monitor-every) against steps, log x, into --out")
    p.add_argument("--out", default=None, help="PNG for --run (default RUN_DIR/maxmargin-gap.png)")
    p.add_argument("--head", choices=HEADS + ("all",), default="all", help="which problem (default all three)")
    p.add_argument("--affine", action="store_true", help="affine inputs x -> [x, 1]")
    p.add_argument("--classes", type=_classes_arg, default=None, metavar="I,J[,...]",
                   help="keep only these classes (relabelled 0..)")
    p.add_argument("--n-train", type=positive_int, default=None, help="seeded stratified subset of the training set")
    p.add_argument("--seed", type=nonneg_int, default=0, help="split and subset seed (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the standard dataset files")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return p


@cli_entry(PROG)
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run is not None and args.dataset is not None:
        raise ConfigError("--run and --dataset exclude each other")
    if args.run is not None:                 # the figure of a trainer run's max-margin monitors
        if extra := sorted(explicit_options(parser, argv) - {"run", "out", "json"}):
            raise ConfigError(", ".join("--" + k.replace("_", "-") for k in extra) + " apply to --dataset only")
        png = check_output_path(args.out or Path(args.run) / "maxmargin-gap.png", kind="file")
        rows, data = run_gap_rows(args.run)
        name = Path(args.run).name
        fig = plot_gap({name: (f"trainer monitors on {data}", {name: rows})}, png)
        if args.json:
            print_json({"run": str(args.run), "data": data, "rows": rows, "plot": str(fig)})
        else:
            print("\n".join([f"epoch {r['epoch']:>4} (step {r['step']:>7}): gamma_min/gamma* {r['ratio']:+.4f}, "
                             f"cos {r['cosine']:.4f}" for r in rows] + [f"plot written to {fig}"]))
        return 0
    if args.dataset is None:
        raise ConfigError("give --dataset NAME (solve) or --run RUN_DIR (plot a run's monitors)")
    if args.out is not None:
        raise ConfigError("--out applies to --run only")
    X, y, C, desc = load_case(args.dataset, affine_inputs=args.affine, classes=args.classes,
                              n_train=args.n_train, seed=args.seed, data_dir=args.data_dir)
    heads = HEADS if args.head == "all" else (args.head,)
    out = {"data": desc, "N": int(len(y)), "d": int(X.shape[1]), "C": C, "results": {}}
    for h in heads:
        try:
            out["results"][h] = solve_max_margin(X, y, h, C).summary()
        except ProblemTooLargeError as exc:
            if len(heads) == 1:
                raise
            out["results"][h] = {"head": h, "error": one_line(exc)}
    if args.json:
        print_json(out)
        return 0
    print(f"{desc}: N = {out['N']}, d = {out['d']}, C = {C}")
    for h, r in out["results"].items():
        if "error" in r:
            print(f"  {h:<9} skipped: {r['error']}")
        elif r["separable"]:
            extra = f", ranks of W*: {r['ranks']}" if r.get("ranks") else ""
            what = "relaxation bound " if h == "lowrank" else ""
            print(f"  {h:<9} separable; {what}gamma_star = {r['gamma_star']:.6g} (q/||theta||^{r['degree']}), "
                  f"{r['support_vectors']} support vectors, {r['problem']} with {r['variables']:,} variables, "
                  f"{r['solver']} {r['seconds']:.2f} s{extra}")
        else:
            print(f"  {h:<9} {'NOT separable' if r['separable'] is False else 'unsolved'} ({r['status']}): "
                  f"{r['message']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
