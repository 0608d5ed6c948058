r"""The trainer's run folder (issue 14; the behaviour is described in ``docs/safety.md``).

:class:`RunLock` (one run per folder), :func:`clear_run` (``--overwrite`` deletes only files a run
of ours wrote), :func:`remove_orphans` (what a killed run left), :func:`read_metrics` (the one strict
``metrics.jsonl`` reader: ``--resume``, ``plot``, ``check --plot``), :func:`read_config` (the one
``config.json`` reader: ``--resume``, ``plot``, ``maxmargin --run``) and :func:`preflight` (values
that overflow float32 arithmetic and models that cannot fit in memory, refused before any data are
loaded; a depth ``n > MAX_LAYERS``, whose Lemma-1 degree ``2^(n+1) - 2`` overflows float64, is
refused by :class:`~margin_theory.models.ModelSpec`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator

from ._util import ConfigError, DataError, check_memory, clip, is_int, is_number, one_line, short_repr
from .checkpoint import CHECKPOINT_DIR, FORMAT as _CKPT_FORMAT
from .models import MAX_LAYERS
from .data import REGISTRY, canonical_name

__all__ = ["RunFolderError", "RunLock", "LOCK_NAME", "read_metrics", "read_config", "read_json", "foreign_files",
           "existing_run", "clear_run", "remove_orphans", "guard_io", "preflight", "DATASET_SHAPES", "MAX_LAYERS",
           "TRAINER_FILES"]

LOCK_NAME = ".margin_theory.lock"
TRAINER_FILES = ("metrics.jsonl", "config.json", "summary.json")
#: input shape and classes of the named data sets (from the data registry)
DATASET_SHAPES = {n: (s.input_shape, len(s.classes)) for n, s in REGISTRY.items()}
_MAX_METRICS_BYTES = 1 << 30
_MAX_JSON_BYTES = 64 << 20
_TMP_RE = re.compile(r"^\.(config\.json|metrics\.jsonl|summary\.json|epoch-\d+\.(safetensors|json))\..+\.tmp$")


class RunFolderError(ConfigError):
    """A run folder is locked, foreign, unwritable or holds an unreadable file."""


# ---------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------
class RunLock:
    """Exclusive lock on a run folder (``with RunLock(out): ...``); creates the folder.

    Non-blocking: if another process holds it, :class:`RunFolderError` names the holder
    (``pid N on host H since T``). On release the lock file is removed, and a folder this
    lock created is removed again if nothing else was written into it.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not written its name yet"

    def acquire(self) -> "RunLock":
        import fcntl

        with guard_io(f"run folder {self.folder}"):
            if not self.folder.exists():
                self.folder.mkdir(parents=True)
                self.created = True
            for _ in range(20):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise RunFolderError(f"{self.folder} is in use by another run ({self.holder()}); "
                                             "wait for it to finish or choose another --out") from None
                    raise
                try:                      # the file we locked may have been unlinked by a releasing holder
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(info) + "\n").encode())
                self.fd = fd
                return self
        raise RunFolderError(f"cannot lock {self.folder}: its lock file keeps changing")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()       # only if empty: nothing was written

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def guard_io(what: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permission denied ...) into one-line :class:`RunFolderError`."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise RunFolderError(f"cannot write {what}: {exc.strerror or exc}{where}") from None


# ---------------------------------------------------------------------------
# The metrics reader
# ---------------------------------------------------------------------------
def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _is_num(v: Any) -> bool:
    return v in ("inf", "-inf") or is_number(v)


#: the typed keys of a metrics row: (check of a non-null value, what it must be)
_ROW_TYPES = {**{k: (_is_num, "a number") for k in ("train_loss", "train_acc", "test_acc", "gamma_bar", "gamma_min",
                                                    "theta_norm", "lr", "epoch_seconds", "monitor_seconds")},
              "degree": (is_int, "an integer or null"), "normalisation": (lambda v: isinstance(v, str), "a string")}


def read_metrics(path: str | os.PathLike, *, required: bool = False) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a run folder or the file), strictly checked.

    Every non-empty line must be UTF-8 JSON (standard constants only; NaN is written as ``null``,
    infinities as ``"inf"``/``"-inf"``) holding an object with an integer ``epoch >= 0``, epochs
    strictly increasing, and the keys of ``_ROW_TYPES``, where present, of their types (or null).
    A missing file gives ``[]``, or with ``required`` an error, as does an empty one. Every problem
    raises :class:`RunFolderError` naming file and line.
    """
    path = Path(path)
    if path.is_dir() and path.name != "metrics.jsonl":
        path = path / "metrics.jsonl"
    if path.is_dir():
        raise RunFolderError(f"{path} is a folder, not a metrics file")
    if not path.exists():
        if required:
            raise RunFolderError(f"no metrics file: {path} does not exist "
                                 "(run python -m margin_theory.train --out DIR first)")
        return []
    if not path.is_file():
        raise RunFolderError(f"{path} is not a regular file")
    try:
        size = path.stat().st_size
        if size > _MAX_METRICS_BYTES:
            raise RunFolderError(f"{path} is {size} bytes, more than a metrics file can be ({_MAX_METRICS_BYTES})")
        raw = path.read_bytes()
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: list[dict] = []
    for i, bline in enumerate(raw.split(b"\n"), 1):
        at = f"{path} line {i}"
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunFolderError(f"{at}: invalid UTF-8 at byte {exc.start + 1} of the line") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except RecursionError:
            raise RunFolderError(f"{at}: JSON nested too deeply") from None
        except ValueError as exc:
            raise RunFolderError(f"{at} is not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            why = "no 'epoch'" if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
            raise RunFolderError(f"{at} is not a metrics record ({why})")
        e, last = row["epoch"], rows[-1]["epoch"] if rows else -1
        if not is_int(e) or e < 0:
            raise RunFolderError(f"{at}: epoch must be an integer >= 0, got {short_repr(e, 60)}")
        if e <= last:
            raise RunFolderError(f"{at}: epoch {e} does not follow epoch {last} (epochs must increase)")
        for k, (ok, what) in _ROW_TYPES.items():
            if row.get(k) is not None and not ok(row[k]):
                raise RunFolderError(f"{at}: {k} must be {what}, got {short_repr(row[k], 60)}")
        rows.append(row)
    if required and not rows:
        raise RunFolderError(f"{path} is empty: no epoch has been recorded yet")
    return rows


# ---------------------------------------------------------------------------
# config.json, ownership, --overwrite, orphans
# ---------------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; :class:`RunFolderError` (one line) when it is unreadable or no object."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise RunFolderError(f"{path} is larger than a configuration can be ({_MAX_JSON_BYTES} bytes)")
        obj = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise RunFolderError(f"{path}: JSON nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"cannot read {path}: {clip(one_line(exc))}") from None
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_config(run: str | os.PathLike, *, required: bool = False) -> dict | None:
    """A run folder's ``config.json`` (:func:`read_json`); ``None`` if there is none, an error with ``required``."""
    path = Path(run) / "config.json"
    if not path.exists() and not required:
        return None
    return read_json(path)


def _safetensors_format(path: Path) -> str | None:
    """The ``format`` entry of a safetensors file's metadata (read from its header only)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if len(head) != 8 or n > (16 << 20):
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
        return header.get("__metadata__", {}).get("format") if isinstance(header, dict) else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _recognised(path: Path) -> bool:
    """Whether a file under one of the trainer's names was written by a run of ours (by its content)."""
    from .train import METRIC_KEYS, TrainConfig

    name = path.name
    if path.is_dir() or path.is_symlink():
        return False
    try:
        if name == "metrics.jsonl":
            return all(set(METRIC_KEYS) <= set(r) for r in read_metrics(path))
        if name.endswith(".safetensors"):
            return _safetensors_format(path) == _CKPT_FORMAT
        d = read_json(path)
        if name == "summary.json":
            d = d["config"] if "status" in d else None
        if name in ("config.json", "summary.json"):
            TrainConfig.from_dict(d)        # raises unless it is a configuration of ours
            return True
        return d.get("format") == _CKPT_FORMAT
    except Exception:             # any failure means "not ours"
        return False


def _candidates(out: Path) -> list[Path]:
    found = [out / f for f in TRAINER_FILES if (out / f).exists() or (out / f).is_symlink()]
    ck = out / CHECKPOINT_DIR
    if ck.is_dir():
        found += sorted(set(ck.glob("epoch-*.safetensors")) | set(ck.glob("epoch-*.json")))
    return found


def existing_run(out: Path) -> list[str]:
    """The trainer's file names present in ``out`` (``checkpoints/`` once)."""
    return list(dict.fromkeys(p.name if p.parent == out else f"{CHECKPOINT_DIR}/" for p in _candidates(out)))


def foreign_files(out: Path) -> list[Path]:
    """Files under the trainer's names in ``out`` that no run of ours wrote."""
    return [p for p in _candidates(out) if not _recognised(p)]


def _unlink(out: Path, paths: list[Path]) -> list[Path]:
    with guard_io(f"run folder {out}"):
        for p in paths:
            p.unlink(missing_ok=True)
    return paths


def clear_run(out: Path) -> list[Path]:
    """``--overwrite``: delete the trainer's own files in ``out``; refuse (deleting nothing)
    when any file under the trainer's names was not written by a run of ours."""
    foreign = foreign_files(out)
    if foreign:
        rest = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise RunFolderError(f"--overwrite: {foreign[0]}{rest} was not written by margin_theory.train; "
                             "refusing to delete it (move it away or choose another --out)")
    return _unlink(out, _candidates(out))


def remove_orphans(out: Path) -> list[Path]:
    """Delete what killed runs left in ``out`` (call it holding the lock): temporary files of
    atomic writes and checkpoint tensor files without their sidecar."""
    found = []
    for folder in (out, out / CHECKPOINT_DIR):
        for p in folder.iterdir() if folder.is_dir() else ():
            tmp = _TMP_RE.match(p.name) and p.is_file() and not p.is_symlink()
            lone = (folder.name == CHECKPOINT_DIR and p.name.startswith("epoch-") and p.suffix == ".safetensors"
                    and not p.with_suffix(".json").exists() and _safetensors_format(p) == _CKPT_FORMAT)
            if tmp or lone:
                found.append(p)
    return _unlink(out, found)


# ---------------------------------------------------------------------------
# Preflight: values and sizes before any data are loaded
# ---------------------------------------------------------------------------
def preflight(config) -> None:
    """Reject values that overflow float arithmetic and models that cannot fit in memory, before the data
    are loaded: float32 weights, gradients, momentum buffers and two checkpoint copies, ``4 * 5 = 20`` bytes
    a parameter."""
    import torch

    from .train import lr_at

    f32 = torch.finfo(torch.float32)         # f32.tiny: the smallest normal float32
    for name in ("weight_decay", "margin_reg"):
        v = getattr(config, name)
        if v > f32.max:
            raise ConfigError(f"--{name.replace('_', '-')} {v:g} overflows float32 (max {f32.max:.4g})")
    for e in [1] + [m + 1 for m in config.lr_milestones]:
        lr = lr_at(config, e)
        if not f32.tiny <= lr <= f32.max:          # also NaN and inf
            raise ConfigError(f"learning rate {lr:g} of epoch {e} (--lr {config.lr:g}, --lr-gamma "
                              f"{config.lr_gamma:g}) is outside float32's normal range "
                              f"[{f32.tiny:.3g}, {f32.max:.4g}]")
    if config.lr * config.weight_decay > f32.max:
        raise ConfigError(f"--lr {config.lr:g} times --weight-decay {config.weight_decay:g} overflows float32")
    try:
        input_shape, num_classes = DATASET_SHAPES[canonical_name(config.dataset)]
    except DataError:                   # unknown names are the data loader's to report
        return
    try:
        with torch.device("meta"):      # shapes without storage
            model = config.model_spec().build(tuple(input_shape), num_classes)
    except (RuntimeError, ValueError, OverflowError, TypeError) as exc:
        raise ConfigError(f"model {config.model} cannot be built: {one_line(exc)}") from None
    n = sum(t.numel() for t in model.state_dict().values())
    check_memory(20.0 * n, f"model {config.model} with {n:,} parameters (rank {config.rank}, "
                           f"layers {config.layers}, hidden {config.hidden})")
