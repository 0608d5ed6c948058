r"""Checkpoints this toolkit did not write, and any ``nn.Module``: Theorem 2 on them (SPEC §2, §3, §5).

Three entry points (the reference, with recipes, is ``docs/checking.md``):

* :func:`read_state_dict` - the tensors of a foreign file, read safely:

  - ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` (``torch.save``): **only** with
    ``torch.load(path, weights_only=True)``, which builds tensors and plain containers and
    nothing else; a file that needs more (a pickled ``nn.Module``, any class, a
    ``__reduce__`` payload) is refused with one line - it is never fully unpickled;
  - ``.safetensors`` without a margin_theory sidecar: ``safetensors.torch.load_file``;
  - a state dict nested under ``state_dict``, ``model_state_dict``, ``model``, ``net``,
    ``network`` or ``module`` (training scripts' ``{"epoch": .., "state_dict": ..}``), and
    the ``module.`` prefix of ``nn.DataParallel`` / DDP (and ``_orig_mod.`` of
    ``torch.compile``) are unwrapped, each step reported in the notes.

* :func:`map_state_dict` - put the tensors into our model (``models.build_model``) named by
  the same options as ``train`` (``model, rank, layers, hidden, conv_channels, conv_bias``),
  by name, then by the authors' key maps, then by shape; anything that does not fit is a
  one-line :class:`~margin_theory._util.CheckpointError` naming the key and shape. Exact
  maps only - the mapped model computes the same function as the saved one:

  - our own names (``head.weight``, ``features.0.weight``, ...), e.g. a
    ``torch.save(model.state_dict())`` of a :func:`~margin_theory.models.build_model` model;
  - a plain ``nn.Linear(d, C*r, bias=False)`` whose outputs are squared and summed per class,
    rows class-major (rows ``c*r .. c*r+r-1`` belong to class c, i.e.
    ``(lin(x)**2).view(-1, C, r).sum(-1)``): weight ``(C*r, d)`` -> ``head.weight (C, r, d)``;
  - the authors' code (``liuchongming1999/dendrite-inspired-neural-network``,
    ``quadratic_neural_network-main/model/``): ``Low_dimensional_quadratic.eigen`` of shape
    ``(C, d, r)``, :math:`f_c = \sum_k (\mathrm{eigen}_{c,:,k}\cdot x)^2`, -> ``head.weight =
    eigen.permute(0, 2, 1)`` (its ``bias``, if present, is unused by its forward and dropped);
    ``General_quadratic`` (``weight_a (C, d, d)``, linear ``weight (C, d)``, optional ``bias``)
    computes :math:`f_c = (x^\top A_c x + w_c\cdot x + b_c)/2`, -> quadratic ``V = A/2`` when
    w and b vanish; the FMNIST net ``SimpleNet_2`` (``features.0.*`` conv,
    ``classifier.0.eigen``) -> ``conv-lowrank``; the CIFAR ``ResNet`` (``conv1``, ``bn1``,
    ``layerS.i.*``, ``linear.*``, usually behind DataParallel's ``module.``) ->
    ``resnet*-<head>`` (``conv1/bn1`` -> ``features.stem.0/1``, ``layerS.i`` ->
    ``features.layers.<running index>``, ``linear`` -> ``head``);
  - a bias that is exactly zero is dropped (a note says so). A nonzero bias *inside* the
    first parameterised layer - the linear term and bias of ``General_quadratic``, the bias
    of a squared ``nn.Linear``, an ``nn.Linear`` head's bias - is folded in exactly by the
    augmented input :math:`\tilde x = [x; 1]`: :math:`(a\cdot x + b)^2 = ([a, b]\cdot\tilde x)^2`,
    :math:`(x^\top A x + w\cdot x + b)/2 = \tilde x^\top M \tilde x` with
    :math:`M = [[A/2, w/4], [w^\top/4, b/2]]`, :math:`Wx + b = [W, b]\tilde x`. On a flat
    input the result is still homogeneous (a first-layer bias scales with its weight, SPEC §3
    correction), so margins are normalised by all parameters of the augmented head; after a
    conv the ``1`` breaks full homogeneity and the head normalisation is used. The
    normalising :math:`\|\theta\|` is that of *our* parameters (e.g. :math:`\|A/2\|`, not the
    authors' :math:`\|A\|`): margins and the velocity scale with that constant factor, while
    A1-A3 (rho, cv, eps, delta) do not change under a constant rescaling of theta. An output
    bias of a Low-Rank head (:math:`\sum_k (a_{ck}\cdot x)^2 + b_c`) has no exact image and
    makes f non-homogeneous: refused (check such a module with :func:`check_model` and
    ``normalisation="head"``).

* :func:`check_model` - Theorem 2 (``assumptions.theorem2_report``) on **any** module: the
  degree L comes from :func:`margin_theory.homogeneity.numeric_homogeneity`
  (:math:`f(c\theta) = c^L f(\theta)` and Euler's identity) when none is given; a declared
  degree the checker contradicts is refused, and so is a module it finds not homogeneous,
  unless ``normalisation="head"`` with a head it can find (``model.head`` or ``head=``). The
  report's ``note`` says which degree was used and where it came from.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ._util import CheckpointError, ConfigError, MarginTheoryError
from .models import ModelSpec

__all__ = [
    "FOREIGN_SUFFIXES", "NEST_KEYS", "AppendOne", "is_foreign_file", "read_state_dict", "read_spec",
    "foreign_config", "map_state_dict", "read_foreign", "load_foreign", "check_model", "verify_degree",
]

#: suffixes read with torch.load(weights_only=True)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
FOREIGN_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
#: keys under which training scripts nest the state dict, tried in this order
NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
_PREFIXES = ("module.", "_orig_mod.")
#: the model options a foreign file needs (as train's flags) and the data options
MODEL_KEYS = ("model",) + ModelSpec.args()
DATA_KEYS = ("dataset", "data_dir", "download", "n_train", "n_test", "normalize", "seed")
SPEC_KEYS = MODEL_KEYS + DATA_KEYS + ("keys", "input_shape", "num_classes")


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def is_foreign_file(path: str | Path) -> bool:
    """A file not written by this toolkit: a ``torch.save`` file, or a ``.safetensors``
    without its margin_theory JSON sidecar."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix in TORCH_SUFFIXES:
        return True
    return path.suffix == ".safetensors" and not path.with_suffix(".json").is_file()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"(?:unsupported|Unsupported)[^.\n]*?GLOBAL ([\w.]+)", text)
        if m:
            why = f"it refers to {m.group(1)}"
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln
                     and "Weights only load failed" not in ln]
            why = lines[0][:160] if lines else "torch.load(weights_only=True) refused it"
        raise CheckpointError(
            f"{path} needs more than tensors and plain containers to load ({why}); this toolkit "
            "reads .pt files only with torch.load(weights_only=True) and never unpickles arbitrary "
            "objects - save model.state_dict() (or use safetensors)") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file: {_one_line(exc)}") from None


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError and friends
        raise CheckpointError(f"{path} is not a readable safetensors file: {_one_line(exc)}") from None


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
                notes.append(f"ignored non-tensor entries {', '.join(skipped[:5])}" + (" ..." if len(skipped) > 5 else ""))
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
        state = _load_safetensors(path)
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
    changed = True
    while changed:
        changed = False
        for pre in _PREFIXES:
            if all(k.startswith(pre) for k in state):
                state = {k[len(pre):]: v for k, v in state.items()}
                notes.append(f"stripped the {pre!r} prefix" + (" (DataParallel / DDP)" if pre == "module." else
                                                               " (torch.compile)"))
                changed = True
    for k, v in state.items():
        if not v.is_floating_point() and not k.endswith("num_batches_tracked"):
            raise CheckpointError(f"{path}: tensor {k} has dtype {v.dtype}; model weights must be floating point")
    return state, notes


def read_spec(path: str | Path) -> dict:
    """A model/data spec file (JSON or TOML) with the keys of ``train``'s options
    (``model, rank, layers, hidden, conv_channels, conv_bias, dataset, data_dir, n_train,
    n_test, normalize, seed``), optionally ``input_shape``, ``num_classes`` and ``keys``
    (a table: file's tensor name -> our name). Unknown keys are an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read spec file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        else:
            spec = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"spec file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                          f"{_one_line(exc)}") from None
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
        raise ConfigError("say what model the file holds: --model NAME (as for train) or model in a spec file")
    if need_dataset and not spec.get("dataset"):
        raise ConfigError("say which data the model was trained on: --dataset NAME (as for train; with "
                          "--data-dir for mnist, fashion-mnist, cifar10) or dataset in a spec file")
    cfg = {k: spec[k] for k in MODEL_KEYS + DATA_KEYS if k in spec and spec[k] is not None}
    out = TrainConfig.from_dict({**cfg, "dataset": cfg.get("dataset") or "unspecified"}).to_dict()
    if not cfg.get("dataset"):
        out["dataset"] = None
    return out


# ---------------------------------------------------------------------------
# Mapping onto our modules
# ---------------------------------------------------------------------------
class AppendOne(nn.Module):
    r""":math:`x \mapsto [x; 1]` (flattened): folds a first-layer bias into the weights exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def _shape(t) -> tuple:
    return tuple(int(s) for s in t.shape)


def _authors_rename(state: dict, ours: nn.Module, notes: list[str]) -> dict:
    """The authors' names -> ours (classifier.0 / linear -> head, ResNet conv1/bn1/layerS.i)."""
    out, renamed = {}, []
    offsets = None
    blocks = getattr(getattr(ours, "features", None), "blocks", None)
    if blocks is not None:
        offsets = [sum(blocks[:s]) for s in range(len(blocks))]
    for k, v in state.items():
        new = k
        if re.match(r"^classifier\.0\.", k):
            new = "head." + k[len("classifier.0."):]
        elif offsets is not None:
            m = re.match(r"^layer([1-4])\.(\d+)\.(.*)$", k)
            if m:
                new = f"features.layers.{offsets[int(m.group(1)) - 1] + int(m.group(2))}.{m.group(3)}"
            elif k.startswith("conv1."):
                new = "features.stem.0." + k[6:]
            elif k.startswith("bn1."):
                new = "features.stem.1." + k[4:]
            elif k.startswith("linear."):
                new = "head." + k[7:]
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
    from .models import LinearHead, LowRankHead, QuadraticHead

    if isinstance(head, LowRankHead):
        r, d = head.rank, head.in_features
        if "head.eigen" in state:
            t = state["head.eigen"]
            if _shape(t) != (C, d, head.rank):
                raise CheckpointError(f"tensor head.eigen (Low_dimensional_quadratic) has shape {_shape(t)}; "
                                      f"the model needs ({C}, {d}, {r}) = (classes, d, rank)")
            return "head.eigen", t.permute(0, 2, 1).contiguous(), "Low_dimensional_quadratic eigen (C, d, r) -> (C, r, d)"
        forms = {(C, r, d): "as is", (C * r, d): "rows class-major (C*r, d) -> (C, r, d)"}
    elif isinstance(head, QuadraticHead):
        d = head.in_features
        if "head.weight_a" in state:
            t = state["head.weight_a"]
            if _shape(t) != (C, d, d):
                raise CheckpointError(f"tensor head.weight_a (General_quadratic) has shape {_shape(t)}; "
                                      f"the model needs ({C}, {d}, {d})")
            return "head.weight_a", t / 2, "General_quadratic weight_a: V = A/2 (its forward halves the sum)"
        forms = {(C, d, d): "as is"}
    elif isinstance(head, LinearHead):
        d = head.in_features
        forms = {(C, d): "as is"}
    else:
        raise CheckpointError(f"internal: no head map for {type(head).__name__}")  # pragma: no cover
    want = next(iter(forms))
    if "head.weight" in state and _shape(state["head.weight"]) in forms:
        key = "head.weight"
    else:
        cands = [k for k, v in state.items() if _shape(v) in forms]
        if not cands:
            have = ", ".join(f"{k} {_shape(v)}" for k, v in list(state.items())[:6])
            raise CheckpointError(f"no tensor fits the head weight {want} of the model (file has: {have})")
        if len(cands) > 1:
            raise CheckpointError(f"tensors {', '.join(cands[:4])} all fit the head weight {want}; name it in a "
                                  "spec file: keys = {\"THEIRS\": \"head.weight\"}")
        key = cands[0]
    t = state[key]
    how = forms[_shape(t)]
    return key, t.reshape(want), how


def map_state_dict(state: Mapping[str, torch.Tensor], spec: Mapping, input_shape, num_classes: int,
                   notes: list[str] | None = None) -> nn.Module:
    """Our model (``spec``: train's model options) holding ``state``'s weights; see the module doc.

    Raises :class:`CheckpointError` naming the first tensor (key and shape) that does not fit.
    The returned :class:`~margin_theory.models.Classifier` has ``foreign_notes`` (what was
    mapped, how) and ``foreign_map`` (our name -> the file's name).
    """
    from .models import Classifier, LinearHead, LowRankHead, QuadraticHead

    notes = [] if notes is None else notes
    state = dict(state)
    for theirs, mine in (spec.get("keys") or {}).items():
        if theirs not in state:
            raise CheckpointError(f"spec keys: the file has no tensor {theirs!r}")
        state[mine] = state.pop(theirs)
    name = spec.get("model")
    if not name:
        raise ConfigError("say what model the file holds (--model NAME, as for train, or model in a spec file)")
    try:
        with torch.random.fork_rng(devices=[]):
            mspec = ModelSpec.from_mapping(spec)
            ours = mspec.build(input_shape, int(num_classes))
    except MarginTheoryError as exc:
        raise CheckpointError(f"cannot build model {name!r}: {exc}") from None
    from .checkpoint import describe_model_args

    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    dtype = floats[0] if floats else torch.float32
    ours = ours.to(dtype)

    what = describe_model_args({**mspec.as_dict(), "input_shape": list(input_shape), "num_classes": num_classes})
    expected = ours.state_dict()
    if set(state) != set(expected):
        state = _authors_rename(state, ours, notes)
    C = int(num_classes)
    head = ours.head
    mapping: dict[str, str] = {}
    loaded: dict[str, torch.Tensor] = {}
    augment = None            # the extra column of an augmented head, if any
    has_head_map = isinstance(head, (LinearHead, LowRankHead, QuadraticHead))
    if has_head_map:
        hkey, hw, how = _head_weight(state, head, C)
        mapping["head.weight"] = hkey
        loaded["head.weight"] = hw
        if how != "as is":
            notes.append(f"head weight from {hkey}: {how}")
        used = {hkey}
        base = hkey[: hkey.rfind(".") + 1] if "." in hkey else ""
        bkey = base + "bias"
        lkey = base + "weight" if hkey.endswith("weight_a") else None
        bias = state.get(bkey)
        lin = state.get(lkey) if lkey else None
        if bias is not None:
            used.add(bkey)
        if lin is not None:
            used.add(lkey)
        if isinstance(head, LowRankHead) and bias is not None:
            r = head.rank
            if hkey.endswith("eigen"):
                notes.append(f"{bkey} of Low_dimensional_quadratic is not used by its forward: ignored")
            elif _shape(bias) != (C * r,):
                raise CheckpointError(
                    f"tensor {bkey} has shape {_shape(bias)}: an output bias f_i = sum_k (a_ik.x)^2 + b_i is not "
                    f"a Low-Rank DIQNN and not homogeneous; {what} has none (check such a module with "
                    "margin_theory.check_model(model, X, y, normalisation='head'))")
            elif bool((bias == 0).all()):
                notes.append(f"{bkey} is zero: dropped")
            else:
                augment = bias.reshape(C, r, 1)
                notes.append(f"{bkey} (inside the square, (a.x + b)^2) folded in exactly: head on [x; 1]")
        elif isinstance(head, QuadraticHead) and (bias is not None or lin is not None):
            d = head.in_features
            if lin is not None and _shape(lin) != (C, d):
                raise CheckpointError(f"tensor {lkey} (General_quadratic's linear term) has shape {_shape(lin)}, "
                                      f"expected ({C}, {d})")
            if bias is not None and _shape(bias) != (C,):
                raise CheckpointError(f"tensor {bkey} has shape {_shape(bias)}, expected ({C},)")
            scale = 0.5 if hkey.endswith("weight_a") else 1.0   # General_quadratic halves everything
            w = lin if lin is not None else torch.zeros(C, d, dtype=hw.dtype)
            b = bias if bias is not None else torch.zeros(C, dtype=hw.dtype)
            if bool((w == 0).all()) and bool((b == 0).all()):
                notes.append("linear term and bias are zero: dropped")
            else:
                augment = (scale * w, scale * b)       # f = x^T V x + c.x + e: (c, e)
                notes.append(f"nonzero linear term/bias ({lkey or '-'}, {bkey if bias is not None else '-'}; "
                             f"max |w| {float(w.abs().max()):.3g}, max |b| {float(b.abs().max()):.3g}) folded in "
                             "exactly: quadratic head on [x; 1], "
                             + ("M = [[A/2, w/4], [w^T/4, b/2]]" if scale == 0.5 else "M = [[W, 0], [0, b]]"))
        elif isinstance(head, LinearHead) and bias is not None:
            if _shape(bias) != (C,):
                raise CheckpointError(f"tensor {bkey} has shape {_shape(bias)}, expected ({C},)")
            if bool((bias == 0).all()):
                notes.append(f"{bkey} is zero: dropped")
            else:
                augment = bias.reshape(C, 1)
                notes.append(f"{bkey} folded in exactly: linear head on [x; 1], weight [W, b]")
        rest_expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
        rest_state = {k: v for k, v in state.items() if k not in used}
    else:
        rest_expected, rest_state = dict(expected), dict(state)
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
    feats = {k[len("features."):]: v for k, v in loaded.items() if k.startswith("features.")}
    try:
        ours.features.load_state_dict(feats, strict=True)
    except RuntimeError as exc:  # pragma: no cover - shapes were checked above
        raise CheckpointError(f"{what}: {_one_line(exc)}") from None
    if not has_head_map:
        head_state = {k[len("head."):]: v for k, v in loaded.items() if k.startswith("head.")}
        ours.head.load_state_dict(head_state, strict=True)
        model = ours
    elif augment is None:
        with torch.no_grad():
            ours.head.weight.copy_(loaded["head.weight"])
        model = ours
    else:
        hw = loaded["head.weight"]
        d = head.in_features
        if isinstance(head, LowRankHead):
            new_head = LowRankHead(d + 1, C, head.rank)
            new_w = torch.cat([hw, augment.to(hw.dtype)], dim=2)
        elif isinstance(head, LinearHead):
            new_head = LinearHead(d + 1, C)
            new_w = torch.cat([hw, augment.to(hw.dtype)], dim=1)
        else:
            c_lin, const = augment                  # [x;1]^T M [x;1] = x^T V x + 2 m.x + M_dd
            new_head = QuadraticHead(d + 1, C)
            new_w = torch.zeros(C, d + 1, d + 1, dtype=hw.dtype)
            new_w[:, :d, :d] = hw
            new_w[:, :d, d] = c_lin.to(hw.dtype) / 2
            new_w[:, d, :d] = c_lin.to(hw.dtype) / 2
            new_w[:, d, d] = const.to(hw.dtype)
        new_head = new_head.to(dtype)
        with torch.no_grad():
            new_head.weight.copy_(new_w)
        has_params = any(True for _ in ours.features.parameters())
        model = Classifier(nn.Sequential(ours.features, AppendOne()), new_head, None if has_params else 0,
                           name, input_shape)
        if has_params:
            notes.append("the appended 1 after parameterised features breaks full homogeneity: "
                         "margins use the head normalisation")
    model = model.to(dtype)
    model.foreign_notes = notes
    model.foreign_map = mapping
    model.foreign_augmented = augment is not None
    return model.eval()


def _input_shape_from(spec: Mapping) -> tuple[tuple, int]:
    if spec.get("input_shape") and spec.get("num_classes"):
        return tuple(int(s) for s in spec["input_shape"]), int(spec["num_classes"])
    if not spec.get("dataset"):
        raise ConfigError("a foreign checkpoint needs the input shape and classes: give dataset "
                          "(--dataset NAME) or input_shape and num_classes in the spec")
    from .train import TrainConfig, load_data_for

    cfg = TrainConfig.from_dict({**foreign_config(spec), "download": bool(spec.get("download", False))})
    ds = load_data_for(cfg, torch.device("cpu"))
    return tuple(ds.input_shape), int(ds.num_classes)


def read_foreign(path: str | Path, spec: Mapping, *, input_shape=None, num_classes: int | None = None,
                 device: str | torch.device = "cpu"):
    """A :class:`~margin_theory.checkpoint.Checkpoint` for a foreign file (``epoch``/``step``
    ``None``, ``meta = {"format": "foreign", "notes": [...], "map": {...}}``)."""
    from .checkpoint import Checkpoint

    path = Path(path)
    state, notes = read_state_dict(path)
    if input_shape is None or num_classes is None:
        input_shape, num_classes = _input_shape_from(spec)
    model = map_state_dict(state, spec, input_shape, num_classes, notes)
    model.to(device)
    cfg = foreign_config(spec, need_dataset=False)
    return Checkpoint(model=model, config=cfg, epoch=None, step=None, path=path,
                      meta={"format": "foreign", "notes": list(notes), "map": dict(model.foreign_map)})


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


# ---------------------------------------------------------------------------
# Any nn.Module
# ---------------------------------------------------------------------------
class _HeadOnly(nn.Module):
    """The head of a module acting on its captured input (features treated as fixed inputs)."""

    def __init__(self, head: nn.Module, degree: int):
        super().__init__()
        self.head = head
        self.degree = degree

    def forward(self, *args):
        return self.head(*args)


def _find_head(model: nn.Module, head) -> tuple[str, nn.Module] | None:
    if isinstance(head, nn.Module):
        for n, m in model.named_modules():
            if m is head:
                return n, m
        raise ConfigError("head= must be a submodule of the model")
    if isinstance(head, str):
        mods = dict(model.named_modules())
        if head not in mods:
            raise ConfigError(f"the model has no submodule {head!r} (head=)")
        return head, mods[head]
    h = getattr(model, "head", None)
    return ("head", h) if isinstance(h, nn.Module) else None


def verify_degree(model: nn.Module, x: torch.Tensor, degree: int):
    """Raise :class:`~margin_theory.margins.NotHomogeneousError` unless the numeric checker finds
    ``model`` homogeneous of degree ``degree`` in all its parameters (on the inputs ``x``)."""
    from .homogeneity import numeric_homogeneity
    from .margins import NotHomogeneousError

    hom = numeric_homogeneity(model, x)
    label = getattr(model, "name", type(model).__name__)
    if not hom.homogeneous:
        breaking = ", ".join(hom.breaking_parameters[:4]) or "?"
        raise NotHomogeneousError(
            f"{label} is not homogeneous in its parameters (the numeric checker finds f(c theta) != "
            f"c^L f(theta); breaking: {breaking}), so degree={degree} / full normalisation is refused; "
            "use normalisation='head' with a head (model.head or head=)")
    if int(hom.degree) != int(degree):
        raise NotHomogeneousError(
            f"{label}: declared degree {degree} contradicts the numeric checker, which measures "
            f"f(c theta) = c^{hom.degree} f(theta) (estimate {hom.degree_estimate:.6g}, Euler's identity "
            f"{'holds' if hom.euler_ok else 'fails'}); pass degree={hom.degree} or leave it out")
    return hom


def check_model(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, degree: int | None = None,
                normalisation: str = "auto", head: nn.Module | str | None = None, subset: int | None = 512,
                seed: int = 0, homogeneity_samples: int = 4, **kwargs):
    r"""Theorem 2 (:func:`margin_theory.assumptions.theorem2_report`) on any ``nn.Module`` (SPEC §3, §5).

    The degree L of :math:`f(c\theta) = c^L f(\theta)` is measured by
    :func:`~margin_theory.homogeneity.numeric_homogeneity` on ``homogeneity_samples`` inputs
    of the subset (float64; at :math:`\theta` and at a generic point; Euler's identity):

    * homogeneous with degree L: ``degree`` (if given) must equal L, else
      :class:`~margin_theory.margins.NotHomogeneousError`; the report uses L with all parameters
      (``normalisation`` ``"auto"``/``"full"``), or the head (``"head"``);
    * not homogeneous (a bias after a nonlinearity, an output bias, BatchNorm): refused - with
      the parameters that break it - unless ``normalisation`` is ``"head"`` or ``"auto"`` and a
      head is found (``model.head`` or ``head=`` a submodule or its name) that is the last
      operation and homogeneous in its own parameters; then :math:`\gamma_n = q_n/\|\theta_{head}\|^{L_{head}}`
      with the features treated as fixed inputs (SPEC §2).

    Returns the :class:`~margin_theory.assumptions.Theorem2Report`; its ``note`` ends with
    which degree was used and how it was obtained, ``extra["homogeneity"]`` holds the
    checker's result. ``kwargs`` go to ``theorem2_report`` (``method``, ``dtype``, ...).
    """
    from .assumptions import select_subset, theorem2_report
    from .homogeneity import numeric_homogeneity
    from .margins import NotHomogeneousError

    if normalisation not in ("auto", "full", "head"):
        raise ConfigError(f"normalisation must be auto, full or head, got {normalisation!r}")
    if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
        raise ConfigError(f"degree must be a positive integer, got {degree!r}")
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}" if X.shape[0] else "X is empty")
    idx = select_subset(int(X.shape[0]), subset, seed)
    probe = X[idx[: max(1, int(homogeneity_samples))].to(X.device)]
    hom = numeric_homogeneity(model, probe)
    label = getattr(model, "name", type(model).__name__)
    found = _find_head(model, head)
    if hom.homogeneous and normalisation != "head":
        L = int(hom.degree)
        if degree is not None and degree != L:
            raise NotHomogeneousError(
                f"{label}: declared degree {degree} contradicts the numeric checker, which measures "
                f"f(c theta) = c^{L} f(theta) (estimate {hom.degree_estimate:.6g}, Euler's identity "
                f"{'holds' if hom.euler_ok else 'fails'}); pass degree={L} or leave it out")
        declared = getattr(model, "degree", None) if isinstance(getattr(model, "degree", None), int) else None
        if declared is not None and declared != L:
            raise NotHomogeneousError(f"{label} declares degree {declared} but the numeric checker measures {L}")
        src = "declared and confirmed" if degree is not None else "measured"
        rep = theorem2_report(model, X, y, subset=subset, seed=seed, normalisation="full", degree=L,
                              check_degree=False, **kwargs)
        rep.note += (f" Degree L = {L} ({src} by the numeric homogeneity checker: f(c theta) = c^L f(theta) "
                     f"for all parameters, Euler's identity {'holds' if hom.euler_ok else 'fails'}).")
        rep.extra["homogeneity"] = hom.as_dict()
        return rep
    # head normalisation (asked for, or the only option)
    breaking = ", ".join(hom.breaking_parameters[:4]) or "?"
    if not hom.homogeneous:
        if normalisation == "full" or degree is not None:
            raise NotHomogeneousError(
                f"{label} is not homogeneous in its parameters (the numeric checker finds f(c theta) != "
                f"c^L f(theta); breaking: {breaking}), so degree={degree} / full normalisation is refused; "
                "use normalisation='head' with a head (model.head or head=)")
        if found is None:
            raise NotHomogeneousError(
                f"{label} is not homogeneous in its parameters (breaking: {breaking}) and has no head to "
                "normalise by: pass head='<name of the last layer>' (or give the module a .head)")
    if found is None:
        raise ConfigError("normalisation='head' needs a head: model.head or head='<submodule name>'")
    hname, hmod = found
    captured: list = []
    hook = hmod.register_forward_pre_hook(lambda m, a: captured.append(a))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                out = model(X)
            finally:
                model.train(was)
    finally:
        hook.remove()
    if len(captured) != 1 or len(captured[0]) != 1:
        raise ConfigError(f"head {hname!r} must be called exactly once with one input per forward pass")
    phi = captured[0][0].detach()
    with torch.no_grad():
        hout = hmod(phi)
    if hout.shape != out.shape or not torch.allclose(hout, out, rtol=1e-6, atol=1e-9 * float(out.abs().max() + 1)):
        raise ConfigError(f"head {hname!r} is not the model's last operation (its output differs from the model's)")
    hh = numeric_homogeneity(hmod, phi[idx[: max(1, int(homogeneity_samples))].to(phi.device)])
    if not hh.homogeneous:
        raise NotHomogeneousError(f"the head {hname!r} is not homogeneous in its own parameters either "
                                  f"(breaking: {', '.join(hh.breaking_parameters[:4]) or '?'})")
    Lh = int(hh.degree)
    wrapper = _HeadOnly(hmod, Lh)
    rep = theorem2_report(wrapper, phi, y, subset=subset, seed=seed, normalisation="full", degree=Lh,
                          check_degree=False, **kwargs)
    rep.normalisation = "head"
    why = "asked for" if normalisation == "head" else f"the module is not homogeneous (breaking: {breaking})"
    rep.note += (f" Normalised by the head {hname!r} only ({why}): degree L = {Lh} of f in the head's "
                 "parameters, measured by the numeric homogeneity checker, features treated as fixed inputs; "
                 "the velocity is that of the gradient flow in the head's parameters alone.")
    rep.extra["homogeneity"] = hom.as_dict()
    rep.extra["head_homogeneity"] = hh.as_dict()
    return rep
