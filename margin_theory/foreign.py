r"""Checkpoints this toolkit did not write, and any ``nn.Module``: Theorem 2 on them (SPEC §2, §3, §5).

The reference, with recipes, is ``docs/checking.md``. Three entry points:

* :func:`read_state_dict` - the tensors of a ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` (**only**
  ``torch.load(weights_only=True)``: never unpickled) or of a ``.safetensors`` without our sidecar;
  nesting under :data:`NEST_KEYS` and the ``module.`` / ``_orig_mod.`` prefixes unwrapped (noted).

* :func:`map_state_dict` - the tensors put into our model named by ``train``'s options: by name, by
  the authors' key maps, then by shape (a misfit is a one-line ``CheckpointError``). Exact maps only:

  - ``nn.Linear(d, C*r, bias=False)`` squared and summed per class, rows class-major: weight
    ``(C*r, d)`` -> ``head.weight (C, r, d)``;
  - the authors' code (``liuchongming1999/dendrite-inspired-neural-network``, ``model/``):
    ``Low_dimensional_quadratic.eigen`` ``(C, d, r)``, :math:`f_c = \sum_k (\mathrm{eigen}_{c,:,k}\cdot x)^2`,
    -> ``head.weight = eigen.permute(0, 2, 1)`` (its unused ``bias`` dropped); ``General_quadratic``
    :math:`f_c = (x^\top A_c x + w_c\cdot x + b_c)/2` -> quadratic ``V = A/2`` (onto a ``linear_term``
    head: ``weight = A``, ``linear = w``, a nonzero ``b`` refused); ``SimpleNet_2``
    (``features.0.*``, ``classifier.0.eigen``) -> ``conv-lowrank``; the CIFAR ``ResNet``
    (``conv1/bn1`` -> ``features.stem.0/1``, ``layerS.i`` -> ``features.layers.<running index>``,
    ``linear`` -> ``head``) -> ``resnet*-<head>``;
  - a zero bias is dropped; a nonzero bias of the first parameterised layer is folded in exactly by
    :math:`\tilde x = [x; 1]`: :math:`(a\cdot x + b)^2 = ([a, b]\cdot\tilde x)^2`,
    :math:`(x^\top A x + w\cdot x + b)/2 = \tilde x^\top M \tilde x`, :math:`M = [[A/2, w/4], [w^\top/4, b/2]]`,
    :math:`Wx + b = [W, b]\tilde x`: homogeneous on a flat input (SPEC §3), head-normalised after a conv.
    An output bias of a Low-Rank head (:math:`\sum_k (a_{ck}\cdot x)^2 + b_c`) has no exact image: refused.

* :func:`check_model` - Theorem 2 on **any** module, L measured by ``homogeneity.numeric_homogeneity``.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ._util import CheckpointError, ConfigError, is_int, one_line, tomllib
from .checkpoint import Checkpoint, _build, describe_model_args
from .margins import NotHomogeneousError, predict
from .models import AffineInput, Classifier, LinearHead, LowRankHead, ModelSpec, QuadraticHead

__all__ = [
    "FOREIGN_SUFFIXES", "NEST_KEYS", "AppendOne", "is_foreign_file", "read_state_dict", "read_spec",
    "foreign_config", "map_state_dict", "read_foreign", "load_foreign", "check_model", "verify_degree",
]

#: suffixes read with torch.load(weights_only=True)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
FOREIGN_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
#: keys under which training scripts nest the state dict, tried in this order
NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
_PREFIXES = {"module.": "DataParallel / DDP", "_orig_mod.": "torch.compile"}
#: the model options a foreign file needs (as train's flags) and the data options
MODEL_KEYS = ("model",) + ModelSpec.args()
DATA_KEYS = ("dataset", "data_dir", "download", "n_train", "n_test", "normalize", "seed")
SPEC_KEYS = MODEL_KEYS + DATA_KEYS + ("keys", "input_shape", "num_classes")
_NO_MODEL = "say what model the file holds: --model NAME (as for train) or model in a spec file"


def _shape(t) -> tuple:
    return tuple(int(s) for s in t.shape)


# --- Files ---
def is_foreign_file(path: str | Path) -> bool:
    """A file not written by this toolkit: a ``torch.save`` file, or a ``.safetensors``
    without its margin_theory JSON sidecar."""
    path = Path(path)
    return path.is_file() and (path.suffix in TORCH_SUFFIXES or
                               path.suffix == ".safetensors" and not path.with_suffix(".json").is_file())


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"(?:unsupported|Unsupported)[^.\n]*?GLOBAL ([\w.]+)", text)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln
                 and "Weights only load failed" not in ln]
        why = f"it refers to {m.group(1)}" if m else lines[0][:160] if lines else \
            "torch.load(weights_only=True) refused it"
        raise CheckpointError(
            f"{path} needs more than tensors and plain containers to load ({why}); this toolkit "
            "reads .pt files only with torch.load(weights_only=True) and never unpickles arbitrary "
            "objects - save model.state_dict() (or use safetensors)") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file: {one_line(exc, 300)}") from None


def _unwrap(obj: Any, path: Path, notes: list[str], where: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in NEST_KEYS:
            if isinstance(obj.get(key), Mapping):
                notes.append(f"state dict nested under {where + repr(key)}")
                return _unwrap(obj[key], path, notes, where + f"{key!r} -> ")
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            skipped = [str(k) for k in obj if k not in tensors]
            if skipped:
                notes.append(f"ignored non-tensor entries {', '.join(skipped[:5])}"
                             + (" ..." if len(skipped) > 5 else ""))
            return tensors
    what = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {list(obj)[:6]}"
    raise CheckpointError(f"{path} holds no state dict (found {what}; expected name -> tensor, possibly under "
                          f"one of {', '.join(NEST_KEYS)})")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state, notes)``: the name -> tensor dict of a foreign file, unwrapped (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    notes: list[str] = []
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError and friends
            raise CheckpointError(f"{path} is not a readable safetensors file: {one_line(exc, 300)}") from None
        if state and all(k.startswith(("model.", "optim.", "rng.")) for k in state) and \
                any(k.startswith("model.") for k in state):
            notes.append("a margin_theory checkpoint without its sidecar: using its model.* tensors")
            state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    elif path.suffix in TORCH_SUFFIXES:
        state = _unwrap(_load_torch(path), path, notes)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected {', '.join(FOREIGN_SUFFIXES)})")
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    while pre := next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(pre):]: v for k, v in state.items()}
        notes.append(f"stripped the {pre!r} prefix ({_PREFIXES[pre]})")
    for k, v in state.items():
        if not v.is_floating_point() and not k.endswith("num_batches_tracked"):
            raise CheckpointError(f"{path}: tensor {k} has dtype {v.dtype}; model weights must be floating point")
    return state, notes


def read_spec(path: str | Path) -> dict:
    """A model/data spec file (JSON or TOML) with :data:`SPEC_KEYS`: ``train``'s model and data
    options, ``input_shape``, ``num_classes`` and ``keys`` (the file's tensor name -> ours)."""
    path = Path(path)
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read spec file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        spec = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"spec file {path} is not valid {kind}: {one_line(exc, 300)}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"spec file {path} must hold a table/object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"spec file {path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(SPEC_KEYS)})")
    if "keys" in spec and (not isinstance(spec["keys"], dict) or
                           not all(isinstance(k, str) and isinstance(v, str) for k, v in spec["keys"].items())):
        raise ConfigError(f"spec file {path}: 'keys' must map tensor names to tensor names")
    return spec


def foreign_config(spec: Mapping, *, need_dataset: bool = True) -> dict:
    """The :class:`~margin_theory.train.TrainConfig` dict (validated) of a foreign file's spec
    (``dataset`` ``None`` when the spec gives ``input_shape`` and ``num_classes`` instead)."""
    from .train import TrainConfig
    if not spec.get("model"):
        raise ConfigError(_NO_MODEL)
    if need_dataset and not spec.get("dataset"):
        raise ConfigError("say which data the model was trained on: --dataset NAME (as for train; with "
                          "--data-dir for mnist, fashion-mnist, cifar10) or dataset in a spec file")
    cfg = {k: spec[k] for k in MODEL_KEYS + DATA_KEYS if spec.get(k) is not None}
    out = TrainConfig.from_dict({**cfg, "dataset": cfg.get("dataset") or "unspecified"}).to_dict()
    return {**out, "dataset": cfg.get("dataset")}


# --- Mapping onto our modules ---
#: :math:`x \mapsto [x; 1]` (flattened): folds a first-layer bias into the weights exactly
AppendOne = AffineInput
_RESNET_NAMES = {"conv1.": "features.stem.0.", "bn1.": "features.stem.1.", "linear.": "head."}


def _authors_rename(state: dict, ours: nn.Module, notes: list[str]) -> dict:
    """The authors' names -> ours (classifier.0 / linear -> head, ResNet conv1/bn1/layerS.i)."""
    blocks = getattr(getattr(ours, "features", None), "blocks", None)
    offsets = None if blocks is None else [sum(blocks[:s]) for s in range(len(blocks))]
    out, renamed = {}, []
    for k, v in state.items():
        new = "head." + k[len("classifier.0."):] if k.startswith("classifier.0.") else k
        if offsets is not None and new == k:
            m = re.match(r"^layer([1-4])\.(\d+)\.(.*)$", k)
            pre = next((p for p in _RESNET_NAMES if k.startswith(p)), None)
            if m:
                new = f"features.layers.{offsets[int(m.group(1)) - 1] + int(m.group(2))}.{m.group(3)}"
            elif pre:
                new = _RESNET_NAMES[pre] + k[len(pre):]
        if new != k:
            renamed.append(k)
        if new in out:
            raise CheckpointError(f"tensors {k} and another both map to {new}")
        out[new] = v
    if renamed:
        notes.append(f"authors' key map applied to {len(renamed)} tensor(s) (e.g. {renamed[0]})")
    return out


def _head_weight(state: dict, head: nn.Module, C: int) -> tuple[str, torch.Tensor, str]:
    """Find the file's head weight: ``(key, tensor in our layout, how)``."""
    d = head.in_features
    if isinstance(head, LowRankHead):
        r = head.rank
        if "head.eigen" in state:
            t = state["head.eigen"]
            if _shape(t) != (C, d, r):
                raise CheckpointError(f"tensor head.eigen (Low_dimensional_quadratic) has shape {_shape(t)}; "
                                      f"the model needs ({C}, {d}, {r}) = (classes, d, rank)")
            return ("head.eigen", t.permute(0, 2, 1).contiguous(),
                    "Low_dimensional_quadratic eigen (C, d, r) -> (C, r, d)")
        forms = {(C, r, d): "as is", (C * r, d): "rows class-major (C*r, d) -> (C, r, d)"}
    elif isinstance(head, QuadraticHead):
        if "head.weight_a" in state:
            t = state["head.weight_a"]
            if _shape(t) != (C, d, d):
                raise CheckpointError(f"tensor head.weight_a (General_quadratic) has shape {_shape(t)}; "
                                      f"the model needs ({C}, {d}, {d})")
            if head.linear is not None:      # our linear-term head halves like theirs
                return "head.weight_a", t, "General_quadratic weight_a as is (the linear-term head halves too)"
            return "head.weight_a", t / 2, "General_quadratic weight_a: V = A/2 (its forward halves the sum)"
        forms = {(C, d, d): "as is"}
    else:
        forms = {(C, d): "as is"}
    want = next(iter(forms))
    cands = [k for k, v in state.items() if _shape(v) in forms]
    if "head.weight" in cands:
        cands = ["head.weight"]
    if not cands:
        have = ", ".join(f"{k} {_shape(v)}" for k, v in list(state.items())[:6])
        raise CheckpointError(f"no tensor fits the head weight {want} of the model (file has: {have})")
    if len(cands) > 1:
        raise CheckpointError(f"tensors {', '.join(cands[:4])} all fit the head weight {want}; name it in a "
                              "spec file: keys = {\"THEIRS\": \"head.weight\"}")
    t = state[cands[0]]
    return cands[0], t.reshape(want), forms[_shape(t)]


def _head_extras(state: dict, head: nn.Module, hkey: str, hw: torch.Tensor, C: int, what: str, notes: list[str],
                 loaded: dict, mapping: dict) -> tuple[set, torch.Tensor | None]:
    """``(used keys, weight of the head on [x; 1] or None)`` from the bias and linear term beside the head
    weight ``hkey``. A ``--linear-term`` head, f = (x^T W x + w.x)/2, takes w (``General_quadratic``'s
    ``weight``, or our ``head.linear``) and refuses a nonzero bias; otherwise a zero bias and linear term
    are dropped and nonzero ones folded in exactly."""
    base = hkey[: hkey.rfind(".") + 1]
    has_lt = isinstance(head, QuadraticHead) and head.linear is not None
    bkey = base + "bias"
    lkey = base + "weight" if hkey.endswith("weight_a") else base + "linear" if has_lt else None
    bias, lin = state.get(bkey), state.get(lkey) if lkey else None
    used = {hkey} | {k for k, t in ((bkey, bias), (lkey, lin)) if t is not None}
    d = head.in_features
    if has_lt and lin is None:
        raise CheckpointError(f"the model has a linear term (--linear-term) but the file has no tensor {lkey}; "
                              "leave --linear-term out")
    if lin is not None and _shape(lin) != (C, d):
        raise CheckpointError(f"tensor {lkey} (the linear term) has shape {_shape(lin)}, expected ({C}, {d})")
    if has_lt:
        if bias is not None and bool((bias != 0).any()):
            raise CheckpointError(f"tensor {bkey} is nonzero and a --linear-term head has no bias; leave "
                                  "--linear-term out to fold it in exactly on [x; 1]")
        loaded["head.linear"], mapping["head.linear"] = lin, lkey
        return used, None
    lowrank = isinstance(head, LowRankHead)
    if bias is None and lin is None:
        return used, None
    if lowrank and hkey.endswith("eigen"):
        notes.append(f"{bkey} of Low_dimensional_quadratic is not used by its forward: ignored")
        return used, None
    if bias is not None and lowrank and _shape(bias) != (C * head.rank,):
        raise CheckpointError(
            f"tensor {bkey} has shape {_shape(bias)}: an output bias f_i = sum_k (a_ik.x)^2 + b_i is not "
            f"a Low-Rank DIQNN and not homogeneous; {what} has none (check such a module with "
            "margin_theory.check_model(model, X, y, normalisation='head'))")
    if bias is not None and not lowrank and _shape(bias) != (C,):
        raise CheckpointError(f"tensor {bkey} has shape {_shape(bias)}, expected ({C},)")
    if all(t is None or not bool(t.any()) for t in (bias, lin)):
        notes.append("linear term and bias are zero: dropped" if lin is not None else f"{bkey} is zero: dropped")
        return used, None
    if not isinstance(head, QuadraticHead):
        if lin is not None and bool(lin.any()):
            raise CheckpointError(f"tensor {lkey} is a nonzero linear term w.x, which {what} does not have "
                                  "(map it onto --model quadratic --linear-term)")
        notes.append(f"{bkey} (inside the square, (a.x + b)^2) folded in exactly: head on [x; 1]" if lowrank
                     else f"{bkey} folded in exactly: linear head on [x; 1], weight [W, b]")
        return used, torch.cat([hw, bias.reshape(*hw.shape[:-1], 1).to(hw.dtype)], dim=-1)
    scale = 0.5 if hkey.endswith("weight_a") else 1.0   # General_quadratic halves everything
    w = lin if lin is not None else torch.zeros(C, d, dtype=hw.dtype)
    b = bias if bias is not None else torch.zeros(C, dtype=hw.dtype)
    notes.append(f"nonzero linear term/bias ({lkey or '-'}, {bkey if bias is not None else '-'}; "
                 f"max |w| {float(w.abs().max()):.3g}, max |b| {float(b.abs().max()):.3g}) folded in "
                 "exactly: quadratic head on [x; 1], "
                 + ("M = [[A/2, w/4], [w^T/4, b/2]]" if scale == 0.5 else "M = [[W, 0], [0, b]]"))
    # [x;1]^T M [x;1] = x^T V x + 2 m.x + M_dd with m = scale w / 2, M_dd = scale b
    new_w = torch.zeros(C, d + 1, d + 1, dtype=hw.dtype)
    new_w[:, :d, :d] = hw
    new_w[:, :d, d] = new_w[:, d, :d] = (scale * w).to(hw.dtype) / 2
    new_w[:, d, d] = (scale * b).to(hw.dtype)
    return used, new_w


def map_state_dict(state: Mapping[str, torch.Tensor], spec: Mapping, input_shape, num_classes: int,
                   notes: list[str] | None = None) -> nn.Module:
    """Our model (``spec``: train's model options) holding ``state``'s weights; see the module doc.

    Raises :class:`CheckpointError` naming the first tensor (key and shape) that does not fit.
    The returned :class:`~margin_theory.models.Classifier` has ``foreign_notes`` (what was
    mapped, how) and ``foreign_map`` (our name -> the file's name).
    """
    notes = [] if notes is None else notes
    state = dict(state)
    for theirs, mine in (spec.get("keys") or {}).items():
        if theirs not in state:
            raise CheckpointError(f"spec keys: the file has no tensor {theirs!r}")
        state[mine] = state.pop(theirs)
    name = spec.get("model")
    if not name:
        raise ConfigError(_NO_MODEL)
    C = int(num_classes)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    ours = _build({**spec, "input_shape": input_shape, "num_classes": C}, f"cannot build model {name!r}").to(dtype)
    what = describe_model_args({**ours.spec.as_dict(), "input_shape": list(input_shape), "num_classes": C})
    expected = ours.state_dict()
    if set(state) != set(expected):
        state = _authors_rename(state, ours, notes)
    head = ours.head
    mapping: dict[str, str] = {}
    loaded: dict[str, torch.Tensor] = {}
    new_w = None            # the weight of a head on [x; 1] that folds a bias in
    has_head_map = isinstance(head, (LinearHead, LowRankHead, QuadraticHead))
    rest_expected, rest_state = dict(expected), dict(state)
    if has_head_map:
        hkey, hw, how = _head_weight(state, head, C)
        mapping["head.weight"], loaded["head.weight"] = hkey, hw
        if how != "as is":
            notes.append(f"head weight from {hkey}: {how}")
        used, new_w = _head_extras(state, head, hkey, hw, C, what, notes, loaded, mapping)
        rest_expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
        rest_state = {k: v for k, v in state.items() if k not in used}
    # everything else: by name, then by unique shape
    for k, v in rest_expected.items():
        if k in rest_state:
            if _shape(rest_state[k]) != _shape(v):
                raise CheckpointError(f"tensor {k} has shape {_shape(rest_state[k])}; {what} needs {_shape(v)}")
            loaded[k], mapping[k] = rest_state.pop(k), k
    for k, v in rest_expected.items():
        if k in loaded:
            continue
        cands = [f for f, t in rest_state.items() if _shape(t) == _shape(v)]
        if len(cands) == 1:
            loaded[k], mapping[k] = rest_state.pop(cands[0]), cands[0]
            notes.append(f"{cands[0]} -> {k} (matched by shape {_shape(v)})")
        elif not cands:
            have = ", ".join(f"{f} {_shape(t)}" for f, t in list(rest_state.items())[:4]) or "nothing left"
            raise CheckpointError(f"{what} needs tensor {k} of shape {_shape(v)}; the file has none that fits "
                                  f"(unmatched: {have})")
        else:
            raise CheckpointError(f"{what}: tensors {', '.join(cands[:4])} all fit {k} {_shape(v)}; name them "
                                  "in a spec file's keys table")
    if rest_state:
        k, t = next(iter(rest_state.items()))
        raise CheckpointError(f"tensor {k} of shape {_shape(t)} has no place in {what}"
                              + (f" ({len(rest_state) - 1} more unmatched)" if len(rest_state) > 1 else ""))
    model = ours
    if new_w is None:       # the shapes were checked above
        ours.load_state_dict({**expected, **loaded}, strict=True)
    else:
        ours.features.load_state_dict({k[len("features."):]: v for k, v in loaded.items()
                                       if k.startswith("features.")}, strict=True)
        d = head.in_features
        new_head = (LowRankHead(d + 1, C, head.rank) if isinstance(head, LowRankHead) else type(head)(d + 1, C))
        new_head = new_head.to(dtype)       # float64 files: [W, b] copied without rounding
        with torch.no_grad():
            new_head.weight.copy_(new_w)
        has_params = any(True for _ in ours.features.parameters())
        model = Classifier(nn.Sequential(ours.features, AppendOne()), new_head, None if has_params else 0,
                           name, input_shape)
        if has_params:
            notes.append("the appended 1 after parameterised features breaks full homogeneity: "
                         "margins use the head normalisation")
    model = model.to(dtype)
    model.foreign_notes, model.foreign_map, model.foreign_augmented = notes, mapping, new_w is not None
    return model.eval()


def read_foreign(path: str | Path, spec: Mapping, *, input_shape=None, num_classes: int | None = None,
                 device: str | torch.device = "cpu"):
    """A :class:`~margin_theory.checkpoint.Checkpoint` for a foreign file (``epoch``/``step``
    ``None``, ``meta = {"format": "foreign", "notes": [...], "map": {...}}``)."""
    path = Path(path)
    state, notes = read_state_dict(path)
    config = None
    if input_shape is None or num_classes is None:
        if spec.get("input_shape") and spec.get("num_classes"):
            input_shape, num_classes = tuple(int(s) for s in spec["input_shape"]), int(spec["num_classes"])
        elif not spec.get("dataset"):
            raise ConfigError("a foreign checkpoint needs the input shape and classes: give dataset "
                              "(--dataset NAME) or input_shape and num_classes in the spec")
        else:
            from .data import canonical_name
            from .runfolder import DATASET_SHAPES
            config = foreign_config(spec, need_dataset=False)
            input_shape, num_classes = DATASET_SHAPES[canonical_name(config["dataset"])]
    model = map_state_dict(state, spec, input_shape, num_classes, notes).to(device)
    return Checkpoint(model=model, config=config or foreign_config(spec, need_dataset=False), epoch=None, step=None,
                      path=path, meta={"format": "foreign", "notes": list(notes), "map": dict(model.foreign_map)})


def load_foreign(path: str | Path, spec: Mapping | str | Path | None, *, device: str | torch.device = "cpu"):
    """``(model, config)`` of a foreign file; ``spec``: a dict or a JSON/TOML spec file."""
    if spec is None:
        raise CheckpointError(f"{Path(path).name} is not a margin_theory checkpoint (no sidecar): say what it "
                              "holds with spec={'model': ..., 'dataset': ...} (or input_shape and num_classes)")
    if isinstance(spec, (str, Path)):
        spec = read_spec(spec)
    try:
        ck = read_foreign(path, spec, device=device)
    except CheckpointError as exc:
        msg = str(exc)
        raise CheckpointError(msg if str(path) in msg else f"{Path(path).name}: {msg}") from None
    return ck.model, ck.config


# --- Any nn.Module ---
class _HeadOnly(nn.Module):
    """The head of a module acting on its captured input (features treated as fixed inputs)."""

    def __init__(self, head: nn.Module, degree: int):
        super().__init__()
        self.head, self.degree = head, degree

    def forward(self, *args):
        return self.head(*args)


def _find_head(model: nn.Module, head) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of ``head=`` (a submodule or its name), else of ``model.head``, else ``None``."""
    if head is None:
        return ("head", model.head) if isinstance(getattr(model, "head", None), nn.Module) else None
    mods = dict(model.named_modules())
    if isinstance(head, nn.Module):
        head = next((n for n, m in mods.items() if m is head), None)
        if head is None:
            raise ConfigError("head= must be a submodule of the model")
    if head not in mods:
        raise ConfigError(f"the model has no submodule {head!r} (head=)")
    return head, mods[head]


def _require_degree(model: nn.Module, hom, degree: int | None) -> None:
    """:class:`NotHomogeneousError` unless the checker's ``hom`` is homogeneous (of ``degree`` if given)."""
    label = getattr(model, "name", type(model).__name__)
    if not hom.homogeneous:
        raise NotHomogeneousError(
            f"{label} is not homogeneous in its parameters (the numeric checker finds f(c theta) != "
            f"c^L f(theta); breaking: {', '.join(hom.breaking_parameters[:4]) or '?'}), so degree={degree} / "
            "full normalisation is refused; use normalisation='head' with a head (model.head or head=)")
    if degree is not None and int(hom.degree) != int(degree):
        raise NotHomogeneousError(
            f"{label}: declared degree {degree} contradicts the numeric checker, which measures "
            f"f(c theta) = c^{hom.degree} f(theta) (estimate {hom.degree_estimate:.6g}, Euler's identity "
            f"{'holds' if hom.euler_ok else 'fails'}); pass degree={hom.degree} or leave it out")


def verify_degree(model: nn.Module, x: torch.Tensor, degree: int):
    """Raise :class:`~margin_theory.margins.NotHomogeneousError` unless the numeric checker finds
    ``model`` homogeneous of degree ``degree`` in all its parameters (on the inputs ``x``)."""
    from .homogeneity import numeric_homogeneity
    hom = numeric_homogeneity(model, x)
    _require_degree(model, hom, degree)
    return hom


def check_model(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, degree: int | None = None,
                normalisation: str = "auto", head: nn.Module | str | None = None, subset: int | None = 512,
                seed: int = 0, homogeneity_samples: int = 4, **kwargs):
    r"""Theorem 2 (:func:`margin_theory.assumptions.theorem2_report`) on any ``nn.Module`` (SPEC §3, §5).

    L of :math:`f(c\theta) = c^L f(\theta)` is measured by
    :func:`~margin_theory.homogeneity.numeric_homogeneity` on ``homogeneity_samples`` inputs:

    * homogeneous of degree L: ``degree`` (if given) must equal L (else ``NotHomogeneousError``);
      the report uses all parameters (``normalisation`` ``"auto"``/``"full"``) or the head (``"head"``);
    * not homogeneous: refused, naming the breaking parameters, unless ``normalisation`` is
      ``"head"``/``"auto"`` and a head (``model.head`` or ``head=`` a submodule or its name) is the
      last operation and homogeneous in its own parameters: :math:`\gamma_n = q_n/\|\theta_{head}\|^{L_{head}}`,
      features treated as fixed inputs (SPEC §2).

    The report's ``note`` says which degree was used and how; ``extra["homogeneity"]`` holds the
    checker's result. ``kwargs`` go to ``theorem2_report``.
    """
    from .assumptions import select_subset, theorem2_report
    from .homogeneity import numeric_homogeneity
    if normalisation not in ("auto", "full", "head"):
        raise ConfigError(f"normalisation must be auto, full or head, got {normalisation!r}")
    if degree is not None and (not is_int(degree) or degree < 1):
        raise ConfigError(f"degree must be a positive integer, got {degree!r}")
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}" if X.shape[0] else "X is empty")
    idx = select_subset(int(X.shape[0]), subset, seed)
    probe = idx[: max(1, int(homogeneity_samples))]
    hom = numeric_homogeneity(model, X[probe.to(X.device)])
    label = getattr(model, "name", type(model).__name__)
    found = _find_head(model, head)
    if hom.homogeneous and normalisation != "head":
        L = int(hom.degree)
        _require_degree(model, hom, degree)
        declared = getattr(model, "degree", None)
        if isinstance(declared, int) and declared != L:
            raise NotHomogeneousError(f"{label} declares degree {declared} but the numeric checker measures {L}")
        rep = theorem2_report(model, X, y, subset=subset, seed=seed, normalisation="full", degree=L,
                              check_degree=False, **kwargs)
        rep.note += (f" Degree L = {L} ({'declared and confirmed' if degree is not None else 'measured'} by the "
                     "numeric homogeneity checker: f(c theta) = c^L f(theta) for all parameters, Euler's identity "
                     f"{'holds' if hom.euler_ok else 'fails'}).")
        rep.extra["homogeneity"] = hom.as_dict()
        return rep
    # head normalisation (asked for, or the only option)
    breaking = ", ".join(hom.breaking_parameters[:4]) or "?"
    if not hom.homogeneous and (normalisation == "full" or degree is not None):
        _require_degree(model, hom, degree)
    if found is None and not hom.homogeneous:
        raise NotHomogeneousError(
            f"{label} is not homogeneous in its parameters (breaking: {breaking}) and has no head to "
            "normalise by: pass head='<name of the last layer>' (or give the module a .head)")
    if found is None:
        raise ConfigError("normalisation='head' needs a head: model.head or head='<submodule name>'")
    hname, hmod = found
    captured: list = []
    hook = hmod.register_forward_pre_hook(lambda m, a: captured.append(a))
    try:
        out = predict(model, X, batch_size=X.shape[0])
    finally:
        hook.remove()
    if len(captured) != 1 or len(captured[0]) != 1:
        raise ConfigError(f"head {hname!r} must be called exactly once with one input per forward pass")
    phi = captured[0][0].detach()
    with torch.no_grad():
        hout = hmod(phi)
    if hout.shape != out.shape or not torch.allclose(hout, out, rtol=1e-6, atol=1e-9 * float(out.abs().max() + 1)):
        raise ConfigError(f"head {hname!r} is not the model's last operation (its output differs from the model's)")
    hh = numeric_homogeneity(hmod, phi[probe.to(phi.device)])
    if not hh.homogeneous:
        raise NotHomogeneousError(f"the head {hname!r} is not homogeneous in its own parameters either "
                                  f"(breaking: {', '.join(hh.breaking_parameters[:4]) or '?'})")
    Lh = int(hh.degree)
    rep = theorem2_report(_HeadOnly(hmod, Lh), phi, y, subset=subset, seed=seed, normalisation="full", degree=Lh,
                          check_degree=False, **kwargs)
    rep.normalisation = "head"
    why = "asked for" if normalisation == "head" else f"the module is not homogeneous (breaking: {breaking})"
    rep.note += (f" Normalised by the head {hname!r} only ({why}): degree L = {Lh} of f in the head's "
                 "parameters, measured by the numeric homogeneity checker, features treated as fixed inputs; "
                 "the velocity is that of the gradient flow in the head's parameters alone.")
    rep.extra["homogeneity"] = hom.as_dict()
    rep.extra["head_homogeneity"] = hh.as_dict()
    return rep
