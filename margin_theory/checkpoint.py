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

Reading is strict (issue 14, ``docs/safety.md``): every sidecar field is type-checked
(:func:`read_sidecar`); the byte count and SHA-256 are required; the model the sidecar
describes is first built on PyTorch's ``meta`` device (shapes, no storage), and the
safetensors header's names, dtypes and shapes are checked against it - and against the
optimizer's parameters and the random-generator names - before any tensor is allocated;
dtypes must match exactly (never cast); non-finite weights or optimizer state are refused,
and :func:`save_checkpoint` never writes them (:class:`NonFiniteCheckpointError`).
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
from ._util import check_memory
from .models import ModelSpec

__all__ = [
    "FORMAT", "VERSION", "Checkpoint", "save_checkpoint", "read_checkpoint", "load_checkpoint",
    "restore_checkpoint", "list_checkpoints", "latest_checkpoint", "checkpoint_stem",
    "checkpoint_files", "resolve_checkpoint", "read_sidecar", "model_args_from", "describe_model_args",
    "NonFiniteCheckpointError",
]

FORMAT = "margin_theory.checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")
_MODEL_ARG_DEFAULTS = {k: v for k, v in ModelSpec().as_dict().items() if k != "name"}
_MAX_LAYERS = 1022          # = runfolder.MAX_LAYERS: Lemma 1's degree stays a finite float64
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
           torch.uint8: "U8", torch.bool: "BOOL"}
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint's weights or optimizer state are NaN or infinite (never written, never read)."""


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
    try:
        spec = getattr(model, "spec", None) or ModelSpec.from_mapping(cfg, name=name)
    except MarginTheoryError as exc:
        raise ConfigError(f"cannot checkpoint this model: {exc}") from None
    return {**spec.as_dict(),
            "input_shape": [int(s) for s in getattr(model, "input_shape", cfg.get("input_shape") or [])],
            "num_classes": int(getattr(model, "num_classes", cfg.get("num_classes") or 0))}


def describe_model_args(args: Mapping) -> str:
    """E.g. ``lowrank (rank 2, input (1, 8, 8), 10 classes)`` (:meth:`ModelSpec.describe`)."""
    try:
        bits = [ModelSpec.from_mapping(args).describe()]
    except MarginTheoryError:
        bits = []
    bits += [f"input {tuple(args.get('input_shape') or ())}", f"{args.get('num_classes')} classes"]
    return f"{args.get('name')} ({', '.join(b for b in bits if b)})"


def _build(args: Mapping) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
            return ModelSpec.from_mapping(args).build(args["input_shape"], args["num_classes"])
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
    for name, t in tensors.items():
        if not name.startswith("rng.") and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteCheckpointError(f"refusing to write checkpoint {tensor_path.stem}: tensor {name} "
                                           "holds NaN or infinite values")
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
    try:
        atomic_write_bytes(tensor_path, blob)
        try:
            atomic_write_json(sidecar_path, meta)
        except BaseException:
            # the new tensors without their sidecar are no checkpoint: remove them (an old
            # sidecar of this epoch would now disagree with them, so it goes as well)
            tensor_path.unlink(missing_ok=True)
            sidecar_path.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {tensor_path.stem} in {tensor_path.parent}: "
                              f"{exc.strerror or exc}; the earlier checkpoints are intact") from None
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
    _validate_sidecar(meta, sidecar)
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate_sidecar(meta: dict, sidecar: Path) -> None:
    """Type-check every field the readers use; :class:`CheckpointError` naming the first bad one."""
    def bad(what: str, v: Any = None, show: bool = True) -> CheckpointError:
        r = repr(v)
        got = f", got {r if len(r) <= 60 else r[:57] + '...'}" if show else ""
        return CheckpointError(f"{sidecar}: {what}{got}")

    for key in ("epoch", "step", "model_args", "config", "tensor_bytes", "tensor_sha256"):
        if key not in meta:
            raise CheckpointError(f"{sidecar}: sidecar lacks the field {key!r}")
    for key, hi in (("epoch", 10**9), ("step", 2**62)):
        if not _is_int(meta[key]) or not 0 <= meta[key] <= hi:
            raise bad(f"{key} must be an integer in [0, {hi}]", meta[key])
    if not isinstance(meta["config"], dict):
        raise bad("config must be a JSON object", type(meta["config"]).__name__)
    if not _is_int(meta["tensor_bytes"]) or meta["tensor_bytes"] < 8:
        raise bad("tensor_bytes must be an integer >= 8", meta["tensor_bytes"])
    if not isinstance(meta["tensor_sha256"], str) or not _SHA_RE.match(meta["tensor_sha256"]):
        raise bad("tensor_sha256 must be 64 lowercase hex digits (the hash is required)", meta["tensor_sha256"])
    if "tensors" in meta and not isinstance(meta["tensors"], str):
        raise bad("tensors must be a file name", meta["tensors"])
    ma = meta["model_args"]
    if not isinstance(ma, dict) or not isinstance(ma.get("name"), str) or not ma["name"]:
        raise bad("invalid model_args (an object with a model name)", ma)
    shape = ma.get("input_shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or \
            not all(_is_int(d) and 1 <= d <= 2**24 for d in shape):
        raise bad("model_args.input_shape must be 1 to 4 integers in [1, 2^24]", shape)
    if not _is_int(ma.get("num_classes")) or not 2 <= ma["num_classes"] <= 2**24:
        raise bad("model_args.num_classes must be an integer in [2, 2^24]", ma.get("num_classes"))
    for key, hi in (("rank", 2**40), ("layers", _MAX_LAYERS), ("conv_channels", 2**24)):
        v = ma.get(key, _MODEL_ARG_DEFAULTS[key])
        if not _is_int(v) or not 1 <= v <= hi:
            raise bad(f"model_args.{key} must be an integer in [1, {hi}]", v)
    hid = ma.get("hidden")
    if hid is not None and not (_is_int(hid) and 1 <= hid <= 2**40) and not (
            isinstance(hid, list) and 1 <= len(hid) <= _MAX_LAYERS and all(_is_int(h) and 1 <= h <= 2**40 for h in hid)):
        raise bad("model_args.hidden must be null or positive integers", hid)
    if not isinstance(ma.get("conv_bias", True), bool):
        raise bad("model_args.conv_bias must be true or false", ma.get("conv_bias"))
    rng = meta.get("rng", [])
    if not isinstance(rng, list) or not all(isinstance(r, str) and re.fullmatch(r"[A-Za-z0-9_]+", r) for r in rng):
        raise bad("rng must be a list of generator names", rng)
    if not isinstance(meta.get("metrics") or {}, dict):
        raise bad("metrics must be a JSON object", meta.get("metrics"))
    om = meta.get("optimizer")
    if om is None:
        return
    if not isinstance(om, dict) or not isinstance(om.get("class"), str):
        raise bad("optimizer must be null or an object with a class name", om)
    groups = om.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise bad("optimizer.param_groups must be a non-empty list of objects", groups)
    for gi, grp in enumerate(groups):
        for k, v in grp.items():
            ctx = f"optimizer.param_groups[{gi}].{k}"
            if k == "params":
                if not isinstance(v, list) or not all(_is_int(i) and 0 <= i < 2**31 for i in v):
                    raise bad(f"{ctx} must be a list of parameter indices", v)
            elif k in ("lr", "momentum", "dampening", "weight_decay"):
                if not _is_number(v):
                    raise bad(f"{ctx} must be a finite number", v)
            elif k in ("nesterov", "maximize", "foreach", "differentiable", "fused"):
                if v is not None and not isinstance(v, bool):
                    raise bad(f"{ctx} must be true, false or null", v)
            elif v is not None and not isinstance(v, (bool, int, float, str)):
                raise bad(f"{ctx} must be a plain value", v)
    st = om.get("state") or {}
    if not isinstance(st, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(d, dict)
                                           for k, d in st.items()):
        raise bad("optimizer.state must map parameter indices to objects", st)


def _expected_tensors(model: nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None
                      ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) of the model's state, the optimizer's per-parameter
    tensors (shaped like their parameter) and the rng states (``U8``, 1-D, shape ``None``)."""
    exp = {f"model.{k}": (_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in model.state_dict().items()}
    params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer is not None \
        else list(model.parameters())
    exp["__params__"] = [(_DTYPES.get(p.dtype, str(p.dtype)), tuple(p.shape)) for p in params]  # type: ignore
    return exp


def _check_header(tensor_path: Path, blob: bytes, meta: dict, expected: dict, what: str) -> None:
    """Check the safetensors header (names, dtypes, shapes) against ``expected`` before loading."""
    if len(blob) < 8:
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file (shorter than its header)")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file (header of {n} bytes)")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file (bad header)")
    header.pop("__metadata__", None)
    params = expected["__params__"]
    rng_names = set(meta.get("rng") or [])
    model_keys = {k for k in expected if k.startswith("model.")}
    missing = sorted(k[6:] for k in model_keys - set(header))
    extra = sorted(k[6:] for k in header if k.startswith("model.") and k not in model_keys)
    if missing or extra:
        raise _mismatch(what, missing, extra)
    for name, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or \
                not isinstance(info.get("shape"), list) or not all(_is_int(d) and d >= 0 for d in info["shape"]):
            raise CheckpointError(f"{tensor_path}: bad header entry for tensor {name[:80]!r}")
        dtype, shape = info["dtype"], tuple(info["shape"])
        if name.startswith("model."):
            want = expected[name]
        elif name.startswith("optim.state."):
            m = re.fullmatch(r"optim\.state\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)", name)
            if not m or int(m.group(1)) >= len(params):
                raise CheckpointError(f"{tensor_path}: invalid optimizer tensor name {name[:80]!r} "
                                      f"(expected optim.state.<index < {len(params)}>.<key>)")
            want = params[int(m.group(1))]
        elif name.startswith("rng.") and name[4:] in rng_names:
            if dtype != "U8" or len(shape) != 1:
                raise CheckpointError(f"{tensor_path}: random-generator state {name} must be 1-D uint8, "
                                      f"got {dtype} of shape {shape}")
            continue
        else:
            raise CheckpointError(f"{tensor_path}: unexpected tensor name {name[:80]!r} (expected model.*, "
                                  "optim.state.<i>.<key> or one of the sidecar's rng names)")
        if dtype != want[0]:
            raise CheckpointError(f"{what}: tensor {name} is {dtype}, the model needs {want[0]} (not cast)")
        if shape != tuple(want[1]):
            raise CheckpointError(f"{what}: tensor {name[6:] if name.startswith('model.') else name} has shape "
                                  f"{shape}, the model needs {tuple(want[1])}")
    missing_rng = sorted(rng_names - {k[4:] for k in header if k.startswith("rng.")})
    if missing_rng:
        raise CheckpointError(f"{tensor_path}: the sidecar lists rng state(s) {', '.join(missing_rng)} "
                              "that the tensor file lacks")


def _read_tensors(tensor_path: Path, meta: dict, expected: dict | None = None, what: str | None = None
                  ) -> dict[str, torch.Tensor]:
    """Read, verify (size, SHA-256, header against ``expected``) and load the tensor file."""
    want_bytes, want_sha = meta["tensor_bytes"], meta["tensor_sha256"]
    try:
        size = tensor_path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from None
    if size != want_bytes:
        raise CheckpointError(f"{tensor_path} is truncated or replaced: {size} bytes, the sidecar says {want_bytes}")
    check_memory(2.0 * size, f"checkpoint {tensor_path.name}")
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from None
    if len(blob) != want_bytes:
        raise CheckpointError(f"{tensor_path} is truncated or replaced: {len(blob)} bytes, the sidecar says {want_bytes}")
    if hashlib.sha256(blob).hexdigest() != want_sha:
        raise CheckpointError(f"{tensor_path} is corrupt: its SHA-256 differs from the sidecar's")
    if expected is not None:
        _check_header(tensor_path, blob, meta, expected, what or tensor_path.name)
    from safetensors.torch import load as _st_load

    try:
        tensors = _st_load(blob)
    except Exception as exc:  # safetensors raises SafetensorError (and others) on bad files
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file: {msg}") from None
    for name, t in tensors.items():
        if not name.startswith("rng.") and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteCheckpointError(f"checkpoint {tensor_path.name}: tensor {name} holds NaN or infinite "
                                           "values; refusing a non-finite checkpoint")
    return tensors


def _meta_model(args: Mapping, tensor_path: Path) -> tuple[nn.Module, int]:
    """The sidecar's model on the ``meta`` device (shapes, no storage), its size checked
    against the tensor file before anything real is allocated."""
    with torch.device("meta"):
        try:
            model = _build(args)
        except (RuntimeError, OverflowError, MemoryError) as exc:
            raise CheckpointError(f"checkpoint describes a model that cannot be built: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return model, need


def _mismatch(what: str, missing: list[str], extra: list[str]) -> CheckpointError:
    """'<what>: tensors do not match the model (missing a, b ...; unexpected c)'."""
    parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("missing", missing), ("unexpected", extra)) if names]
    return CheckpointError(f"{what}: tensors do not match the model ({'; '.join(parts)})")


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expect = model.state_dict()
    missing = [k for k in expect if k not in state]
    extra = [k for k in state if k not in expect]
    if missing or extra:
        raise _mismatch(what, missing, extra)
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
    what = f"{tensor_path.name} ({describe_model_args(meta['model_args'])})"
    shell, need = _meta_model(meta["model_args"], tensor_path)
    if need > meta["tensor_bytes"]:
        raise CheckpointError(f"{what}: the model needs {need:,} bytes of weights, the tensor file holds "
                              f"{meta['tensor_bytes']:,}")
    tensors = _read_tensors(tensor_path, meta, _expected_tensors(shell, meta), what)
    model_state, opt_state, rng = _split(tensors, meta, device)
    model = _build(meta["model_args"])
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
    keys = [k for k in ("name", "input_shape", "num_classes") + ModelSpec.args() if k in mine]
    if any(_norm(saved.get(k, _MODEL_ARG_DEFAULTS.get(k))) != _norm(mine.get(k)) for k in keys):
        raise CheckpointError(f"checkpoint {tensor_path.name} is for model {describe_model_args(saved)}, "
                              f"not {describe_model_args(mine)}")
    what = f"checkpoint {tensor_path.name} is for model {describe_model_args(saved)}"
    if optimizer is not None:
        if not meta.get("optimizer"):
            raise CheckpointError(f"checkpoint {tensor_path.name} holds no optimizer state; cannot resume training from it")
        if meta["optimizer"].get("class") != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {tensor_path.name} holds {meta['optimizer'].get('class')} state, "
                                  f"not {type(optimizer).__name__}")
        _check_param_groups(tensor_path, meta["optimizer"]["param_groups"], optimizer)
    try:
        tensors = _read_tensors(tensor_path, meta, _expected_tensors(model, meta, optimizer), what)
    except CheckpointError as exc:
        if str(exc).startswith(what):
            raise CheckpointError(f"{exc}, not {describe_model_args(mine)}") from None
        raise
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model_state, opt_state, rng = _split(tensors, meta, device)
    try:
        _check_state(model, model_state, what)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}, not {describe_model_args(mine)}") from None
    model.load_state_dict(model_state, strict=True)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            msg = " ".join(str(exc).split())
            raise CheckpointError(f"checkpoint {tensor_path.name}: optimizer state does not fit: {msg}") from None
    return Checkpoint(model=model, config=dict(meta["config"]), epoch=int(meta["epoch"]),
                      step=int(meta["step"]), path=tensor_path, meta=meta,
                      metrics=dict(meta.get("metrics") or {}), optimizer_state=opt_state, rng_state=rng)


def _check_param_groups(tensor_path: Path, saved: list, optimizer: torch.optim.Optimizer) -> None:
    """The caller's optimizer (built from the run's configuration) is the authority: every
    setting the checkpoint stores must equal it (``lr`` is set per epoch from the schedule)."""
    live = optimizer.state_dict()["param_groups"]
    if len(saved) != len(live):
        raise CheckpointError(f"checkpoint {tensor_path.name}: optimizer state does not fit: {len(saved)} "
                              f"parameter group(s), the optimizer has {len(live)}")
    for gi, (s, l) in enumerate(zip(saved, live)):
        if len(s.get("params", [])) != len(l["params"]):
            raise CheckpointError(f"checkpoint {tensor_path.name}: optimizer state does not fit: group {gi} "
                                  f"holds {len(s.get('params', []))} parameters, the optimizer {len(l['params'])}")
        for k, v in s.items():
            if k in ("params", "lr"):
                continue
            if k not in l:
                raise CheckpointError(f"checkpoint {tensor_path.name}: unknown optimizer setting {k!r}")
            if _norm(v) != _norm(l[k]):
                raise CheckpointError(f"checkpoint {tensor_path.name}: optimizer setting {k} = {v!r} differs "
                                      f"from the run's configuration ({l[k]!r}); the configuration is the "
                                      "authority - refusing to resume")


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v
