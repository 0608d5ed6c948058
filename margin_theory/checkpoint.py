"""Checkpoints: safetensors + a JSON sidecar, never pickle (SPEC §8, CONVENTIONS).

A checkpoint of epoch ``e`` of a run in ``DIR`` is the pair

* ``DIR/checkpoints/epoch-000e.safetensors``: tensors only, under prefixed names

  - ``model.<name>``: the model's ``state_dict`` (parameters and buffers, e.g. the
    BatchNorm running statistics);
  - ``optim.state.<i>.<key>``: the optimizer's per-parameter tensors (SGD momentum
    buffers), ``i`` the parameter's index in the optimizer;
  - ``rng.<name>``: random-generator states as uint8 tensors (the trainer stores
    ``rng.generator_<cpu|cuda>``, its seeded permutation/augmentation generator,
    ``rng.torch_cpu`` and, on GPU, ``rng.torch_cuda``);

* ``DIR/checkpoints/epoch-000e.json``: the sidecar::

    {"format": "margin_theory.checkpoint", "version": 1,
     "epoch": e, "step": global SGD step,
     "model_name": ..., "model_args": {name, input_shape, num_classes, rank, layers,
                                       hidden, conv_channels, conv_bias},
     "input_shape": [...], "num_classes": C, "degree": L or null, "head_degree": ...,
     "parameters": dense count, "config": {the TrainConfig},
     "optimizer": {"class": "SGD", "param_groups": [...], "state": {non-tensor state}}
                  or null,
     "rng": [names of the rng.* tensors], "metrics": {the epoch's metrics line},
     "tensors": "epoch-000e.safetensors", "tensor_bytes": n, "tensor_sha256": hex,
     "torch_version": ..., "margin_theory_version": ..., "created": ISO-8601 UTC}

Both files are written atomically (temporary file + rename), the tensors first and
the sidecar last, so a checkpoint exists (:func:`list_checkpoints`) only when both
are complete; the sidecar's SHA-256 of the tensor file detects a truncated,
corrupted or mismatched pair. Every problem raises
:class:`margin_theory._util.CheckpointError` with a one-line message.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ._util import CheckpointError, ConfigError, MarginTheoryError, atomic_write_bytes, atomic_write_json

__all__ = [
    "FORMAT", "VERSION", "Checkpoint", "save_checkpoint", "read_checkpoint", "load_checkpoint",
    "restore_checkpoint", "list_checkpoints", "latest_checkpoint", "checkpoint_stem",
    "checkpoint_files", "resolve_checkpoint", "read_sidecar", "model_args_from", "describe_model_args",
]

FORMAT = "margin_theory.checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")
_MODEL_ARG_KEYS = ("rank", "layers", "hidden", "conv_channels", "conv_bias", "linear_term", "affine", "init")
_MODEL_ARG_DEFAULTS = {"rank": 1, "layers": 1, "hidden": None, "conv_channels": 1, "conv_bias": True,
                       "linear_term": False, "affine": False, "init": "paper"}


@dataclass
class Checkpoint:
    """A checkpoint read back (:func:`read_checkpoint`).

    ``model`` is rebuilt from the sidecar's ``model_args`` and holds the saved
    weights (on ``device``, eval mode); ``config`` the training configuration dict;
    ``path`` the ``.safetensors`` file; ``meta`` the whole sidecar; ``metrics`` the
    metrics line of that epoch; ``optimizer_state`` a dict for
    ``torch.optim.Optimizer.load_state_dict`` (or ``None``); ``rng_state`` name ->
    uint8 tensor.
    """

    model: nn.Module
    config: dict
    epoch: int
    step: int
    path: Path
    meta: dict
    metrics: dict = field(default_factory=dict)
    optimizer_state: dict | None = None
    rng_state: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
def checkpoint_stem(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch-%04d`` (no suffix)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch-{int(epoch):04d}"


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(tensor_file, sidecar)`` for a stem, a ``.safetensors`` or a ``.json`` path."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _epoch_of(stem_name: str) -> int | None:
    m = _EPOCH_RE.match(stem_name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (both files present) of a run, as ``.safetensors`` paths sorted by epoch.

    ``run_dir`` is the run folder (holding ``checkpoints/``) or the ``checkpoints``
    folder itself. A missing folder gives ``[]``.
    """
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR if (run_dir / CHECKPOINT_DIR).is_dir() else run_dir
    if not folder.is_dir():
        return []
    found = []
    for js in folder.glob("epoch-*.json"):
        epoch = _epoch_of(js.stem)
        tensors = js.with_suffix(".safetensors")
        if epoch is not None and tensors.is_file():
            found.append((epoch, tensors))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``run_dir`` (``.safetensors`` path), or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Map a ``.safetensors``, ``.json``, stem, run folder or ``checkpoints`` folder to a tensor file."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint in {path} (expected {CHECKPOINT_DIR}/epoch-NNNN.safetensors + .json)")
        return latest
    if path.suffix not in (".safetensors", ".json"):
        if path.exists():
            raise CheckpointError(f"{path} is not a checkpoint (expected a .safetensors or .json file or a run folder)")
        if not any(p.exists() for p in checkpoint_files(path)):
            raise CheckpointError(f"checkpoint not found: {path}")
    tensors, sidecar = checkpoint_files(path)
    for p in (tensors, sidecar):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}")
    return tensors


# ---------------------------------------------------------------------------
# Model description
# ---------------------------------------------------------------------------
def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")


def model_args_from(config: Any, model: nn.Module) -> dict:
    """The arguments of :func:`margin_theory.models.build_model` that rebuild ``model``."""
    cfg = _config_dict(config)
    name = getattr(model, "name", None) or cfg.get("model")
    if name is None:
        raise ConfigError("cannot checkpoint a model without a name (build it with margin_theory.models.build_model)")
    if cfg.get("model") not in (None, name):
        raise ConfigError(f"config names model {cfg.get('model')!r} but the model is {name!r}")
    args = {"name": name,
            "input_shape": [int(s) for s in getattr(model, "input_shape", cfg.get("input_shape") or [])],
            "num_classes": int(getattr(model, "num_classes", cfg.get("num_classes") or 0))}
    for k in _MODEL_ARG_KEYS:
        v = cfg.get(k, _MODEL_ARG_DEFAULTS[k])
        args[k] = list(v) if isinstance(v, (list, tuple)) else v
    return args


def describe_model_args(args: Mapping) -> str:
    """E.g. ``lowrank (rank 2, input (1, 8, 8), 10 classes)``."""
    name = args.get("name")
    bits = []
    if name == "lowrank" or str(name).endswith("-lowrank"):
        bits.append(f"rank {args.get('rank', 1)}")
    if args.get("layers", 1) not in (1, None):
        bits.append(f"{args['layers']} layers")
    if args.get("hidden") is not None and (name == "relu2" or args.get("layers", 1) not in (1, None)):
        bits.append(f"hidden {args['hidden']}")
    if str(name).startswith("conv-"):
        bits.append(f"{args.get('conv_channels', 1)} conv channels" + ("" if args.get("conv_bias", True) else ", no conv bias"))
    if args.get("linear_term"):
        bits.append("linear term (x^T W x + w.x)/2")
    if args.get("affine"):
        bits.append("affine inputs [x, 1]")
    bits.append(f"input {tuple(args.get('input_shape') or ())}")
    bits.append(f"{args.get('num_classes')} classes")
    return f"{name} ({', '.join(bits)})"


def _build(args: Mapping) -> nn.Module:
    from .models import build_model

    try:
        with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
            return build_model(args["name"], args["input_shape"], args["num_classes"],
                               rank=int(args.get("rank", 1)), layers=int(args.get("layers", 1)),
                               hidden=args.get("hidden"), conv_channels=int(args.get("conv_channels", 1)),
                               conv_bias=bool(args.get("conv_bias", True)),
                               linear_term=bool(args.get("linear_term") or False),
                               affine=bool(args.get("affine") or False),
                               init=str(args.get("init") or "paper"))
    except MarginTheoryError as exc:
        raise CheckpointError(f"checkpoint describes a model that cannot be built: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint has invalid model arguments {dict(args)!r}: {exc}") from None


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------
def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def save_checkpoint(path_stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    config: Any, epoch: int, step: int, rng_state: Mapping[str, torch.Tensor] | None = None,
                    metrics: Mapping | None = None) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; return the tensor path.

    ``rng_state``: name -> uint8 tensor (``torch.Generator.get_state()``). ``metrics``:
    the epoch's metrics line (stored in the sidecar). Tensors are copied to the CPU
    (the only device synchronisation of a checkpoint).
    """
    from . import __version__

    tensor_path, sidecar_path = checkpoint_files(path_stem)
    cfg = _config_dict(config)
    margs = model_args_from(cfg, model)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = _cpu(v)
    opt_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        nontensor: dict[str, dict] = {}
        for i, st in sd["state"].items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.state.{i}.{key}"] = _cpu(val)
                else:
                    nontensor.setdefault(str(i), {})[key] = val
        opt_meta = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "state": nontensor}
    rng_names = []
    for name, st in (rng_state or {}).items():
        if not isinstance(st, torch.Tensor):
            raise ConfigError(f"rng state {name!r} must be a tensor")
        tensors[f"rng.{name}"] = _cpu(st)
        rng_names.append(name)
    from safetensors.torch import save as _st_save

    blob = _st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION), "epoch": str(int(epoch))})
    meta = {
        "format": FORMAT, "version": VERSION, "epoch": int(epoch), "step": int(step),
        "model_name": margs["name"], "model_args": margs,
        "input_shape": margs["input_shape"], "num_classes": margs["num_classes"],
        "degree": getattr(model, "degree", None), "head_degree": getattr(model, "head_degree", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": cfg, "optimizer": opt_meta, "rng": rng_names,
        "metrics": dict(metrics or {}),
        "tensors": tensor_path.name, "tensor_bytes": len(blob),
        "tensor_sha256": hashlib.sha256(blob).hexdigest(),
        "torch_version": torch.__version__, "margin_theory_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(tensor_path, blob)
    atomic_write_json(sidecar_path, meta)
    return tensor_path


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def read_sidecar(path: str | Path) -> dict:
    """The validated JSON sidecar of a checkpoint (``path`` as in :func:`resolve_checkpoint`)."""
    _, sidecar = checkpoint_files(resolve_checkpoint(path))
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint sidecar {sidecar}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{sidecar} is not a margin_theory checkpoint (format {got!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{sidecar}: unsupported checkpoint version {meta.get('version')!r} (this toolkit reads {VERSION})")
    for key in ("epoch", "step", "model_args", "config"):
        if key not in meta:
            raise CheckpointError(f"{sidecar}: sidecar lacks the field {key!r}")
    if not isinstance(meta["model_args"], dict) or "name" not in meta["model_args"]:
        raise CheckpointError(f"{sidecar}: invalid model_args")
    return meta


def _read_tensors(tensor_path: Path, meta: dict) -> dict[str, torch.Tensor]:
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from None
    want_bytes, want_sha = meta.get("tensor_bytes"), meta.get("tensor_sha256")
    if want_bytes is not None and len(blob) != want_bytes:
        raise CheckpointError(f"{tensor_path} is truncated or replaced: {len(blob)} bytes, the sidecar says {want_bytes}")
    if want_sha is not None and hashlib.sha256(blob).hexdigest() != want_sha:
        raise CheckpointError(f"{tensor_path} is corrupt: its SHA-256 differs from the sidecar's")
    from safetensors.torch import load as _st_load

    try:
        return _st_load(blob)
    except Exception as exc:  # safetensors raises SafetensorError (and others) on bad files
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file: {msg}") from None


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expect = model.state_dict()
    missing = [k for k in expect if k not in state]
    extra = [k for k in state if k not in expect]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise CheckpointError(f"{what}: tensors do not match the model ({'; '.join(parts)})")
    for k, v in expect.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what}: tensor {k} has shape {tuple(state[k].shape)}, "
                                  f"the model needs {tuple(v.shape)}")


def _split(tensors: Mapping[str, torch.Tensor], meta: dict, device) -> tuple[dict, dict | None, dict]:
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    opt_state = None
    om = meta.get("optimizer")
    if om:
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim.state."):
                i, key = k[len("optim.state."):].split(".", 1)
                state.setdefault(int(i), {})[key] = v.to(device)
        for i, d in (om.get("state") or {}).items():
            state.setdefault(int(i), {}).update(d)
        opt_state = {"state": state, "param_groups": om.get("param_groups", [])}
    return model_state, opt_state, rng


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint fully: rebuild the model from the sidecar and load its weights.

    ``path``: the ``.safetensors`` or ``.json`` file, or a run folder (then its latest
    checkpoint). Raises :class:`CheckpointError` on a missing, truncated, corrupt,
    foreign or inconsistent checkpoint.
    """
    tensor_path = resolve_checkpoint(path)
    meta = read_sidecar(tensor_path)
    tensors = _read_tensors(tensor_path, meta)
    model_state, opt_state, rng = _split(tensors, meta, device)
    model = _build(meta["model_args"])
    what = f"{tensor_path.name} ({describe_model_args(meta['model_args'])})"
    _check_state(model, model_state, what)
    model.load_state_dict(model_state, strict=True)
    model.to(device).eval()
    return Checkpoint(model=model, config=dict(meta["config"]), epoch=int(meta["epoch"]),
                      step=int(meta["step"]), path=tensor_path, meta=meta,
                      metrics=dict(meta.get("metrics") or {}), optimizer_state=opt_state, rng_state=rng)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    spec: Mapping | str | Path | None = None) -> tuple[nn.Module, dict]:
    """``(model, config)`` of a checkpoint (see :func:`read_checkpoint`); the model is in eval mode.

    A foreign file (a ``.pt``/``.pth`` state dict, read tensors-only, or a bare
    ``.safetensors``) needs ``spec``: what it holds (a dict of train's options, e.g.
    ``{"model": "lowrank", "rank": 4, "dataset": "mnist"}``, or a JSON/TOML file); see
    :mod:`margin_theory.foreign`."""
    from .foreign import is_foreign_file, load_foreign

    if is_foreign_file(path):
        return load_foreign(path, spec, device=device)
    if spec is not None:
        raise CheckpointError(f"{Path(path).name}: spec= describes foreign files; a margin_theory checkpoint "
                              "carries its own description")
    ck = read_checkpoint(path, device=device)
    return ck.model, ck.config


def restore_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                       *, model_args: Mapping | None = None) -> Checkpoint:
    """Load a checkpoint INTO an existing model (and optimizer), e.g. to resume training.

    The checkpoint must be for the same model: same name, input shape, classes and
    tensor shapes (``model_args`` of the caller, if given, are compared as well),
    else :class:`CheckpointError` ``"checkpoint is for model X (...), not Y (...)"``.
    Returns the :class:`Checkpoint` (its ``model`` is ``model``).
    """
    tensor_path = resolve_checkpoint(path)
    meta = read_sidecar(tensor_path)
    saved = meta["model_args"]
    mine = dict(model_args) if model_args is not None else {
        "name": getattr(model, "name", None), "input_shape": list(getattr(model, "input_shape", ())),
        "num_classes": getattr(model, "num_classes", None)}
    keys = [k for k in ("name", "input_shape", "num_classes") + _MODEL_ARG_KEYS if k in mine]
    if any(_norm(saved.get(k, _MODEL_ARG_DEFAULTS.get(k))) != _norm(mine.get(k)) for k in keys):
        raise CheckpointError(f"checkpoint {tensor_path.name} is for model {describe_model_args(saved)}, "
                              f"not {describe_model_args(mine)}")
    tensors = _read_tensors(tensor_path, meta)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model_state, opt_state, rng = _split(tensors, meta, device)
    what = f"checkpoint {tensor_path.name} is for model {describe_model_args(saved)}"
    try:
        _check_state(model, model_state, what)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}, not {describe_model_args(mine)}") from None
    model.load_state_dict(model_state, strict=True)
    if optimizer is not None:
        if opt_state is None:
            raise CheckpointError(f"checkpoint {tensor_path.name} holds no optimizer state; cannot resume training from it")
        if meta["optimizer"].get("class") != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {tensor_path.name} holds {meta['optimizer'].get('class')} state, "
                                  f"not {type(optimizer).__name__}")
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            msg = " ".join(str(exc).split())
            raise CheckpointError(f"checkpoint {tensor_path.name}: optimizer state does not fit: {msg}") from None
    return Checkpoint(model=model, config=dict(meta["config"]), epoch=int(meta["epoch"]),
                      step=int(meta["step"]), path=tensor_path, meta=meta,
                      metrics=dict(meta.get("metrics") or {}), optimizer_state=opt_state, rng_state=rng)


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v
