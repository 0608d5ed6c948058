"""Helpers for tests that need small dataset files: IDX, CIFAR batches, tar archives,
and a local HTTP server on 127.0.0.1 (no internet)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import pickle
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(arr: np.ndarray, *, magic: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """IDX encoding of a uint8 array; ``magic``/``dims`` override the header (to break it)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    dims = arr.shape if dims is None else dims
    magic = (0x08 << 8 | len(dims)) if magic is None else magic
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return head + arr.tobytes()


def synthetic_mnist(n_train: int = 30, n_test: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }


def write_idx_dir(folder: Path, arrays: dict, *, gz: bool = True,
                  override: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Write the four IDX files (``.gz`` or raw) into ``folder``; returns name -> bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for base, arr in arrays.items():
        raw = idx_bytes(arr)
        if override and base in override:
            raw = override[base]
        data = gzip.compress(raw, mtime=0) if gz else raw
        name = base + (".gz" if gz else "")
        (folder / name).write_bytes(data)
        written[name] = data
    return written


def cifar_batch_bytes(data: np.ndarray, labels, *, protocol: int = 2, extra: dict | None = None) -> bytes:
    d = {"batch_label": "testing batch", "labels": list(map(int, labels)), "data": data,
         "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    d.update(extra or {})
    return pickle.dumps(d, protocol=protocol)


def cifar_meta_bytes(protocol: int = 2) -> bytes:
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return pickle.dumps({"num_cases_per_batch": 10, "label_names": names, "num_vis": 3072},
                        protocol=protocol)


def write_cifar_dir(folder: Path, *, n: int = 6, files=None, protocol: int = 2, seed: int = 0):
    """Small CIFAR-format batches in ``folder``; returns {file: (data uint8 (n,3072), labels)}."""
    files = files or tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, f in enumerate(files):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(i + k) % 10 for i in range(n)]
        (folder / f).write_bytes(cifar_batch_bytes(data, labels, protocol=protocol))
        out[f] = (data, labels)
    (folder / "batches.meta").write_bytes(cifar_meta_bytes(protocol))
    return out


def tar_gz_bytes(entries: list[tuple[str, bytes | None, dict]]) -> bytes:
    """A .tar.gz from (name, content or None for a directory, TarInfo attributes) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content, attrs in entries:
            ti = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(ti, k, v)
            if content is None and "type" not in attrs:
                ti.type = tarfile.DIRTYPE
            if content is not None:
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))
            else:
                tf.addfile(ti)
    return buf.getvalue()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


class _ShortHandler(BaseHTTPRequestHandler):
    """Promises 100000 bytes, sends 10, closes: a truncated transfer."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextmanager
def serve(handler, on_close=None):
    """Serve ``handler`` over HTTP on 127.0.0.1 (never another interface) in a thread; yields
    the base URL; ``on_close()`` runs before the server shuts down."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    srv.block_on_close = False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        if on_close is not None:
            on_close()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def serve_directory(directory: Path | None = None, *, truncating: bool = False):
    """Serve ``directory`` over HTTP on 127.0.0.1 in a thread; yields the base URL."""
    return serve(_ShortHandler if truncating else functools.partial(_QuietHandler, directory=str(directory)))
