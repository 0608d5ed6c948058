r"""The trainer: SGD on a whole-dataset-on-device tensor, margin trajectories per epoch (SPEC §2, §7, §9).

Usage, files and flags: ``docs/usage.md`` (Training); run folders, ``--overwrite`` and ``--resume``:
``docs/safety.md``; several processes (``torchrun ... -m margin_theory.train``): ``docs/distributed.md``.

* Each epoch's batches are the slices of one device-side ``torch.randperm(N, generator=g)``, the last
  partial (:func:`epoch_batches`); ``--augment`` (Table 3): zero-pad 4, random crop, random horizontal
  flip, one gather per batch (:func:`augment_batch`).
* :class:`SGD`; the lr of (1-based) epoch e is ``lr * lr_gamma ** #{m in milestones : m < e}`` (:func:`lr_at`).
  Loss: ``margins.margin_regularised_loss`` = CE - lambda * gamma_bar(batch) (paper eq. 5; ``--margin-reg``).
* After every epoch, and for epoch 0, one no-grad eval-mode pass over the FULL training set
  (``margins.compute_margins``: float64, TF32 off) and the test accuracy give one ``metrics.jsonl`` row
  with the keys :data:`METRIC_KEYS` (gamma = q / ||theta||^degree, SPEC §2); monitor epochs (``--monitor-every
  K``: 0, K, 2K, ... and the last) add ``theorem2``, ``maxmargin`` and ``monitor_seconds``.
* The loss is read and checked for non-finite values once per epoch, *before* anything is saved.
* ``torch.manual_seed(seed)`` right before the model is built (the caller's RNG restored) and a generator
  seeded with ``seed`` for batches and augmentation: CPU runs are bitwise reproducible, resumed runs equal
  uninterrupted ones.

``--checkpoint-every``: ``auto`` every ``ceil(epochs/10)`` epochs, ``K`` epoch 0 and every K-th, ``0`` the
final only, ``none`` never. ``--resume``: every option not given (not ``--device``) comes from the run's
``config.json`` and must equal it except for :data:`RESUME_MAY_DIFFER`. Exit status: 0 ok; 2 bad input (one
line); 3 diverged (the last good checkpoint kept); 4 a rank failed; 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import runfolder as _runfolder
from ._util import (ArgumentParser, CheckpointError, ConfigError, NonFiniteLossError, atomic_write_json,
                    atomic_write_text, check_output_path, cli_entry, clip, dumps_json, explicit_options, float_in,
                    int_at_least, is_int, is_number, nonneg_int, one_line, positive_int, print_json, short_repr, sync)
from ._util import progress as _progress_bar
from .checkpoint import (NonFiniteCheckpointError, checkpoint_files, checkpoint_stem, comparable,
                         latest_checkpoint, model_args_from, read_sidecar, restore_checkpoint,
                         save_checkpoint)
from .data import describe_datasets, load_dataset
from .distributed import EXIT_RANK_FAILED, RankFailedError as _RankFailed, setup as _dist_setup
from .margins import (MARGIN_DEFINITIONS, accuracy, compute_margins, get_normalisation, margin_regularised_loss,
                      n_correct, predict)
from .models import INITS, ModelSpec, describe_model_names, parameter_count, unique_parameter_count
from .protocols import get_protocol, protocol_names

__all__ = [
    "TrainConfig", "TrainResult", "train", "build_model_for", "select_device", "epoch_batches",
    "augment_batch", "lr_at", "read_metrics", "main", "METRIC_KEYS", "EXIT_NONFINITE",
]

PROG = "python -m margin_theory.train"
EXIT_NONFINITE = 3
#: keys of every metrics.jsonl line (monitor epochs add ``theorem2``, ``maxmargin`` and ``monitor_seconds``)
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "test_acc_best", *MARGIN_DEFINITIONS,
               "theta_norm", "degree", "normalisation", "lr", "epoch_seconds")
#: configuration fields that may change when resuming (they do not affect the trajectory)
RESUME_MAY_DIFFER = frozenset({"epochs", "device", "out", "resume", "overwrite", "quiet", "json",
                               "checkpoint_every", "monitor_every", "monitor_subset", "eval_batch_size",
                               "data_dir", "download"})
#: options ``--resume`` never takes from the saved configuration
_RESUME_OWN = frozenset({"out", "resume", "overwrite", "quiet", "json", "device"})
#: the one strict metrics.jsonl reader (``margin_theory.runfolder.read_metrics``)
read_metrics = _runfolder.read_metrics
_SPEC = ModelSpec()     # the defaults of the model fields


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every setting of a training run; the fields are the CLI flags (``--n-train`` -> ``n_train``).

    Defaults: the paper's MNIST protocol (SPEC §7): SGD, lr 0.01, batch 100, momentum 0, weight decay 0,
    10 epochs. ``checkpoint_every``: ``None`` auto, ``-1`` none, ``0`` final only, ``K`` every K epochs.
    ``lr_milestones``: epochs after which the lr is multiplied by ``lr_gamma``. The model fields are
    :class:`~margin_theory.models.ModelSpec`'s (:meth:`model_spec`, which checks them); ``init``,
    ``linear_term`` and ``eval_every_steps`` default to the ``protocol``'s.
    """

    dataset: str = "digits"
    model: str = _SPEC.name
    rank: int = _SPEC.rank
    layers: int = _SPEC.layers
    hidden: list[int] | None = _SPEC.hidden
    conv_channels: int = _SPEC.conv_channels
    conv_bias: bool = _SPEC.conv_bias
    protocol: str = "paper"
    init: str | None = None
    linear_term: bool | None = None
    affine: bool = _SPEC.affine
    eval_every_steps: int | None = None
    epochs: int = 10
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    margin_reg: float = 0.0
    augment: bool = False
    normalize: bool = False
    data_dir: str | None = None
    download: bool = False
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    checkpoint_every: int | None = None
    monitor_every: int = 0
    monitor_subset: int = 512
    eval_batch_size: int | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    json: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, applicable: bool = True) -> "TrainConfig":
        """Build from a dict (e.g. ``config.json``); unknown keys raise :class:`ConfigError`."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training configuration must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d).validate(applicable=applicable)

    def validate(self, *, applicable: bool = True) -> "TrainConfig":
        """Check and normalise every value; :class:`ConfigError` names the first bad one.
        ``applicable=False``: a partial table of settings (an experiment's shared [train])."""
        for s in ("dataset", "model", "device"):
            if not isinstance(getattr(self, s), str) or not getattr(self, s):
                raise ConfigError(f"{s} must be a non-empty string")
        proto = get_protocol(self.protocol)     # its choices fill what was not set explicitly
        if self.init is None:
            self.init = proto.init
        if self.linear_term is None:
            self.linear_term = proto.linear_term and ModelSpec(self.model).head == "quadratic"
        if self.eval_every_steps is None:
            self.eval_every_steps = proto.eval_every_steps
        for name in _INTS:                          # 2.0 from JSON or TOML is 2
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer():
                setattr(self, name, int(v))
        for name, check in _CHECKS.items():         # the model's integers: ModelSpec checks them
            v, integral = getattr(self, name), name in _INTS
            if v is None and _INTS.get(name):
                continue
            if not (is_int(v) if integral else is_number(v)):
                what = "an integer" if integral else "a finite number"
                raise ConfigError(f"{name} must be {what}, got {short_repr(v, 40)}")
            try:
                setattr(self, name, check(repr(v if integral else float(v))))
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{name} {exc}") from None
        spec = self.model_spec()            # checks every model field
        self.hidden = spec.as_dict()["hidden"]
        if not isinstance(self.lr_milestones, (list, tuple)) or \
                any(not is_int(m) or m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones must be positive integers, got {self.lr_milestones!r}")
        self.lr_milestones = [int(m) for m in self.lr_milestones]
        if self.lr_milestones != sorted(set(self.lr_milestones)):
            raise ConfigError(f"lr_milestones must be strictly increasing, got {self.lr_milestones}")
        for b in _BOOLS:
            if not isinstance(getattr(self, b), bool):
                raise ConfigError(f"{b} must be true or false, got {getattr(self, b)!r}")
        for p in ("data_dir", "out"):
            if getattr(self, p) is not None:
                setattr(self, p, str(getattr(self, p)))
        if applicable:
            spec.check_applicable()
        if self.resume and not self.out:
            raise ConfigError("--resume needs --out DIR (the run to continue)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if self.checkpoint_every not in (None, -1) and not self.out:
            raise ConfigError("--checkpoint-every needs --out DIR (checkpoints are written there)")
        return self

    def model_spec(self) -> ModelSpec:
        """The :class:`~margin_theory.models.ModelSpec` of this run (its model fields, checked)."""
        return ModelSpec.from_mapping({f: getattr(self, f) for f in ("model",) + ModelSpec.args()})

    def checkpoint_interval(self) -> int | None:
        """Resolved checkpoint interval: None = never, 0 = final only, K >= 1."""
        if self.checkpoint_every is None:
            return max(1, math.ceil(self.epochs / 10)) if self.epochs > 0 else 1
        return None if self.checkpoint_every < 0 else self.checkpoint_every


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: the integer fields (True: may be None)
_INTS = {f.name: f.type.endswith("None") for f in dataclasses.fields(TrainConfig) if f.type.startswith("int")}
_BOOLS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type.startswith("bool"))
#: the checks of the numeric options, shared by their flags and :meth:`TrainConfig.validate`
_CHECKS = {"eval_every_steps": nonneg_int, "epochs": nonneg_int, "batch_size": positive_int, "seed": nonneg_int,
           "n_train": positive_int, "n_test": positive_int, "checkpoint_every": int_at_least(-1),
           "monitor_every": nonneg_int, "monitor_subset": positive_int, "eval_batch_size": positive_int,
           "lr": float_in(0, lo_open=True), "momentum": float_in(0, 1), "weight_decay": float_in(0),
           "lr_gamma": float_in(0, lo_open=True), "margin_reg": float_in(0)}


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained ``model``, the per-epoch ``history`` (the metrics.jsonl lines,
    epoch 0 first), the ``config``, the ``out`` folder (or None), the ``final`` summary and the ``dataset``."""

    model: nn.Module
    history: list[dict]
    config: TrainConfig
    out: Path | None
    final: dict
    dataset: Any


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N`` (checked)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def build_model_for(config: TrainConfig, dataset) -> nn.Module:
    """``models.build_model`` with the config's model options and the dataset's shape."""
    return config.model_spec().build(dataset.input_shape, dataset.num_classes)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> list[torch.Tensor]:
    """One epoch's batches: a device-side random permutation of ``range(n)`` cut into
    slices of ``batch_size`` (the last one partial). Every index occurs exactly once."""
    if n < 0 or batch_size < 1:
        raise ConfigError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if n == 0:
        return []
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return list(torch.randperm(n, generator=generator, device=device).split(batch_size))


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
                  flip: bool = True, *, draws: int | None = None, select: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Random crop with zero padding ``pad`` back to ``H x W`` plus random horizontal flip.

    ``x``: ``(B, C, H, W)``. For sample b, offsets ``(i_b, j_b)`` uniform in
    ``{0..2 pad}`` and flip bit ``f_b`` (probability 1/2):
    ``out[b, c, r, s] = xpad[b, c, i_b + r, j_b + (W-1-s if f_b else s)]`` - one gather
    for the whole batch, on ``x``'s device, random numbers from ``generator``.

    ``draws``/``select`` (multi-process training): draw for ``draws`` samples (the global batch) and
    apply those at positions ``select`` (this rank's part, ``len(select) == B``), so every rank consumes
    the generator exactly as one process training the whole batch.
    """
    if x.dim() != 4:
        raise ConfigError(f"augmentation needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    dev = x.device
    nd = B if draws is None else int(draws)

    def draw(t: torch.Tensor) -> torch.Tensor:          # this rank's part of the global draws
        return t if select is None else t[select]

    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = draw(torch.randint(0, 2 * pad + 1, (nd,), generator=generator, device=dev))
        ox = draw(torch.randint(0, 2 * pad + 1, (nd,), generator=generator, device=dev))
    else:
        xp, oy = x, torch.zeros(B, dtype=torch.long, device=dev)
        ox = oy
    s = torch.arange(W, device=dev).expand(B, W)
    if flip:
        f = draw(torch.rand(nd, generator=generator, device=dev) < 0.5)
        s = torch.where(f[:, None], (W - 1) - s, s)
    rows = oy[:, None] + torch.arange(H, device=dev)            # (B, H)
    cols = ox[:, None] + s                                      # (B, W)
    bi = torch.arange(B, device=dev)[:, None, None, None]
    ci = torch.arange(C, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class SGD(torch.optim.SGD):
    r"""``torch.optim.SGD`` with a lean ``step`` and ``zero_grad`` for the hot loop.

    The same update as torch's single-tensor SGD (the CPU default), so the same numbers,
    state and ``state_dict`` (checkpoints and resume are unaffected):
    :math:`g \leftarrow \nabla + \mathrm{wd}\,p`; with momentum
    :math:`b \leftarrow \mu b + (1-\tau) g` (:math:`b = g` at the first step) and
    :math:`g \leftarrow b` (Nesterov: :math:`g + \mu b`); :math:`p \leftarrow p - \mathrm{lr}\,g`.
    It skips the wrappers of ``Optimizer.step`` (profiling hooks, differentiable and
    foreach dispatch), about 80 microseconds a step that dominate small models on CPU.
    """

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ConfigError("margin_theory.train.SGD.step takes no closure")
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            damp, nesterov, maximize = group["dampening"], group["nesterov"], group["maximize"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if maximize:
                    g = -g
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if mom != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(g).detach()
                    else:
                        buf.mul_(mom).add_(g, alpha=1 - damp)
                    g = g.add(buf, alpha=mom) if nesterov else buf
                p.add_(g, alpha=-lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor,
                batch_size: int, generator: torch.Generator | None = None, *, augment: bool = False,
                margin_reg: float = 0.0, normalisation=None, bar=None, on_step=None, dctx=None,
                n_global: int | None = None):
    """One epoch of SGD over a device-resident data set (SPEC §9): the hot loop of :func:`train`.

    Each step gathers its slice of the permutation (:func:`epoch_batches`) with ``index_select``
    (7x faster than ``X[idx]`` on CPU), optionally augments on-device and minimises
    ``CE - margin_reg * gamma_bar(batch)`` (paper eq. 5); no host sync in the loop. ``on_step(i)``
    runs after step i (0-based). With ``dctx`` (a :class:`~margin_theory.distributed.DistContext`)
    ``model`` is DDP-wrapped, ``X, Y`` this rank's shard of ``n_global`` samples, the batches the
    single-process ones (``dctx.epoch_plan``), the rank's loss ``(W / B_k) * sum_{its part} (CE_n -
    margin_reg * gamma_n)``. Returns the sum of the batch losses weighted by batch size (a float64
    device tensor, all-reduced with ``dctx``).
    """
    device = X.device
    model.train()
    if dctx is None:        # (local indices, positions in the global batch, global batch size)
        batches = [(i, None, i.shape[0]) for i in epoch_batches(Y.shape[0], batch_size, generator, device)]
    else:
        batches = list(zip(*dctx.epoch_plan(n_global, batch_size, generator, device)))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    show = bar is not None and not bar.disable
    correct = torch.zeros((), dtype=torch.float64, device=device) if show and dctx is None else None
    seen = 0
    refresh = max(1, len(batches) // 20)
    for i, (idx, within, bk) in enumerate(batches):
        xb, yb = X.index_select(0, idx), Y.index_select(0, idx)
        if augment:
            xb = augment_batch(xb, generator, draws=bk, select=within)
        logits = model(xb)
        opt.zero_grad(set_to_none=True)
        # distributed: this rank's part of the batch sum; DDP averages over W ranks -> the batch mean
        loss = margin_regularised_loss(logits, yb, model, margin_reg, normalisation or "auto",
                                       reduction="mean" if dctx is None else "sum")
        (loss if dctx is None else loss * (dctx.world_size / bk)).backward()
        opt.step()
        seen += bk
        loss_sum.add_(loss.detach(), alpha=bk if dctx is None else 1)
        if on_step is not None:
            on_step(i)
        if show:
            if correct is not None:
                correct += n_correct(logits.detach(), yb)
                if i % refresh == 0 or i == len(batches) - 1:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.3f}",
                                    refresh=False)
            bar.update(1)
    return loss_sum if dctx is None else dctx.all_reduce_(loss_sum)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: ``lr * lr_gamma ** #{m : m < epoch}`` (MultiStepLR)."""
    return config.lr * config.lr_gamma ** sum(1 for m in config.lr_milestones if m < epoch)


@contextlib.contextmanager
def _matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, set TF32 for matmul/cuDNN (restored after); no-op on CPU."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _finite(*xs: float) -> bool:
    return all(map(is_number, xs))


class _Diverged(Exception):
    def __init__(self, epoch: int, what: str):
        super().__init__(what)
        self.epoch, self.what = epoch, what


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 4096, dctx=None) -> dict:
    """Full-training-set margins/loss/accuracy and test accuracy in one pass each (eval mode,
    no TF32). Returns the metric keys except ``epoch``, ``lr`` and ``epoch_seconds``; with ``dctx``
    all-reduced over the ranks' shards (:meth:`~margin_theory.distributed.DistContext.evaluate`)."""
    with _matmul_precision(dataset.X_train.device, tf32=False):
        if dctx is not None:
            return dctx.evaluate(model, dataset, batch_size=batch_size)
        m = compute_margins(model, dataset.X_train, dataset.y_train, batch_size=batch_size)
    test_acc = evaluate_test(model, dataset, batch_size)      # TF32 off by itself
    return {"train_loss": m.loss, "train_acc": m.accuracy, "test_acc": test_acc,
            **{k: getattr(m, k) for k in (*MARGIN_DEFINITIONS, "theta_norm", "degree", "normalisation")}}


@torch.no_grad()
def evaluate_test(model: nn.Module, dataset, batch_size: int = 4096, dctx=None) -> float:
    """Test accuracy (argmax of the logits; NaN without test data), eval mode; with ``dctx``
    over every rank's test shard (all-reduced counts, a collective)."""
    n, dev = int(dataset.X_test.shape[0]), dataset.X_train.device
    if dctx is None:
        if n == 0:
            return float("nan")
        with _matmul_precision(dev, tf32=False):     # also inside the TF32 training loop
            return accuracy(predict(model, dataset.X_test, batch_size), dataset.y_test)
    counts = torch.tensor([0.0, n], dtype=torch.float64, device=dev)
    if n > 0:
        with _matmul_precision(dev, tf32=False):
            counts[0] = n_correct(predict(model, dataset.X_test, batch_size), dataset.y_test)
    dctx.all_reduce_(counts)
    correct, total = counts.tolist()
    return correct / total if total > 0 else float("nan")


# ---------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------
def _write_metrics(out: Path, history: list[dict]) -> None:
    with _runfolder.guard_io(out / "metrics.jsonl"):
        atomic_write_text(out / "metrics.jsonl", "".join(dumps_json(r) + "\n" for r in history))


def _write_json(path: Path, obj) -> None:
    with _runfolder.guard_io(path):
        atomic_write_json(path, obj)


def _resume_point(out: Path, config: TrainConfig) -> Path:
    """``--resume``: the latest checkpoint in ``out``. The run's ``config.json`` is the authority: a
    checkpoint sidecar whose configuration differs from it (e.g. an edited optimizer setting), or from
    ``config`` outside :data:`RESUME_MAY_DIFFER`, is refused."""
    resume_path = latest_checkpoint(out)
    if resume_path is None:
        raise CheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'} to resume from")
    sidecar = read_sidecar(resume_path)
    saved = sidecar["config"]
    if saved.get("model") != config.model:
        raise CheckpointError(f"checkpoint {resume_path.name} is for model {saved.get('model')!r}, "
                              f"not {config.model!r}; cannot resume")
    try:
        authority = _runfolder.read_config(out)
    except _runfolder.RunFolderError as exc:    # the resume's error: a caller catches CheckpointError
        raise CheckpointError(f"cannot resume {out}: {exc}") from None
    if authority is not None:
        try:
            authority = TrainConfig.from_dict(authority)
        except ConfigError as exc:
            raise CheckpointError(f"cannot resume {out}: config.json is not a valid configuration: {exc}") from None
    for against, what in ((authority, f"checkpoint {resume_path.name} disagrees with config.json (the run's "
                                      "configuration is the authority)"),
                          (config, "the settings differ from the checkpoint's")):
        diffs = [] if against is None else _config_differences(saved, against)
        if diffs:
            raise CheckpointError(f"cannot resume {out}: {what}: " + "; ".join(diffs))
    if int(sidecar["epoch"]) > config.epochs:
        raise ConfigError(f"--resume: the latest checkpoint is at epoch {sidecar['epoch']}, "
                          f"beyond --epochs {config.epochs}")
    return resume_path


def _config_differences(saved: dict, new: TrainConfig) -> list[str]:
    defaults = TrainConfig().to_dict()
    return [f"--{k.replace('_', '-')} {v!r} (checkpoint: {saved.get(k, defaults[k])!r})"
            for k, v in new.to_dict().items()
            if k not in RESUME_MAY_DIFFER and comparable(saved.get(k, defaults[k])) != comparable(v)]


def _rng_state(g: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    st = {f"generator_{g.device.type}": g.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["torch_cuda"] = torch.cuda.get_rng_state(device)
    return st


def _restore_rng(g: torch.Generator, device: torch.device, rng: dict, seed: int, epoch: int,
                 log: Callable[[str], Any]) -> None:
    key = f"generator_{g.device.type}"
    setters = {key: g.set_state, "torch_cpu": torch.set_rng_state}
    if device.type == "cuda":
        setters["torch_cuda"] = lambda t: torch.cuda.set_rng_state(t, device)
    if key not in rng:
        g.manual_seed(seed + 1000003 * epoch)
        log("note: the checkpoint's generator state is from another device type; reseeded, so "
            "batch order and augmentation differ from an uninterrupted run")
    for name, setter in setters.items():
        if name in rng:
            try:
                setter(rng[name].to("cpu", torch.uint8))
            except (RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(f"the checkpoint's random-generator state {name!r} is invalid: "
                                      f"{clip(one_line(exc))}") from None


def _format_epoch(row: dict, epochs: int) -> str:
    e = row["epoch"]
    tag = f"epoch {e:>{len(str(epochs))}d}/{epochs}" + (" (init)" if e == 0 else "")
    t2 = ""
    if isinstance(row.get("theorem2"), dict):
        applies, v = row["theorem2"].get("theorem_applies"), row["theorem2"].get("velocity")
        t2 = "  theorem2: " + ("A1-A3 hold" if applies else "no claim" if applies is not None else "reported")
        if isinstance(v, (int, float)):
            t2 += f", dgamma/dt {v:+.2e}"
        mm = row.get("maxmargin") or {}
        if mm.get("available"):
            t2 += f"  gamma_min/gamma* {mm['ratio']:+.4f}, cos {mm['cosine']:.4f} ({mm['n']} pts)"
    return (f"{tag}  loss {row['train_loss']:.4f}  train {100 * row['train_acc']:.2f}%  "
            f"test {100 * row['test_acc']:.2f}%  gamma_bar {row['gamma_bar']:+.4e}  "
            f"gamma_min {row['gamma_min']:+.4e}  lr {row['lr']:.3g}  {row['epoch_seconds']:.2f} s{t2}")


# ---------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------
def load_data_for(config: TrainConfig, device: torch.device):
    """The data set a run of ``config`` trains on (dataset, split seed, subsets, normalisation), on ``device``."""
    ds = load_dataset(config.dataset, config.data_dir, download=config.download, seed=config.seed,
                      normalize=config.normalize).subset(config.n_train, config.n_test, seed=config.seed)
    if config.augment and len(ds.input_shape) != 3:
        raise ConfigError(f"--augment needs image data (C, H, W); {ds.name} has input shape {tuple(ds.input_shape)}")
    return ds.to(device, dtype=torch.float32)


def train(config: TrainConfig, *, progress: bool = True, log: Callable[[str], Any] | None | str = "default"
          ) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; see the module docstring.

    Values and sizes (:func:`margin_theory.runfolder.preflight`) and ``--out`` are checked before
    anything is loaded; a run with ``--out`` holds the folder's lock throughout and first removes what
    killed runs left. ``progress``: the tqdm bar. ``log``: one line per epoch and the notes (``None``:
    silence; default ``print`` unless ``config.quiet``). Under torchrun with ``WORLD_SIZE > 1``:
    DistributedDataParallel (:mod:`margin_theory.distributed`). Raises :class:`ConfigError` /
    :class:`DataError` / :class:`CheckpointError` on bad input, :class:`NonFiniteLossError` (attributes
    ``epoch``, ``checkpoint``, ``history``) on divergence, :class:`~margin_theory.distributed.RankFailedError`.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
    config = copy.deepcopy(config).validate()
    _runfolder.preflight(config)
    if log == "default":
        log = None if config.quiet else print
    dctx = _dist_setup(config.device)
    locked = config.out and (dctx is None or dctx.is_writer)      # rank 0 holds the folder
    try:
        with _runfolder.RunLock(check_output_path(config.out, kind="dir")) if locked else contextlib.nullcontext():
            return _train(config, progress=progress, log=log, dctx=dctx)
    finally:
        if dctx is not None:
            dctx.close()


def _train(config: TrainConfig, *, progress: bool, log: Callable[[str], Any] | None, dctx=None) -> TrainResult:
    """The body of :func:`train` for its validated copy of the config (the caller holds the run folder's
    lock); ``dctx``: the :class:`~margin_theory.distributed.DistContext` of a multi-process run, or None."""
    t_run = time.perf_counter()
    if config.data_dir:     # stored absolute, so that the run can be checked from any folder
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    writer = dctx is None or dctx.is_writer       # rank 0 alone writes the run folder and logs
    log = (log if writer else None) or (lambda _msg: None)
    device = select_device(config.device) if dctx is None else dctx.device
    out = Path(config.out).expanduser() if config.out else None
    wout = out if writer else None                # where this process writes
    interval = config.checkpoint_interval() if out is not None else None
    if wout is not None:
        removed = _runfolder.remove_orphans(out)
        if removed:
            log(f"note: removed {len(removed)} file(s) an interrupted run left in {out}: "
                + ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    resume_path = _resume_point(out, config) if out is not None and config.resume else None
    if wout is not None and not config.resume:
        existing = _runfolder.existing_run(out)
        if existing and not config.overwrite:
            raise ConfigError(f"{out} already holds a training run ({', '.join(existing)}); "
                              "pass --resume to continue it or --overwrite to replace it")
        if existing:
            _runfolder.clear_run(out)
    ds = load_data_for(config, device if dctx is None else torch.device("cpu"))
    shard = ds if dctx is None else dctx.shard(ds, device)   # distributed: this rank's part, on the device
    for flag, want, have in (("--n-train", config.n_train, int(ds.y_train.shape[0])),
                             ("--n-test", config.n_test, int(ds.y_test.shape[0]))):
        if want is not None and want > have:
            log(f"note: {flag} {want} exceeds the {have} points of {ds.name}; all {have} are used")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model_for(config, ds).to(device)
    if dctx is not None:
        model = dctx.prepare_model(model)
    opt = SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    g = torch.Generator(device=device)
    g.manual_seed(config.seed)
    norm_spec = get_normalisation(model) if config.margin_reg > 0 else None
    eval_bs = config.eval_batch_size or (1024 if config.model_spec().body.startswith("resnet") else 4096)
    N = int(ds.y_train.shape[0])
    steps_per_epoch = -(-N // config.batch_size)
    history: list[dict] = []
    step, first_epoch, last_ckpt, resumed_from = 0, 0, None, None       # epoch 0: the initialisation
    if resume_path is not None:
        ck = restore_checkpoint(resume_path, model, opt, model_args=model_args_from(config, model))
        _restore_rng(g, device, ck.rng_state, config.seed, ck.epoch, log)
        first_epoch, step = ck.epoch + 1, ck.step
        last_ckpt, resumed_from = ck.path, ck.epoch
        history = [r for r in read_metrics(out) if r["epoch"] <= ck.epoch]
        if not history or history[-1]["epoch"] != ck.epoch:
            log(f"note: {out / 'metrics.jsonl'} lacks epochs up to {ck.epoch}; history restarts from the checkpoint")
            history += [ck.metrics] if ck.metrics else []
        log(f"resuming {out} from {ck.path.name} (epoch {ck.epoch}, step {ck.step})")
    net = model if dctx is None else dctx.wrap(model)      # DDP construction syncs rank 0's state
    writing = dctx.critical if dctx is not None else contextlib.nullcontext
    if wout is not None:
        with _runfolder.guard_io(out):
            out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", config.to_dict())
        _write_metrics(out, history)
    gap = None          # the max-margin monitor, solved once per run

    def run_monitor(row: dict) -> None:
        nonlocal gap
        from .assumptions import theorem2_report
        from .maxmargin import GapMonitor

        t0 = time.perf_counter()
        was = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                    _matmul_precision(device, tf32=False):
                rep = theorem2_report(model, ds.X_train, ds.y_train, subset=config.monitor_subset, seed=config.seed)
        finally:
            model.train(was)
        row["theorem2"] = rep.as_dict()
        if gap is None:
            gap = GapMonitor(model, ds.X_train, ds.y_train, subset=config.monitor_subset, seed=config.seed)
        row["maxmargin"] = gap.report(model)
        row["monitor_seconds"] = time.perf_counter() - t0

    # the best test accuracy over every evaluation so far: per epoch, and every
    # eval_every_steps SGD steps when the protocol asks for it (the authors' "best")
    best = float(history[-1].get("test_acc_best", history[-1]["test_acc"])) if history else float("-inf")

    def step_eval(i: int) -> None:          # every rank calls it at the same step (a collective in DDP)
        nonlocal best
        if i % config.eval_every_steps == 0 and ds.X_test.shape[0] > 0:
            acc = evaluate_test(model, shard, eval_bs, *([dctx] if dctx else []))   # tests patch 3 arguments
            best = max(best, acc)

    def save(epoch: int, st: int, rng: dict, row: dict) -> Path:
        with writing():
            return save_checkpoint(checkpoint_stem(out, epoch), model, opt, config, epoch, st, rng, row)

    snapshot: dict | None = None

    def record(epoch: int, row: dict) -> None:
        """Log and write the row of a good epoch, then checkpoint it or (checkpointing on) hold an
        in-memory copy, so that a later divergence can still write the last good checkpoint."""
        nonlocal best, last_ckpt, snapshot
        if math.isfinite(row["test_acc"]):
            best = max(best, row["test_acc"])
        row["test_acc_best"] = best if math.isfinite(best) else float("nan")
        history.append(row)
        if wout is not None:
            with writing():
                _write_metrics(out, history)
        log(_format_epoch(row, config.epochs))
        if interval is not None and (epoch == config.epochs or (interval > 0 and epoch % interval == 0)):
            if wout is None:                # not rank 0: the path rank 0 writes
                path = checkpoint_files(checkpoint_stem(out, epoch))[0]
            else:
                try:
                    path = save(epoch, step, _rng_state(g, device), row)
                except NonFiniteCheckpointError as exc:   # never written: the run diverged
                    raise _Diverged(epoch, str(exc)) from None
            last_ckpt, snapshot = path, None
        elif interval is not None and wout is not None:
            snapshot = {"epoch": epoch, "step": step, "row": row,
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                        "optim": copy.deepcopy(opt.state_dict()), "rng": _rng_state(g, device)}

    def where(kept: Path | None) -> str:
        if kept is not None:
            return f"last good checkpoint kept: {kept}"
        return "no checkpoint (none was written)" if out is not None else "no checkpoint (no --out)"

    old_bench = torch.backends.cudnn.benchmark
    try:
        with _matmul_precision(device, tf32=True):
            torch.backends.cudnn.benchmark = old_bench or device.type == "cuda"
            for epoch in range(first_epoch, config.epochs + 1):
                lr = lr_at(config, max(epoch, 1))
                t0 = time.perf_counter()
                if epoch > 0:
                    for group in opt.param_groups:
                        group["lr"] = lr
                    if dctx is not None:
                        dctx.epoch = epoch
                    bar = _progress_bar(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                                        quiet=not (progress and writer) or config.quiet)
                    with bar, dctx.guard(f"training epoch {epoch}") if dctx else contextlib.nullcontext():
                        loss_sum = train_epoch(net, opt, shard.X_train, shard.y_train, config.batch_size, g,
                                               augment=config.augment, margin_reg=config.margin_reg,
                                               normalisation=norm_spec, bar=bar, dctx=dctx, n_global=N,
                                               on_step=step_eval if config.eval_every_steps > 0 else None)
                    step += steps_per_epoch
                    if not bool(torch.isfinite(loss_sum)):     # one sync per epoch
                        raise _Diverged(epoch, f"non-finite training loss ({float(loss_sum) / N})")
                row = {"epoch": epoch, **evaluate(model, shard, batch_size=eval_bs, dctx=dctx), "lr": lr}
                sync(device)
                row["epoch_seconds"] = time.perf_counter() - t0
                if epoch == 0 and not _finite(row["train_loss"], row["theta_norm"]):
                    raise _Diverged(0, "the initial model gives a non-finite loss")
                if epoch > 0 and not _finite(row["train_loss"], row["theta_norm"], row["gamma_bar"]):
                    raise _Diverged(epoch, "non-finite loss or weights after the epoch "
                                           f"(train loss {row['train_loss']}, ||theta|| {row['theta_norm']})")
                if writer and config.monitor_every > 0 and (epoch % config.monitor_every == 0
                                                            or epoch == config.epochs):
                    run_monitor(row)
                record(epoch, row)
    except _RankFailed as exc:
        err = type(exc)(f"{one_line(exc)}; {where(last_ckpt)}")
        err.checkpoint, err.history = last_ckpt, history
        raise err from None
    except _Diverged as exc:
        kept = last_ckpt
        if snapshot is not None:                    # a good epoch after the last checkpoint: write it now
            model.load_state_dict(snapshot["model"])
            opt.load_state_dict(snapshot["optim"])
            with contextlib.suppress(NonFiniteCheckpointError):     # not good after all: keep the older one
                kept = save(snapshot["epoch"], snapshot["step"], snapshot["rng"], snapshot["row"])
        err = NonFiniteLossError(f"training diverged in epoch {exc.epoch} at lr {lr_at(config, max(exc.epoch, 1)):g}: "
                                 f"{exc.what}; stopped; {where(kept)}")
        err.epoch, err.checkpoint, err.history = exc.epoch, kept, history
        raise err from None
    finally:
        torch.backends.cudnn.benchmark = old_bench
    final = _summary(config, model, ds, history, device, out, last_ckpt, resumed_from, time.perf_counter() - t_run)
    final["world_size"] = 1 if dctx is None else dctx.world_size
    if wout is not None:
        with writing():
            _write_json(out / "summary.json", final)
    return TrainResult(model=model, history=history, config=config, out=out, final=final, dataset=ds)


def _summary(config, model, ds, history, device, out, last_ckpt, resumed_from, seconds) -> dict:
    last = history[-1] if history else {}
    times = [r["epoch_seconds"] for r in history if r.get("epoch", 0) > 0 and r.get("epoch_seconds") is not None]
    tests = [r["test_acc"] for r in history if isinstance(r.get("test_acc"), (int, float))]
    return {
        "status": "ok", "dataset": ds.name, "model": config.model, "epochs": int(last.get("epoch", 0)),
        **{k: last.get(k) for k in ("train_loss", "train_acc", "test_acc")},
        "best_test_acc": last.get("test_acc_best", max(tests) if tests else None),
        "protocol": config.protocol, "eval_every_steps": config.eval_every_steps,
        **{k: last.get(k) for k in ("gamma_bar", "gamma_min", "theta_norm", "degree", "normalisation")},
        "initial_gamma_bar": history[0].get("gamma_bar") if history else None,
        "mean_epoch_seconds": sum(times) / len(times) if times else None,
        "total_seconds": seconds,
        "parameters": parameter_count(model), "unique_parameters": unique_parameter_count(model),
        "n_train": int(ds.y_train.shape[0]), "n_test": int(ds.y_test.shape[0]),
        "input_shape": list(ds.input_shape), "num_classes": int(ds.num_classes),
        "device": str(device), "out": str(out) if out is not None else None,
        "checkpoint": str(last_ckpt) if last_ckpt is not None else None,
        "resumed_from_epoch": resumed_from,
        "config": config.to_dict(),
    }


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def _int_list(s: str) -> list[int]:
    try:
        vals = [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers: {s!r}")
    return vals


def _milestones(s: str) -> list[int]:      # their order is checked by TrainConfig.validate
    return [] if s.strip() in ("", "none") else _int_list(s)


def _checkpoint_every(s: str) -> int | None:
    s = s.strip().lower()
    return {"auto": None, "none": -1}[s] if s in ("auto", "none") else nonneg_int(s)


def _number(g, flag: str, **kw) -> None:
    """A numeric option on ``g``: its check from :data:`_CHECKS`, its default from :class:`TrainConfig`."""
    name = flag[2:].replace("-", "_")
    g.add_argument(flag, type=_CHECKS[name], default=getattr(TrainConfig, name), **kw)


def add_data_model_arguments(g, *, augment: bool = True, data_dir_help: str | None = None) -> None:
    """The data and model options of ``train`` on the parser or group ``g``; shared with ``check``. ``--dataset``
    and ``--model`` are optional for argparse: ``main`` demands them unless ``--resume`` supplies them."""
    g.add_argument("--dataset", default=None, help=describe_datasets())
    g.add_argument("--model", default=None, help=describe_model_names())
    g.add_argument("--rank", type=positive_int, default=_SPEC.rank, help="rank r of lowrank layers (default 1)")
    g.add_argument("--layers", type=positive_int, default=_SPEC.layers,
                   help="number of lowrank layers (deep DIQNN; default 1)")
    g.add_argument("--hidden", type=_int_list, default=None, metavar="H[,H...]",
                   help="hidden width(s): relu2 (default 8000), deep lowrank (default 32)")
    g.add_argument("--conv-channels", type=positive_int, default=_SPEC.conv_channels,
                   help="conv-* channels (default 1)")
    g.add_argument("--no-conv-bias", dest="conv_bias", action="store_false",
                   help="bias-free conv (conv-lowrank is 4-homogeneous either way)")
    g.add_argument("--protocol", choices=protocol_names(), default=TrainConfig.protocol,
                   help="named preset of the choices where the paper's text and the authors' code differ "
                        "(margin_theory.protocols): paper (default) or authors; the flags below override it")
    g.add_argument("--init", choices=INITS, default=None, help="head initialisation (default: the protocol's)")
    g.add_argument("--linear-term", dest="linear_term", action="store_true", default=None,
                   help="full quadratic head f = (x^T W x + w.x)/2, the authors' (default: the protocol's)")
    g.add_argument("--no-linear-term", dest="linear_term", action="store_false",
                   help="full quadratic head f = x^T W x (the paper's)")
    g.add_argument("--affine", action="store_true",
                   help="inputs x -> [x, 1]: linear and constant terms, same homogeneity degree "
                        "(linear, quadratic, lowrank)")
    g.add_argument("--data-dir", default=None, help=data_dir_help or "folder with the standard dataset files "
                   "(stored as an absolute path in the run's config)")
    g.add_argument("--download", action="store_true", help="download missing standard files (md5-checked)")
    _number(g, "--n-train", help="seeded stratified training subset size")
    _number(g, "--n-test", help="seeded stratified test subset size")
    g.add_argument("--normalize", action="store_true", help="per-channel standardisation of image pixels")
    if augment:
        g.add_argument("--augment", action="store_true", help="random crop (pad 4) + horizontal flip, on device")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Train a classifier with SGD on a whole-dataset-on-device tensor and record, every "
                    "epoch, loss, train/test accuracy and the margins gamma_bar, gamma_min over the full "
                    "training set (SPEC §2, §7). Exit status: 0 ok, 2 bad input, 3 non-finite loss.")
    add_data_model_arguments(p.add_argument_group("data and model"))
    o = p.add_argument_group("optimisation")
    _number(o, "--epochs", help="epochs (default 10)")
    _number(o, "--batch-size", help="batch size (default 100)")
    _number(o, "--lr", help="learning rate (default 0.01)")
    _number(o, "--momentum", help="SGD momentum (default 0)")
    _number(o, "--weight-decay", help="weight decay (default 0)")
    o.add_argument("--lr-milestones", type=_milestones, default=[], metavar="E1,E2",
                   help="multiply the lr by --lr-gamma after these epochs (MultiStepLR)")
    _number(o, "--lr-gamma", help="lr factor (default 0.1)")
    _number(o, "--margin-reg", metavar="LAMBDA",
            help="margin regularisation: loss = CE - LAMBDA * gamma_bar(batch) (default 0)")
    _number(o, "--seed", help="seed of split, init, order, augmentation (default 0)")
    o.add_argument("--device", default=TrainConfig.device, help="auto (default; cuda if available), cpu, cuda, cuda:N")
    r = p.add_argument_group("outputs")
    r.add_argument("--out", default=None, metavar="DIR", help="run folder: config.json, metrics.jsonl, checkpoints/")
    r.add_argument("--checkpoint-every", type=_checkpoint_every, default=None, metavar="K|auto|none",
                   help="checkpoint epoch 0 and every K epochs, plus the final one; 0 = final only; "
                        "auto (default) = every ceil(epochs/10)")
    _number(r, "--monitor-every", metavar="K", help="Theorem 2 monitors every K epochs (default 0 = off)")
    _number(r, "--monitor-subset", metavar="N", help="points of the seeded monitor subset (default 512)")
    _number(r, "--eval-batch-size", help="batch of the evaluation passes")
    _number(r, "--eval-every-steps", metavar="K",
            help="also evaluate the test accuracy every K steps and record the best (test_acc_best); "
                 "default: the protocol's (paper 0 = per epoch only, authors 20)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    r.add_argument("--json", action="store_true", help="print one JSON summary on stdout (epoch lines go to stderr)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in _FIELDS}).validate()


def _resume_defaults(args: argparse.Namespace, given: set[str]) -> None:
    """``train --resume --out X``: every option not on the command line comes from X's
    ``config.json`` (else the latest checkpoint's sidecar)."""
    out = Path(args.out).expanduser()
    try:
        saved = _runfolder.read_config(out)
    except _runfolder.RunFolderError:       # train() refuses the resume, naming the file
        saved = None
    if saved is None:
        ck = latest_checkpoint(out)
        saved = read_sidecar(ck)["config"] if ck is not None else None
    if not isinstance(saved, dict) or ("model" in given and args.model != saved.get("model")):
        return       # nothing saved, or another model: train() refuses the resume, naming both
    for k in (set(saved) & set(_FIELDS)) - given - _RESUME_OWN:
        if hasattr(args, k):
            setattr(args, k, saved[k])


def _human_summary(final: dict) -> str:
    t = final.get("mean_epoch_seconds")
    lines = [f"{final['model']} on {final['dataset']} ({final['n_train']} train / {final['n_test']} test, "
             f"{final['parameters']:,} parameters, {final['device']}): after {final['epochs']} epochs "
             f"train acc {100 * final['train_acc']:.2f}%, test acc {100 * final['test_acc']:.2f}%",
             f"margins ({final['normalisation']} normalisation, L = {final['degree']}): gamma_bar "
             f"{final['initial_gamma_bar']:+.4e} -> {final['gamma_bar']:+.4e}, gamma_min {final['gamma_min']:+.4e}"
             + (f"; mean epoch time {t:.2f} s" if t is not None else "")]
    if final.get("out"):
        lines.append(f"run folder: {final['out']}" + (f" (checkpoint {final['checkpoint']})" if final.get("checkpoint")
                                                      else ""))
    return "\n".join(lines)


@cli_entry(PROG)
def main(argv=None) -> int:
    """Train from the command line; exit 0 ok, 2 bad input, 3 non-finite loss, 4 a rank failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.out:
        _resume_defaults(args, explicit_options(parser, argv))
    missing = [f"--{k}" for k in ("dataset", "model") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"the following arguments are required: {', '.join(missing)} "
                          "(or --resume --out DIR, which takes them from DIR's config)")
    config = config_from_args(args)
    rank0 = os.environ.get("RANK", "0") == "0"
    # --json: the epoch lines go to stderr, so that stdout holds the summary alone
    log = None if config.quiet or not rank0 else \
        functools.partial(print, file=sys.stderr if config.json else sys.stdout, flush=True)
    try:
        res = train(config, progress=not config.quiet, log=log)
    except (NonFiniteLossError, _RankFailed) as exc:
        diverged = isinstance(exc, NonFiniteLossError)
        if rank0 or not diverged:    # every rank diverges alike (all-reduced loss): rank 0 says it
            sys.stderr.write(f"{PROG}: error: {one_line(exc)}\n")
        return EXIT_NONFINITE if diverged else EXIT_RANK_FAILED
    if res.final.get("world_size", 1) > 1 and not rank0:
        return 0                                 # rank 0 reports for the whole run
    if config.json:
        print_json(res.final)
    elif not config.quiet:
        print(_human_summary(res.final))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
