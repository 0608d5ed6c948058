r"""Multi-process training on ``torch.distributed``: DistributedDataParallel through torchrun (SPEC §9).

``torchrun --nproc_per_node=2 -m margin_theory.train ...``; the reference is ``docs/distributed.md``.
With ``WORLD_SIZE > 1`` :func:`margin_theory.train.train` joins the process group (gloo on CPU, nccl
on CUDA: rank r on ``cuda:LOCAL_RANK``) and trains a DDP model; ``WORLD_SIZE`` unset or 1 is the
single-process trainer, bitwise unchanged.

* Data: rank r keeps on its device the samples ``i = r (mod W)`` of train and test; the full set
  stays on the host (rank 0 runs the Theorem 2 monitors on it).
* Batches: ``--batch-size B`` is the global batch. Every rank draws the single-process permutation,
  so global batch k is ``perm[kB : (k+1)B]``; rank r trains on the members it holds with the loss
  ``(W / B_k) * sum_{n in its part} (CE_n - lambda gamma_n)``, so DDP's average over the W ranks is
  the gradient of ``mean_{n in batch k} (CE_n - lambda gamma_n)`` (paper eq. 5). Augmentation draws
  for all ``B_k`` samples on every rank, so the generator stays in step with one process and
  ``--resume`` works with any world size. BatchNorm: SyncBatchNorm on CUDA; per-rank on CPU.
* Metrics: sums of gamma_n, CE_n, correct predictions and counts all-reduced (float64, SUM),
  gamma_min with MIN (SPEC §2). Rank 0 alone writes the run folder.
* Failures: collectives time out after ``MARGIN_THEORY_DIST_TIMEOUT`` seconds (default 900). A rank
  that fails, loses its peers or gets SIGTERM stops with one line ``rank r/W: ...`` and exit status 4
  (:data:`EXIT_RANK_FAILED`); a signal during a write of rank 0 is held until the write is complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import signal
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ._util import ConfigError, MarginTheoryError, float_in, one_line
from .margins import compute_margins, n_correct, output_margins, predict, smoothed_from_sum, summed_cross_entropy

__all__ = ["DistContext", "RankFailedError", "setup", "env_world", "shard_indices", "EXIT_RANK_FAILED",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S"]

#: exit status of a rank that stopped because it, or another rank, failed
EXIT_RANK_FAILED = 4
TIMEOUT_ENV = "MARGIN_THEORY_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0


class RankFailedError(MarginTheoryError):
    """This rank, or another one, failed during multi-process training (one-line message)."""


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer (set by torchrun)") from None


def env_world() -> tuple[int, int, int] | None:
    """``(world_size, rank, local_rank)`` from the launcher's environment (torchrun), or
    ``None`` when not launched by one or the world size is 1."""
    ws = _int_env("WORLD_SIZE")
    if ws is None or ws <= 1:
        return None
    rank = _int_env("RANK")
    if rank is None or not 0 <= rank < ws:
        raise ConfigError(f"WORLD_SIZE={ws} but RANK={os.environ.get('RANK')!r}; launch with torchrun")
    local = _int_env("LOCAL_RANK")
    return ws, rank, rank if local is None else local


def _timeout_s() -> float:
    v = os.environ.get(TIMEOUT_ENV)
    try:
        return DEFAULT_TIMEOUT_S if v is None else float_in(0, lo_open=True)(v)
    except argparse.ArgumentTypeError:
        raise ConfigError(f"{TIMEOUT_ENV}={v!r}: expected a positive number of seconds") from None


def shard_indices(n: int, world_size: int, rank: int) -> torch.Tensor:
    """Global indices held by ``rank``: ``rank, rank + W, rank + 2W, ...`` (< n)."""
    return torch.arange(rank, max(n, rank), world_size)


def _one_line(exc: BaseException) -> str:
    msg = one_line(exc, 300)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@dataclass
class DistContext:
    """A joined process group: world size, this rank, its device and the collectives the
    trainer needs. Built by :func:`setup`; :meth:`close` leaves the group (if we joined it)."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool = True
    _critical: int = field(default=0, repr=False)
    _pending_signal: int | None = field(default=None, repr=False)
    _old_handler: object = field(default=None, repr=False)
    epoch: int | None = field(default=None, repr=False)

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run folder; the other ranks write nothing."""
        return self.rank == 0

    @property
    def tag(self) -> str:
        return f"rank {self.rank}/{self.world_size}"

    # -- data and model -------------------------------------------------------
    def shard(self, ds, device: torch.device):
        """This rank's shard of a (host) :class:`~margin_theory.data.Dataset` on ``device``
        (samples ``i = rank mod W`` of train and test, float32 inputs)."""
        W, r = self.world_size, self.rank
        n = int(ds.y_train.shape[0])
        if n < W:
            raise ConfigError(f"{n} training samples cannot be shared by {W} processes (need at least one each)")
        tr, te = shard_indices(n, W, r), shard_indices(int(ds.y_test.shape[0]), W, r)
        return dataclasses.replace(ds, X_train=ds.X_train[tr], y_train=ds.y_train[tr], X_test=ds.X_test[te],
                                   y_test=ds.y_test[te], info={**ds.info, "shard": f"{r} of {W}"}
                                   ).to(device, dtype=torch.float32)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """On CUDA, BatchNorm -> SyncBatchNorm (global batch statistics); the same
        Parameter objects are kept, so an optimizer built before or after is valid."""
        if self.device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)``; its construction broadcasts rank 0's
        parameters and buffers (a collective: every rank must get here)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        with self.guard("setting up DistributedDataParallel"):
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)

    # -- collectives ----------------------------------------------------------
    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        return t

    def epoch_plan(self, n: int, batch_size: int, generator: torch.Generator | None,
                   device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """The global permutation (the single-process :func:`~margin_theory.train.epoch_batches`
        draw) cut into global batches, and for each batch this rank's part: local shard
        positions, positions within the global batch, and the global batch sizes."""
        W, r = self.world_size, self.rank
        perm = torch.randperm(n, generator=generator, device=device)
        nb = -(-n // batch_size)
        mine = (perm % W) == r
        local, where = (perm // W)[mine], torch.arange(n, device=device)[mine]
        counts = torch.bincount(where // batch_size, minlength=nb).tolist()     # one host sync
        sizes = [min(batch_size, n - k * batch_size) for k in range(nb)]
        return list(local.split(counts)), list((where % batch_size).split(counts)), sizes

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shard, *, batch_size: int = 4096) -> dict:
        """All-reduced full-set metrics (the keys of :func:`margin_theory.train.evaluate`, which calls it
        with TF32 off): sums of gamma_n, CE_n, correct and counts of train and test (float64, SUM),
        gamma_min (MIN). Every shard holds training samples (:meth:`shard`)."""
        with self.guard("evaluating"):
            for b in model.buffers():           # rank 0's BatchNorm running statistics
                dist.broadcast(b, 0)
            X, y = shard.X_train, shard.y_train
            f64 = dict(dtype=torch.float64, device=X.device)
            logits = predict(model, X, batch_size)
            m = compute_margins(model, X, y, batch_size=batch_size, logits=logits)
            n, n_test = X.shape[0], shard.X_test.shape[0]
            test_correct = n_correct(predict(model, shard.X_test, batch_size), shard.y_test) if n_test \
                else torch.zeros((), **f64)
            vec = torch.stack([m.gamma.sum(), torch.tensor(m.loss * n, **f64), (m.q > 0).sum().to(**f64),
                               torch.tensor(float(n), **f64), output_margins(logits, y).sum(), test_correct,
                               torch.tensor(float(n_test), **f64)])
            gmin = m.gamma.min().reshape(1).clone()
            # the summed loss S = sum_r S_r in log space (S_r may underflow): max, then sum of exp
            log_s = torch.tensor([summed_cross_entropy(logits, y)[1]], **f64)
            top = self.all_reduce_(log_s.clone(), "max")
            s_rel = torch.exp(log_s - top) if math.isfinite(float(top[0])) else torch.zeros(1, **f64)
            vec = self.all_reduce_(torch.cat([vec, s_rel]))
            self.all_reduce_(gmin, "min")
        g_sum, ce_sum, correct, n, out_sum, test_correct, n_test, s_rel = vec.tolist()
        log_S = float(top[0]) + math.log(s_rel) if s_rel > 0 else -math.inf
        smoothed, _ = smoothed_from_sum(math.exp(log_S), log_S, m.theta_norm, m.degree)
        return {"train_loss": ce_sum / n, "train_acc": correct / n,
                "test_acc": test_correct / n_test if n_test > 0 else float("nan"),
                "gamma_bar": g_sum / n, "gamma_min": float(gmin[0]), "gamma_output": out_sum / n,
                "gamma_smoothed": smoothed, "theta_norm": m.theta_norm, "degree": m.degree,
                "normalisation": m.normalisation}

    # -- failures -------------------------------------------------------------
    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn any failure inside (a collective error, an exception of this rank) into one
        :class:`RankFailedError` line naming the rank and ``what`` it was doing; the toolkit's
        own errors pass unchanged."""
        try:
            yield
        except MarginTheoryError:
            raise
        except Exception as exc:
            lost = isinstance(exc, getattr(dist, "DistError", ())) or any(
                s in str(exc).lower() for s in ("connection", "timed out", "timeout", "peer", "gloo", "nccl"))
            why = ("lost contact with the other ranks (another rank died or the network failed)" if lost
                   else "failed")
            raise RankFailedError(f"{self.tag}: {why} while {what}: {_one_line(exc)}") from None

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Hold a termination signal until the block (a file write of rank 0) is done."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if self._critical == 0 and self._pending_signal is not None:
                sig, self._pending_signal = self._pending_signal, None
                self._on_signal(sig, None)

    def _on_signal(self, signum, frame) -> None:
        if self._critical:
            self._pending_signal = signum
            return
        where = f" in epoch {self.epoch}" if self.epoch is not None else ""
        raise RankFailedError(f"{self.tag}: stopped by {signal.Signals(signum).name}{where} (torchrun stops every "
                              "rank when one fails)")

    def install_signal_handler(self) -> None:
        try:
            self._old_handler = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:          # not the main thread: leave the default handling
            self._old_handler = None

    def close(self) -> None:
        """Restore the signal handler; leave the process group if :func:`setup` created it."""
        if self._old_handler is not None:
            with suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None
        if self.owns_group and dist.is_initialized():
            with suppress(Exception):       # a broken group cannot always be torn down; we are leaving anyway
                dist.destroy_process_group()
        self.owns_group = False


def setup(device: str = "auto") -> DistContext | None:
    """Join the process group the launcher describes (``None`` for a single process).

    Backend ``nccl`` for a CUDA device (rank r on ``cuda:LOCAL_RANK`` for ``auto`` /
    ``cuda``), ``gloo`` for the CPU; timeout ``MARGIN_THEORY_DIST_TIMEOUT`` seconds. A
    process group that the caller already initialised is used as it is.
    """
    world = env_world()
    if world is None:
        return None
    from .train import select_device

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    ws, rank, local = world
    dev = select_device(device)
    if dev.type == "cuda" and device in (None, "auto", "cuda"):
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError(f"LOCAL_RANK {local} but only {n} CUDA device(s) on this machine; "
                              f"use --nproc_per_node <= {n}")
        dev = torch.device("cuda", local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = not dist.is_initialized()        # we create the group, and close() destroys it
    if not owns:
        if dist.get_world_size() != ws or dist.get_rank() != rank:
            raise ConfigError(f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                              f"disagrees with RANK={rank}, WORLD_SIZE={ws}")
        backend = str(dist.get_backend())
    else:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s()))
        except (RuntimeError, ValueError, OSError) as exc:
            raise RankFailedError(f"rank {rank}/{ws}: cannot join the {backend} process group at "
                                  f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: "
                                  f"{_one_line(exc)}") from None
    ctx = DistContext(world_size=ws, rank=rank, local_rank=local, device=dev, backend=backend, owns_group=owns)
    ctx.install_signal_handler()
    return ctx
