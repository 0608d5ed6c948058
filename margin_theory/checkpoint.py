"""Checkpoints: safetensors + a JSON sidecar, never pickle (SPEC §8, CONVENTIONS).

Epoch ``e`` of a run in ``DIR`` is the pair ``DIR/checkpoints/epoch-000e.safetensors`` (tensors:
``model.<name>`` the ``state_dict``, ``optim.state.<i>.<key>`` the optimizer's per-parameter tensors,
``rng.<name>`` uint8 generator states - ``generator_<cpu|cuda>``, ``torch_cpu``, ``torch_cuda``) and
``DIR/checkpoints/epoch-000e.json``, the sidecar::

    {"format": "margin_theory.checkpoint", "version": 1, "epoch": e, "step": global SGD step,
     "model_name": ..., "model_args": {ModelSpec.as_dict(), input_shape, num_classes},
     "input_shape": [...], "num_classes": C, "degree": L or null, "head_degree": ...,
     "parameters": dense count, "config": {the TrainConfig},
     "optimizer": {"class": "SGD", "param_groups": [...], "state": {non-tensor state}} or null,
     "rng": [names of the rng.* tensors], "metrics": {the epoch's metrics line},
     "tensors": "epoch-000e.safetensors", "tensor_bytes": n, "tensor_sha256": hex,
     "torch_version": ..., "margin_theory_version": ..., "created": ISO-8601 UTC}

Both are written atomically, tensors first: a checkpoint exists (:func:`list_checkpoints`) only when
both are complete; byte count and SHA-256 detect a truncated, corrupt or mismatched pair. Reading is
strict (``docs/safety.md``): every sidecar field is type-checked; the tensor header is checked against
the model built on the ``meta`` device before anything is allocated; dtypes are never cast; non-finite
weights are neither written nor read. Every problem is a one-line :class:`~margin_theory._util.CheckpointError`.
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
from ._util import check_memory, is_int, is_number, one_line, short_repr
from .models import MAX_LAYERS, ModelSpec

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
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
           torch.uint8: "U8", torch.bool: "BOOL"}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint's weights or optimizer state are NaN or infinite (never written, never read)."""


@dataclass
class Checkpoint:
    """A checkpoint read back: ``path`` the ``.safetensors`` file, ``meta`` the whole sidecar,
    ``optimizer_state`` for ``Optimizer.load_state_dict`` (or ``None``), ``rng_state`` name -> uint8 tensor."""

    model: nn.Module
    config: dict
    epoch: int
    step: int
    path: Path
    meta: dict
    metrics: dict = field(default_factory=dict)
    optimizer_state: dict | None = None
    rng_state: dict = field(default_factory=dict)


# --- Paths ---
def checkpoint_stem(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch-%04d`` (no suffix)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch-{int(epoch):04d}"


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(tensor_file, sidecar)`` for a stem, a ``.safetensors`` or a ``.json`` path."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (both files) of a run folder or its ``checkpoints`` folder, as
    ``.safetensors`` paths sorted by epoch (``[]`` for a missing folder)."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR if (run_dir / CHECKPOINT_DIR).is_dir() else run_dir
    found = []
    for js in folder.glob("epoch-*.json") if folder.is_dir() else ():
        m = _EPOCH_RE.match(js.stem)
        if m and js.with_suffix(".safetensors").is_file():
            found.append((int(m.group(1)), js.with_suffix(".safetensors")))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``run_dir`` (``.safetensors`` path), or ``None``."""
    return (list_checkpoints(run_dir) or [None])[-1]


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
    for p in checkpoint_files(path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}")
    return checkpoint_files(path)[0]


# --- Model description ---
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


def _build(args: Mapping, what: str = "checkpoint describes a model that cannot be built") -> nn.Module:
    """The model of ``args`` (a sidecar's ``model_args`` or a foreign spec with ``input_shape`` and
    ``num_classes``), the caller's RNG untouched; on the ``meta`` device under ``torch.device("meta")``.
    ``what`` starts the error message."""
    try:
        with torch.random.fork_rng(devices=[]):
            return ModelSpec.from_mapping(args).build(args["input_shape"], args["num_classes"])
    except (MarginTheoryError, RuntimeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{what}: {one_line(exc, 200)}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint has invalid model arguments {dict(args)!r}: {exc}") from None


def _nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first weight / optimizer tensor holding NaN or inf (rng states are bytes)."""
    return next((k for k, t in tensors.items() if not k.startswith("rng.") and t.is_floating_point()
                 and not bool(torch.isfinite(t).all())), None)


# --- Saving ---
def save_checkpoint(path_stem: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    config: Any, epoch: int, step: int, rng_state: Mapping[str, torch.Tensor] | None = None,
                    metrics: Mapping | None = None) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; return the tensor path.
    ``rng_state``: name -> uint8 tensor (``Generator.get_state()``); ``metrics``: the epoch's line."""
    from safetensors.torch import save as _st_save
    from . import __version__

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").contiguous().clone()

    tensor_path, sidecar_path = checkpoint_files(path_stem)
    cfg = _config_dict(config)
    margs = model_args_from(cfg, model)
    tensors = {f"model.{k}": cpu(v) for k, v in model.state_dict().items()}
    opt_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        nontensor: dict[str, dict] = {}
        for i, st in sd["state"].items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.state.{i}.{key}"] = cpu(val)
                else:
                    nontensor.setdefault(str(i), {})[key] = val
        opt_meta = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "state": nontensor}
    for name, st in (rng_state or {}).items():
        if not isinstance(st, torch.Tensor):
            raise ConfigError(f"rng state {name!r} must be a tensor")
        tensors[f"rng.{name}"] = cpu(st)
    bad = _nonfinite(tensors)
    if bad:
        raise NonFiniteCheckpointError(f"refusing to write checkpoint {tensor_path.stem}: tensor {bad} "
                                       "holds NaN or infinite values")
    blob = _st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION), "epoch": str(int(epoch))})
    meta = {"format": FORMAT, "version": VERSION, "epoch": int(epoch), "step": int(step), "model_name": margs["name"],
            "model_args": margs, "input_shape": margs["input_shape"], "num_classes": margs["num_classes"],
            "degree": getattr(model, "degree", None), "head_degree": getattr(model, "head_degree", None),
            "parameters": sum(p.numel() for p in model.parameters()), "config": cfg, "optimizer": opt_meta,
            "rng": list(rng_state or {}), "metrics": dict(metrics or {}), "tensors": tensor_path.name,
            "tensor_bytes": len(blob), "tensor_sha256": hashlib.sha256(blob).hexdigest(),
            "torch_version": torch.__version__, "margin_theory_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        atomic_write_bytes(tensor_path, blob)
        try:
            atomic_write_json(sidecar_path, meta)
        except BaseException:       # new tensors without their sidecar, or with an old one: both go
            tensor_path.unlink(missing_ok=True)
            sidecar_path.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {tensor_path.stem} in {tensor_path.parent}: "
                              f"{exc.strerror or exc}; the earlier checkpoints are intact") from None
    return tensor_path


# --- Reading ---
def read_sidecar(path: str | Path) -> dict:
    """The validated JSON sidecar of a checkpoint (``path`` as in :func:`resolve_checkpoint`)."""
    _, sidecar = checkpoint_files(resolve_checkpoint(path))
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint sidecar {sidecar}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not valid JSON ({exc.msg} at line {exc.lineno})"
                              ) from None
    except RecursionError:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{sidecar} is not a margin_theory checkpoint (format {got!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{sidecar}: unsupported checkpoint version {meta.get('version')!r} "
                              f"(this toolkit reads {VERSION})")
    _validate_sidecar(meta, sidecar)
    return meta


def _ints(v: Any, lo: int, hi: int, n: int = MAX_LAYERS) -> bool:
    """A list of 1..n integers in [lo, hi]."""
    return isinstance(v, list) and 1 <= len(v) <= n and all(is_int(d) and lo <= d <= hi for d in v)


#: optimizer setting -> (test, what it must be); any other setting must be a plain value
_GROUP_FIELDS = {"params": (lambda v: isinstance(v, list) and all(is_int(i) and 0 <= i < 2**31 for i in v),
                            "a list of parameter indices"),
                 **dict.fromkeys(("lr", "momentum", "dampening", "weight_decay"), (is_number, "a finite number")),
                 **dict.fromkeys(("nesterov", "maximize", "foreach", "differentiable", "fused"),
                                 (lambda v: v is None or isinstance(v, bool), "true, false or null"))}
_PLAIN = (lambda v: v is None or isinstance(v, (bool, int, float, str)), "a plain value")


def _validate_sidecar(meta: dict, sidecar: Path) -> None:
    """Type-check every field the readers use; :class:`CheckpointError` naming the first bad one."""
    def check(ok: bool, what: str, v: Any) -> None:
        if not ok:
            raise CheckpointError(f"{sidecar}: {what}, got {short_repr(v, 60)}")

    for key in ("epoch", "step", "model_args", "config", "tensor_bytes", "tensor_sha256"):
        if key not in meta:
            raise CheckpointError(f"{sidecar}: sidecar lacks the field {key!r}")
    for key, hi in (("epoch", 10**9), ("step", 2**62)):
        check(is_int(meta[key]) and 0 <= meta[key] <= hi, f"{key} must be an integer in [0, {hi}]", meta[key])
    check(isinstance(meta["config"], dict), "config must be a JSON object", type(meta["config"]).__name__)
    check(is_int(meta["tensor_bytes"]) and meta["tensor_bytes"] >= 8, "tensor_bytes must be an integer >= 8",
          meta["tensor_bytes"])
    sha = meta["tensor_sha256"]
    check(isinstance(sha, str) and bool(_SHA_RE.match(sha)),
          "tensor_sha256 must be 64 lowercase hex digits (the hash is required)", sha)
    check(isinstance(meta.get("tensors", ""), str), "tensors must be a file name", meta.get("tensors"))
    ma = meta["model_args"]
    check(isinstance(ma, dict) and isinstance(ma.get("name"), str) and bool(ma["name"]),
          "invalid model_args (an object with a model name)", ma)
    check(_ints(ma.get("input_shape"), 1, 2**24, 4), "model_args.input_shape must be 1 to 4 integers in [1, 2^24]",
          ma.get("input_shape"))
    check(is_int(ma.get("num_classes")) and 2 <= ma["num_classes"] <= 2**24,
          "model_args.num_classes must be an integer in [2, 2^24]", ma.get("num_classes"))
    for key, hi in (("rank", 2**40), ("layers", MAX_LAYERS), ("conv_channels", 2**24)):
        v = ma.get(key, _MODEL_ARG_DEFAULTS[key])
        check(is_int(v) and 1 <= v <= hi, f"model_args.{key} must be an integer in [1, {hi}]", v)
    hid = ma.get("hidden")
    check(hid is None or (is_int(hid) and 1 <= hid <= 2**40) or _ints(hid, 1, 2**40),
          "model_args.hidden must be null or positive integers", hid)
    check(isinstance(ma.get("conv_bias", True), bool), "model_args.conv_bias must be true or false",
          ma.get("conv_bias"))
    rng = meta.get("rng", [])
    check(isinstance(rng, list) and all(isinstance(r, str) and re.fullmatch(r"[A-Za-z0-9_]+", r) for r in rng),
          "rng must be a list of generator names", rng)
    check(isinstance(meta.get("metrics") or {}, dict), "metrics must be a JSON object", meta.get("metrics"))
    om = meta.get("optimizer")
    if om is None:
        return
    check(isinstance(om, dict) and isinstance(om.get("class"), str),
          "optimizer must be null or an object with a class name", om)
    groups = om.get("param_groups")
    check(isinstance(groups, list) and bool(groups) and all(isinstance(g, dict) for g in groups),
          "optimizer.param_groups must be a non-empty list of objects", groups)
    for gi, grp in enumerate(groups):
        for k, v in grp.items():
            ok, what = _GROUP_FIELDS.get(k, _PLAIN)
            check(ok(v), f"optimizer.param_groups[{gi}].{k} must be {what}", v)
    st = om.get("state") or {}
    check(isinstance(st, dict) and all(isinstance(k, str) and k.isdigit() and isinstance(d, dict)
                                       for k, d in st.items()),
          "optimizer.state must map parameter indices to objects", st)


def _expected_tensors(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """name -> (safetensors dtype, shape) of the model's state, and under ``__params__`` the
    (dtype, shape) of each optimizer parameter (its per-parameter tensors are shaped alike)."""
    def sig(t: torch.Tensor) -> tuple[str, tuple[int, ...]]:
        return _DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)

    params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer is not None \
        else list(model.parameters())
    return {**{f"model.{k}": sig(v) for k, v in model.state_dict().items()}, "__params__": [sig(p) for p in params]}


def _check_header(tensor_path: Path, blob: bytes, meta: dict, expected: dict, what: str) -> None:
    """Check the safetensors header (names, dtypes, shapes) against ``expected`` before loading."""
    n = int.from_bytes(blob[:8], "little")           # the sidecar's byte count (>= 8) was checked
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8")) if n <= len(blob) - 8 else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file (bad header)")
    header.pop("__metadata__", None)
    params, rng_names = expected["__params__"], set(meta.get("rng") or [])
    model_keys = {k for k in expected if k.startswith("model.")}
    parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for label, names in (
        ("missing", sorted(k[6:] for k in model_keys - set(header))),
        ("unexpected", sorted(k[6:] for k in header if k.startswith("model.") and k not in model_keys))) if names]
    if parts:
        raise CheckpointError(f"{what}: tensors do not match the model ({'; '.join(parts)})")
    for name, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or \
                not isinstance(info.get("shape"), list) or not all(is_int(d) and d >= 0 for d in info["shape"]):
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


def _load(tensor_path: Path, meta: dict, expected: dict, what: str, model: nn.Module, device) -> Checkpoint:
    """Verify the tensor file (size, SHA-256, header, finiteness) and load it into ``model`` (a ``meta``
    shell gets its storage only then, uninitialised: every tensor is loaded); the optimizer's tensors go to
    ``device``."""
    from safetensors.torch import load as _st_load
    want_bytes = meta["tensor_bytes"]
    try:
        size = tensor_path.stat().st_size
        if size == want_bytes:
            check_memory(2.0 * size, f"checkpoint {tensor_path.name}")
            blob = tensor_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from None
    if size != want_bytes:
        raise CheckpointError(f"{tensor_path} is truncated or replaced: {size} bytes, the sidecar says {want_bytes}")
    if hashlib.sha256(blob).hexdigest() != meta["tensor_sha256"]:
        raise CheckpointError(f"{tensor_path} is corrupt: its SHA-256 differs from the sidecar's")
    _check_header(tensor_path, blob, meta, expected, what)
    try:
        tensors = _st_load(blob)
    except Exception as exc:  # safetensors raises SafetensorError (and others) on bad files
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file: {one_line(exc, 2000)}") from None
    bad = _nonfinite(tensors)
    if bad:
        raise NonFiniteCheckpointError(f"checkpoint {tensor_path.name}: tensor {bad} holds NaN or infinite "
                                       "values; refusing a non-finite checkpoint")
    if any(t.is_meta for t in model.state_dict().values()):    # read_checkpoint's shell: storage, no init
        model = model.to_empty(device="cpu")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    opt_state, om = None, meta.get("optimizer")
    if om:
        state: dict[int, dict] = {int(i): dict(d) for i, d in (om.get("state") or {}).items()}
        for k, v in tensors.items():
            if k.startswith("optim.state."):
                i, key = k[len("optim.state."):].split(".", 1)
                state.setdefault(int(i), {})[key] = v.to(device)
        opt_state = {"state": state, "param_groups": om.get("param_groups", [])}
    return Checkpoint(model=model, config=dict(meta["config"]), epoch=int(meta["epoch"]), step=int(meta["step"]),
                      path=tensor_path, meta=meta, metrics=dict(meta.get("metrics") or {}), optimizer_state=opt_state,
                      rng_state={k[4:]: v for k, v in tensors.items() if k.startswith("rng.")})


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at ``path`` (as :func:`resolve_checkpoint`), its model rebuilt from the sidecar."""
    tensor_path = resolve_checkpoint(path)
    meta = read_sidecar(tensor_path)
    what = f"{tensor_path.name} ({describe_model_args(meta['model_args'])})"
    with torch.device("meta"):          # shapes, no storage: sized before anything real is allocated
        shell = _build(meta["model_args"])
    need = sum(t.numel() * t.element_size() for t in shell.state_dict().values())
    if need > meta["tensor_bytes"]:
        raise CheckpointError(f"{what}: the model needs {need:,} bytes of weights, the tensor file holds "
                              f"{meta['tensor_bytes']:,}")
    ck = _load(tensor_path, meta, _expected_tensors(shell), what, shell, device)
    ck.model.to(device).eval()
    return ck


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    spec: Mapping | str | Path | None = None) -> tuple[nn.Module, dict]:
    """``(model, config)`` of a checkpoint, the model in eval mode. A foreign file (:mod:`margin_theory.foreign`)
    needs ``spec``: train's options, e.g. ``{"model": "lowrank", "rank": 4, "dataset": "mnist"}``, or a
    JSON/TOML file."""
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
    """Load a checkpoint INTO ``model`` (and ``optimizer``) to resume: the same model (name, input
    shape, classes, tensor shapes and the caller's ``model_args``) or ``"checkpoint ... is for model X
    (...), not Y (...)"``."""
    tensor_path = resolve_checkpoint(path)
    meta = read_sidecar(tensor_path)
    saved, name = meta["model_args"], tensor_path.name
    mine = dict(model_args) if model_args is not None else {
        "name": getattr(model, "name", None), "input_shape": list(getattr(model, "input_shape", ())),
        "num_classes": getattr(model, "num_classes", None)}
    what = f"checkpoint {name} is for model {describe_model_args(saved)}"
    keys = [k for k in ("name", "input_shape", "num_classes") + ModelSpec.args() if k in mine]
    if any(comparable(saved.get(k, _MODEL_ARG_DEFAULTS.get(k))) != comparable(mine.get(k)) for k in keys):
        raise CheckpointError(f"{what}, not {describe_model_args(mine)}")
    if optimizer is not None:
        if not meta.get("optimizer"):
            raise CheckpointError(f"checkpoint {name} holds no optimizer state; cannot resume training from it")
        if meta["optimizer"].get("class") != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {name} holds {meta['optimizer'].get('class')} state, "
                                  f"not {type(optimizer).__name__}")
        _check_param_groups(name, meta["optimizer"]["param_groups"], optimizer)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        ck = _load(tensor_path, meta, _expected_tensors(model, optimizer), what, model, device)
    except CheckpointError as exc:
        if str(exc).startswith(what):
            raise CheckpointError(f"{exc}, not {describe_model_args(mine)}") from None
        raise
    if optimizer is not None:
        try:
            optimizer.load_state_dict(ck.optimizer_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {name}: optimizer state does not fit: {one_line(exc, 2000)}") from None
    return ck


def _check_param_groups(name: str, saved: list, optimizer: torch.optim.Optimizer) -> None:
    """Every stored setting must equal the caller's optimizer (the run's configuration is the
    authority; ``lr`` is set per epoch from the schedule)."""
    live = optimizer.state_dict()["param_groups"]
    misfit = f"checkpoint {name}: optimizer state does not fit"
    if len(saved) != len(live):
        raise CheckpointError(f"{misfit}: {len(saved)} parameter group(s), the optimizer has {len(live)}")
    for gi, (s, l) in enumerate(zip(saved, live)):
        if len(s.get("params", [])) != len(l["params"]):
            raise CheckpointError(f"{misfit}: group {gi} holds {len(s.get('params', []))} parameters, "
                                  f"the optimizer {len(l['params'])}")
        for k, v in s.items():
            if k in ("params", "lr"):
                continue
            if k not in l:
                raise CheckpointError(f"checkpoint {name}: unknown optimizer setting {k!r}")
            if comparable(v) != comparable(l[k]):
                raise CheckpointError(f"checkpoint {name}: optimizer setting {k} = {v!r} differs "
                                      f"from the run's configuration ({l[k]!r}); the configuration is the "
                                      "authority - refusing to resume")


def comparable(v: Any) -> Any:
    """``v`` as configurations compare it: lists as tuples, integral floats as ints (JSON's ``2.0``)."""
    if isinstance(v, (list, tuple)):
        return tuple(comparable(x) for x in v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v
