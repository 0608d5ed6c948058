r"""Multi-process training on ``torch.distributed``: DistributedDataParallel through torchrun (SPEC §9).

Launch the trainer with torchrun; nothing else changes::

    torchrun --nproc_per_node=2 -m margin_theory.train --dataset mnist --model lowrank ...
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
             --rdzv-id=run1 -m margin_theory.train ...

torchrun sets ``WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT``; with
``WORLD_SIZE > 1`` :func:`margin_theory.train.train` joins the process group (gloo on
CPU, nccl on CUDA: rank r uses ``cuda:LOCAL_RANK``) and trains a
``torch.nn.parallel.DistributedDataParallel`` model. ``WORLD_SIZE`` unset or 1 is the
single-process trainer, unchanged (bitwise).

**Data.** Every rank loads the data set, then keeps on its device only its shard, the
samples with global index ``i = r (mod W)`` (local position ``i // W``; train and test
alike). The full set stays on the host of every rank: rank 0 uses it for the
Theorem 2 monitors (they run on a float64 CPU copy anyway).

**Batches.** ``--batch-size B`` is the GLOBAL batch. Every rank draws the same epoch
permutation ``perm = randperm(N)`` from the same seeded generator (as the
single-process trainer), so global batch k is ``perm[kB : (k+1)B]`` - the same samples
as in a single-process run, the last one partial. Rank r processes the members of
batch k that it holds (``perm[j] = r mod W``): on average B / W of them; B need not be
divisible by W, and the split varies from batch to batch. The rank's loss is
``(W / B_k) * sum_{n in its part} (CE_n - lambda gamma_n)`` with ``B_k`` the size of
global batch k, so DDP's gradient average over the W ranks is exactly the gradient of
``mean_{n in batch k} (CE_n - lambda gamma_n)`` of the single-process trainer (paper
eq. 5), up to float32 summation order. Augmentation draws its random offsets and
flips for all ``B_k`` samples of the batch on every rank (the same numbers as a single
process) and applies those of the rank's part, so the generator stays in step across
ranks and with a single-process run: a checkpoint's generator state is valid for any
world size, and ``--resume`` works with a different number of processes.

BatchNorm (the ResNets): on CUDA the model is converted to ``SyncBatchNorm``, so the
batch statistics are those of the global batch; on CPU (gloo) torch has no
SyncBatchNorm and each rank normalises by its part of the batch (the metrics then
differ from a single-process run by more than rounding; the homogeneous models are
unaffected). Buffers are broadcast from rank 0 before every evaluation.

**Metrics.** After each epoch every rank evaluates its shard; the sums of gamma_n, of
the cross-entropy and of the correct predictions and the counts are all-reduced
(float64, SUM), gamma_min with MIN: gamma_bar = sum gamma_n / N, the loss and the
accuracies the same way (SPEC §2), so ``metrics.jsonl`` equals a single-process run of
the same global batch to float32 reduction-order noise. ``theta_norm`` is that of the
(replicated) parameters. Rank 0 alone writes ``metrics.jsonl``, checkpoints and
``summary.json`` (atomically, as a single process does); the checkpoints hold no trace
of the world size (``summary.json`` has ``world_size``), so ``check`` and
``--resume`` treat them as any other. For ``--resume`` on several machines, ``--out``
must be on a file system every rank can read.

**Failures.** Collectives time out after ``MARGIN_THEORY_DIST_TIMEOUT`` seconds
(default 900; it must exceed the longest time rank 0 spends alone, e.g. in the
monitors). A rank that raises, loses its peers (a collective fails) or is stopped by the
launcher (torchrun sends SIGTERM to the other ranks when one dies) stops with one line
``rank r/W: ...`` and exit status 4 (:data:`EXIT_RANK_FAILED`); a termination signal
that arrives while rank 0 writes a checkpoint or ``metrics.jsonl`` is held until the
write is complete, so the last good checkpoint is always intact. torchrun then exits
non-zero.
"""
from __future__ import annotations

import datetime
import math
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import one_line
from ._util import ConfigError, MarginTheoryError

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
    if v is None:
        return DEFAULT_TIMEOUT_S
    try:
        t = float(v)
    except ValueError:
        t = float("nan")
    if not math.isfinite(t) or t <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={v!r}: expected a positive number of seconds")
    return t


def shard_indices(n: int, world_size: int, rank: int) -> torch.Tensor:
    """Global indices held by ``rank``: ``rank, rank + W, rank + 2W, ...`` (< n)."""
    return torch.arange(rank, max(n, rank), world_size)


def _one_line(exc: BaseException) -> str:
    msg = one_line(exc)
    if len(msg) > 300:
        msg = msg[:297] + "..."
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
        from .data import Dataset

        W, r = self.world_size, self.rank
        n = int(ds.y_train.shape[0])
        if n < W:
            raise ConfigError(f"{n} training samples cannot be shared by {W} processes (need at least one each)")
        tr, te = shard_indices(n, W, r), shard_indices(int(ds.y_test.shape[0]), W, r)
        return Dataset(name=ds.name, X_train=ds.X_train[tr], y_train=ds.y_train[tr], X_test=ds.X_test[te],
                       y_test=ds.y_test[te], num_classes=ds.num_classes, input_shape=tuple(ds.input_shape),
                       classes=list(ds.classes), info={**ds.info, "shard": f"{r} of {W}"}
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
        import torch.distributed as dist

        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        return t

    def sync_buffers(self, model: nn.Module) -> None:
        """Broadcast rank 0's buffers (BatchNorm running statistics) to every rank."""
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    # -- the epoch ------------------------------------------------------------
    def epoch_plan(self, n: int, batch_size: int, generator: torch.Generator | None,
                   device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """The global permutation (the single-process :func:`~margin_theory.train.epoch_batches`
        draw) cut into global batches, and for each batch this rank's part: local shard
        positions, positions within the global batch, and the global batch sizes."""
        W, r = self.world_size, self.rank
        perm = torch.randperm(n, generator=generator, device=device)
        nb = -(-n // batch_size)
        pos = torch.arange(n, device=device)
        mine = (perm % W) == r
        local, where = (perm // W)[mine], pos[mine]
        counts = torch.bincount(where // batch_size, minlength=nb).tolist()     # one host sync
        sizes = [min(batch_size, n - k * batch_size) for k in range(nb)]
        return list(local.split(counts)), list((where % batch_size).split(counts)), sizes

    def train_epoch(self, net: nn.Module, opt, X: torch.Tensor, Y: torch.Tensor, n_global: int, batch_size: int,
                    generator: torch.Generator | None, *, augment: bool = False, margin_reg: float = 0.0,
                    normalisation=None, bar=None, on_step=None):
        """One epoch of DDP SGD over this rank's shard (see the module docstring). ``on_step(i)``
        is called after global step i on every rank (it may run a collective).

        ``net``: the DDP-wrapped model; ``X, Y``: the shard; ``n_global``: N. Returns
        ``(loss_sum, None, n_global, steps)`` like :func:`~margin_theory.train.train_epoch`,
        ``loss_sum`` all-reduced over the ranks (float64).
        """
        from .margins import margin_values, normalised_margins
        from .train import augment_batch

        W = self.world_size
        device = X.device
        net.train()
        locs, withins, sizes = self.epoch_plan(n_global, batch_size, generator, device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        show = bar is not None and not bar.disable
        for i, (idx, within, bk) in enumerate(zip(locs, withins, sizes)):
            xb, yb = X.index_select(0, idx), Y.index_select(0, idx)
            if augment:
                xb = augment_batch(xb, generator, draws=bk, select=within)
            logits = net(xb)
            part = F.cross_entropy(logits, yb, reduction="sum")
            if margin_reg > 0:
                gamma = normalised_margins(margin_values(logits, yb), normalisation.norm(), normalisation.degree)
                part = part - margin_reg * gamma.sum().to(part.dtype)
            opt.zero_grad(set_to_none=True)
            (part * (W / bk)).backward()       # DDP averages over W ranks -> mean over the global batch
            opt.step()
            loss_sum.add_(part.detach())
            if on_step is not None:
                on_step(i)
            if show:
                bar.update(1)
        self.all_reduce_(loss_sum)
        return loss_sum, None, n_global, len(sizes)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shard, *, batch_size: int = 4096) -> dict:
        """All-reduced full-set metrics (the keys of :func:`margin_theory.train.evaluate`):
        sums of gamma_n, CE_n, correct and counts (float64, SUM), gamma_min (MIN)."""
        from .margins import (compute_margins, get_normalisation, n_correct, output_margins, predict,
                              smoothed_from_sum, summed_cross_entropy)
        from .train import _matmul_precision

        self.sync_buffers(model)
        X, y = shard.X_train, shard.y_train
        dev = X.device
        f64 = dict(dtype=torch.float64, device=dev)
        with _matmul_precision(dev, tf32=False):
            spec = get_normalisation(model)
            if X.shape[0] > 0:
                logits = predict(model, X, batch_size)
                m = compute_margins(model, X, y, batch_size=batch_size, logits=logits)
                n = X.shape[0]
                sums = [m.gamma.sum(), torch.tensor(m.loss * n, **f64), (m.q > 0).sum().to(torch.float64),
                        torch.tensor(float(n), **f64), output_margins(logits, y).sum()]
                gmin = m.gamma.min().reshape(1).clone()
                log_s = torch.tensor([summed_cross_entropy(logits, y)[1]], **f64)
                theta_norm, degree, kind = m.theta_norm, m.degree, m.normalisation
            else:
                sums = [torch.zeros((), **f64) for _ in range(5)]
                gmin = torch.full((1,), math.inf, **f64)
                log_s = torch.full((1,), -math.inf, **f64)
                theta_norm, degree, kind = float(spec.norm()), spec.degree, spec.kind
            if shard.X_test.shape[0] > 0:
                logits = predict(model, shard.X_test, batch_size)
                sums += [n_correct(logits, shard.y_test),
                         torch.tensor(float(shard.X_test.shape[0]), **f64)]
            else:
                sums += [torch.zeros((), **f64), torch.zeros((), **f64)]
            # the summed loss S = sum_r S_r in log space (S_r may underflow): max, then sum of exp
            top = log_s.clone()
            self.all_reduce_(top, "max")
            sums.append(torch.exp(log_s - top).reshape(()) if math.isfinite(float(top[0])) else torch.zeros((), **f64))
            vec = torch.stack([s.to(dev) for s in sums])
            self.all_reduce_(vec)
            self.all_reduce_(gmin, "min")
        g_sum, ce_sum, correct, n, out_sum, t_correct, n_test, s_rel = vec.tolist()
        log_S = float(top[0]) + math.log(s_rel) if s_rel > 0 else -math.inf
        smoothed, _ = smoothed_from_sum(math.exp(log_S), log_S, theta_norm, degree)
        return {"train_loss": ce_sum / n, "train_acc": correct / n,
                "test_acc": t_correct / n_test if n_test > 0 else float("nan"),
                "gamma_bar": g_sum / n, "gamma_min": float(gmin[0]), "gamma_output": out_sum / n,
                "gamma_smoothed": smoothed, "theta_norm": theta_norm,
                "degree": degree, "normalisation": kind}

    @torch.no_grad()
    def test_accuracy(self, model: nn.Module, shard, batch_size: int = 4096) -> float:
        """Test accuracy over every rank's test shard (all-reduced counts); a collective."""
        from .margins import n_correct, predict

        dev = shard.X_train.device
        vec = torch.zeros(2, dtype=torch.float64, device=dev)
        if shard.X_test.shape[0] > 0:
            logits = predict(model, shard.X_test, batch_size)
            vec[0] = n_correct(logits, shard.y_test)
            vec[1] = float(shard.X_test.shape[0])
        self.all_reduce_(vec)
        return float(vec[0] / vec[1]) if vec[1] > 0 else float("nan")

    # -- failures -------------------------------------------------------------
    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn any failure inside (a collective error, an exception of this rank) into one
        :class:`RankFailedError` line naming the rank and ``what`` it was doing."""
        try:
            yield
        except RankFailedError:
            raise
        except MarginTheoryError:
            raise
        except Exception as exc:
            import torch.distributed as dist

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
            try:
                signal.signal(signal.SIGTERM, self._old_handler)
            except ValueError:
                pass
            self._old_handler = None
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    dist.destroy_process_group()
                except Exception:       # a broken group cannot always be torn down; we are leaving anyway
                    pass
            self.owns_group = False


def _device_for(name: str, local_rank: int) -> torch.device:
    from .train import select_device

    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {n} CUDA device(s) on this machine; "
                              f"use --nproc_per_node <= {n}")
        return torch.device("cuda", local_rank)
    return select_device(name)


def setup(device: str = "auto") -> DistContext | None:
    """Join the process group the launcher describes (``None`` for a single process).

    Backend ``nccl`` for a CUDA device (rank r on ``cuda:LOCAL_RANK`` for ``auto`` /
    ``cuda``), ``gloo`` for the CPU; timeout ``MARGIN_THEORY_DIST_TIMEOUT`` seconds. A
    process group that the caller already initialised is used as it is.
    """
    world = env_world()
    if world is None:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    ws, rank, local = world
    dev = _device_for(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if dist.is_initialized():
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
        owns = True
    ctx = DistContext(world_size=ws, rank=rank, local_rank=local, device=dev, backend=backend, owns_group=owns)
    ctx.install_signal_handler()
    return ctx
