r"""Margins (SPEC §2).

* Unnormalised margin :math:`q_n(\theta) = f_{y_n}(\theta; x_n) - \max_{j\ne y_n} f_j(\theta; x_n)`.
* For f L-homogeneous in :math:`\theta`: :math:`\gamma_n = q_n / \|\theta\|^L` (scale invariant),
  average margin :math:`\bar\gamma = \frac1N\sum_n \gamma_n` (paper eq. 4) and minimum margin
  :math:`\gamma_{\min} = \min_n \gamma_n` (Lyu & Li 2020).
* Models that are not homogeneous in all parameters (biases, BatchNorm) are normalised by
  the head's parameters only, features treated as inputs:
  :math:`\gamma_n = q_n / \|\theta_{head}\|^{L_{head}}`. Every result carries
  ``normalisation`` (``"full"`` or ``"head"``) and the ``degree`` L it used.
* Margin regularisation (paper eq. 5): ``loss = CE - lambda * gamma_bar(batch)``.
* Other definitions (SPEC §2): ``output`` (the authors' notebooks),
  :math:`\gamma^{out} = \frac1N\sum_n \frac{1}{C-1}\sum_{j\ne y_n} (f_{y_n}(x_n) - f_j(x_n)) / \|f(x_n)\|_2`,
  scale invariant; ``smoothed`` (Lyu & Li 2020), :math:`\tilde\gamma = \log(1/(e^{S}-1)) / \|\theta\|^L`,
  :math:`S = \sum_n \mathrm{CE}_n`: *not* scale invariant (SPEC §2 says all are; corrected here),
  :math:`\tilde\gamma \le \gamma_{\min}`, :math:`\gamma_{\min} - \tilde\gamma \le (\log(N(C-1)) + U) / \|\theta\|^L`,
  :math:`U = \sum_n\sum_{j\ne y_n} e^{f_j - f_{y_n}}`; monotone under gradient flow once
  :math:`S < \log 2` (``smoothed_meaningful``).

Norm powers are ``exp(L log ||theta||)`` in float64: deep models neither overflow nor underflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import ConfigError

__all__ = [
    "MARGIN_DEFINITIONS", "NotHomogeneousError", "Normalisation", "MarginResult", "margin_values",
    "runner_up", "get_normalisation", "param_norm", "normalised_margins",
    "compute_margins", "margin_regularised_loss", "predict", "output_margins",
    "smoothed_margin", "smoothed_from_sum", "summed_cross_entropy", "accuracy", "n_correct",
    "separation_gaps", "norm_power",
]


#: every margin definition recorded per epoch (metrics.jsonl key -> what it is, SPEC §2);
#: the trainer's metrics, the Fig. 5 analysis and the protocol comparison iterate over this, and
#: :class:`MarginResult` has one field of each name
MARGIN_DEFINITIONS: dict[str, str] = {
    "gamma_bar": "average normalised margin, mean q/||theta||^L (runner-up; paper eq. 4)",
    "gamma_min": "minimum normalised margin, min q/||theta||^L",
    "gamma_output": "output-normalised (authors), mean (1/(C-1)) sum_j (f_y - f_j)/||f||",
    "gamma_smoothed": "smoothed (Lyu & Li), log(1/(exp(S)-1))/||theta||^L (not scale invariant)",
}


class NotHomogeneousError(ConfigError):
    """Full-parameter normalisation was asked for on a model that is not homogeneous."""


@dataclass(frozen=True)
class Normalisation:
    """``kind`` ``"full"`` (all parameters, ``degree`` = L of f) or ``"head"`` (the head's, its L)."""

    kind: str
    degree: int
    params: tuple = field(repr=False)

    def norm(self) -> torch.Tensor:
        return param_norm(self.params)

    def describe(self) -> str:
        what = "all parameters" if self.kind == "full" else "head parameters only (features treated as inputs)"
        return f"gamma_n = q_n / ||theta||^{self.degree}, theta = {what}"


@dataclass
class MarginResult:
    """Margins over a data set. ``q`` and ``gamma`` are float64 tensors of shape (N,)."""

    q: torch.Tensor
    gamma: torch.Tensor
    gamma_bar: float
    gamma_min: float
    theta_norm: float
    degree: int
    normalisation: str
    accuracy: float
    loss: float
    gamma_output: float = float("nan")         # mean of :func:`output_margins`
    gamma_smoothed: float = float("nan")       # :func:`smoothed_margin`
    smoothed_meaningful: bool = False          # S < log 2: Lyu & Li's monotonicity applies

    def as_dict(self) -> dict:
        """Every field but the per-sample tensors ``q`` and ``gamma``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("q", "gamma")}


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ConfigError(f"logits must have shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    return logits


def _others(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits with the true class's set to -inf."""
    return logits.scatter(1, y.view(-1, 1), -math.inf)


def margin_values(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`q_n = f_{y_n}(x_n) - \max_{j\ne y_n} f_j(x_n)` for logits (N, C), labels (N,)."""
    return _check_logits(logits).gather(1, y.view(-1, 1)).squeeze(1) - _others(logits, y).max(dim=1).values


def n_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""How many samples are classified correctly, :math:`\#\{n : q_n > 0\}` (a strict win
    of the true class; a tie counts as wrong), as a 0-dim float64 tensor on the logits' device."""
    return (margin_values(logits, y) > 0).sum().to(torch.float64)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of correctly classified samples (:func:`n_correct`); NaN for none."""
    return float(n_correct(logits, y)) / y.shape[0] if y.shape[0] else float("nan")


def separation_gaps(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`\delta_n = f_{j_n} - \max_{j\notin\{y_n,j_n\}} f_j` (``inf`` when C = 2), SPEC §5."""
    if logits.shape[1] == 2:
        return torch.full((logits.shape[0],), math.inf, dtype=logits.dtype)
    top2 = _others(logits, y).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def norm_power(norm: torch.Tensor | float, degree: int) -> float:
    r""":math:`\|\theta\|^L` as ``exp(L log ||theta||)`` in float64 (``OverflowError`` beyond ~1e308; a
    margin divided by it is computed as ``q exp(-L log ||theta||)`` instead, which underflows to 0)."""
    return math.exp(degree * math.log(float(norm)))


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The runner-up class :math:`j_n = \arg\max_{j\ne y_n} f_j(x_n)` (SPEC §5)."""
    return _others(logits, y).argmax(dim=1)


def output_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The authors' per-sample margin (SPEC §2 ``output``), float64, shape (N,):

    :math:`m_n = \frac{1}{C-1}\sum_{j\ne y_n}(f_{y_n}(x_n) - f_j(x_n)) / \|f(x_n)\|_2
    = \frac{C f_{y_n} - \sum_j f_j}{(C-1)\,\|f(x_n)\|_2}`.

    Scale invariant for an L-homogeneous f (numerator and denominator both scale by
    :math:`c^L`); a sample whose output vector is zero gets 0.
    """
    z = _check_logits(logits).to(torch.float64)
    C = z.shape[1]
    num = (C * z.gather(1, y.view(-1, 1)).squeeze(1) - z.sum(1)) / (C - 1)
    den = torch.linalg.vector_norm(z, dim=1)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.zeros_like(num))


def _log_ce(logits64: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathrm{CE}_n`, accurate also when CE underflows (large margins):
    :math:`\mathrm{CE}_n = \mathrm{softplus}(s_n)`, :math:`s_n = \log\sum_{j\ne y_n} e^{f_j - f_{y_n}}`."""
    fy = logits64.gather(1, y.view(-1, 1))
    s = _others(logits64 - fy, y).logsumexp(1)
    # log softplus(s) = s + log(log1p(e^s)/e^s); for s < -30 the bracket is -e^s/2 to 1e-26
    small = s < -30
    safe = torch.where(small, torch.zeros_like(s), s)
    return torch.where(small, s - 0.5 * torch.exp(s), torch.log(F.softplus(safe)))


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    r"""``(S, log S)`` with :math:`S = \sum_n \mathrm{CE}_n` (float64; ``log S`` stays finite
    when S underflows)."""
    log_s = float(torch.logsumexp(_log_ce(logits.to(torch.float64), y), 0))
    return math.exp(log_s), log_s


def smoothed_margin(logits: torch.Tensor, y: torch.Tensor, norm: torch.Tensor | float,
                    degree: int) -> tuple[float, bool]:
    r"""Lyu & Li's smoothed normalised margin for the summed cross-entropy (SPEC §2 ``smoothed``):

    :math:`\tilde\gamma = \log\frac{1}{e^{S} - 1} / \|\theta\|^L`, :math:`S = \sum_n \mathrm{CE}_n`,

    returned with ``S < log 2`` (only then is the numerator positive and Lyu & Li's monotonicity
    in force). ``norm`` is :math:`\|\theta\|`, ``degree`` L.
    """
    S, log_s = summed_cross_entropy(logits, y)
    return smoothed_from_sum(S, log_s, norm, degree)


def smoothed_from_sum(S: float, log_s: float, norm: torch.Tensor | float, degree: int) -> tuple[float, bool]:
    r""":func:`smoothed_margin` from the summed loss ``S`` and ``log S`` (e.g. summed over the
    shards of a distributed run)."""
    if S < 1e-5:            # -log(expm1(S)) = -log S - log(1 + S/2 + S^2/6 + ...)
        num = -log_s - math.log1p(S / 2 + S * S / 6)
    elif S <= 30:
        num = -math.log(math.expm1(S))
    else:                   # -log(e^S - 1) = -S - log(1 - e^-S)
        num = -S - math.log1p(-math.exp(-S))
    return num * math.exp(-degree * math.log(float(norm))), S < math.log(2)    # not / ||theta||^L: it overflows


def param_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    r""":math:`\|\theta\|_2` over all given tensors (differentiable)."""
    params = list(params)
    if not params:
        raise ConfigError("no parameters to normalise by")
    return torch.sqrt(sum(torch.linalg.vector_norm(p, dtype=torch.float64) ** 2 for p in params))


def get_normalisation(model: nn.Module, normalisation: str = "auto", degree: int | None = None) -> Normalisation:
    """The margin normalisation of ``model`` (SPEC §2): ``"auto"`` all parameters when
    ``model.degree`` is an int, else the head's; ``"full"`` on a non-homogeneous model raises
    :class:`NotHomogeneousError`. A module without ``head``/``head_degree`` needs ``degree``
    (or ``model.degree``) and is normalised by all its parameters."""
    if normalisation not in ("auto", "full", "head"):
        raise ConfigError(f"normalisation must be auto, full or head, got {normalisation!r}")
    params = tuple(p for p in model.parameters() if p.requires_grad)
    model_degree = getattr(model, "degree", None) if degree is None else degree
    if not hasattr(model, "head") or not hasattr(model, "head_degree"):
        if model_degree is None:
            raise ConfigError(f"{type(model).__name__} declares no homogeneity degree; pass degree=L "
                              "(margin_theory.homogeneity.numeric_homogeneity estimates it)")
        if normalisation == "head":
            raise ConfigError(f"{type(model).__name__} has no .head; use normalisation='full'")
        return Normalisation("full", int(model_degree), params)
    if normalisation == "full" or (normalisation == "auto" and model_degree is not None):
        if model_degree is None:
            raise NotHomogeneousError(
                f"model {getattr(model, 'name', type(model).__name__)!r} is not homogeneous in all its "
                "parameters (biases or BatchNorm break it), so q/||theta||^L is not scale invariant; "
                "use the head-only normalisation (normalisation='head')")
        return Normalisation("full", int(model_degree), params)
    if model.head_degree is None:
        raise NotHomogeneousError("the model's head is not homogeneous in its own parameters")
    return Normalisation("head", int(model.head_degree), tuple(model.head.parameters()))


def normalised_margins(q: torch.Tensor, norm: torch.Tensor, degree: int) -> torch.Tensor:
    r""":math:`\gamma_n = q_n / \|\theta\|^L`, computed as ``q * exp(-L log ||theta||)`` in float64."""
    return q.to(torch.float64) * torch.exp(-degree * torch.log(norm.to(torch.float64)))


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Logits of ``model`` on ``X`` in chunks, in eval mode (restores the mode after)."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs) if outs else torch.empty(0, getattr(model, "num_classes", 0))


@torch.no_grad()
def compute_margins(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, normalisation: str = "auto",
                    degree: int | None = None, batch_size: int = 8192,
                    logits: torch.Tensor | None = None) -> MarginResult:
    """Margins, accuracy and mean cross-entropy of ``model`` on (X, y): one inference pass (none
    with precomputed ``logits``) plus O(N C) work (SPEC §2, §9)."""
    if X.shape[0] == 0:
        raise ConfigError("cannot compute margins on an empty data set")
    if X.shape[0] != y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    spec = get_normalisation(model, normalisation, degree)
    logits = predict(model, X, batch_size) if logits is None else logits
    y = y.to(logits.device)
    z = logits.to(torch.float64)
    q = margin_values(z, y)
    norm = spec.norm()
    gamma = normalised_margins(q, norm, spec.degree)
    smoothed, meaningful = smoothed_margin(z, y, norm, spec.degree)
    return MarginResult(q=q, gamma=gamma, gamma_bar=float(gamma.mean()), gamma_min=float(gamma.min()),
                        theta_norm=float(norm), degree=spec.degree, normalisation=spec.kind,
                        accuracy=float((q > 0).to(torch.float64).mean()),      # accuracy(): a tie is wrong
                        loss=float((torch.logsumexp(z, 1) - z.gather(1, y.view(-1, 1)).squeeze(1)).mean()),
                        gamma_output=float(output_margins(z, y).mean()),
                        gamma_smoothed=smoothed, smoothed_meaningful=meaningful)


def margin_regularised_loss(logits: torch.Tensor, y: torch.Tensor, model: nn.Module, lam: float = 0.0,
                            normalisation: str | Normalisation = "auto", reduction: str = "mean") -> torch.Tensor:
    r"""Paper eq. 5: :math:`\mathcal{L} = \mathrm{CE} - \lambda\,\bar\gamma(\text{batch})`, :math:`\lambda \ge 0`.

    :math:`\bar\gamma` is differentiable in :math:`\theta` through both q and the norm.
    ``lam = 0`` is plain cross-entropy (no extra work). ``reduction="sum"``: the batch sum of
    :math:`\mathrm{CE}_n - \lambda\gamma_n` instead of its mean (a rank's part of a distributed batch).
    """
    if lam < 0:
        raise ConfigError(f"margin regularisation lambda must be >= 0, got {lam}")
    ce = F.cross_entropy(logits, y, reduction=reduction)
    if lam == 0:
        return ce
    spec = normalisation if isinstance(normalisation, Normalisation) else get_normalisation(model, normalisation)
    gamma = normalised_margins(margin_values(logits, y), spec.norm(), spec.degree)
    return ce - lam * (gamma.sum() if reduction == "sum" else gamma.mean()).to(ce.dtype)
