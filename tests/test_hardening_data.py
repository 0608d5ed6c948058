"""Hostile and faulty inputs to margin_theory.data (issue 14: items 6-9, 12, 13, data CLI).

Every hostile input is built here, in tmp_path, and every server listens on 127.0.0.1
only, in a thread, bounded in time (it stops on its own). Calls that used to hang run
in a daemon thread joined with a bound, so a regression fails instead of hanging.
Memory bounds are asserted with tracemalloc (numpy's allocations are traced too).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from margin_theory import data as D
from margin_theory._util import DataError

from _data_helpers import cifar_meta_bytes, idx_bytes, md5, serve, synthetic_mnist, write_idx_dir

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture
def tmp_path(tmp_path_factory) -> Path:
    """A temporary folder with a neutral name: pytest's default name repeats the test's
    name, whose words ("truncated", "labels", "empty") would then be found in any error
    message that quotes a path."""
    return tmp_path_factory.mktemp("h")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def one_line(exc_info, limit: int = 2000) -> str:
    msg = str(exc_info.value)
    assert msg.strip() and "\n" not in msg and len(msg) <= limit, msg[:300]
    return msg


def bounded(fn, seconds: float = 30.0):
    """Run ``fn()`` in a daemon thread; fail (instead of hanging) if it is not done in time.
    Returns ("ok", value) or ("raised", exception)."""
    out = {}

    def run():
        try:
            out["r"] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["r"] = ("raised", exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (unbounded work)"
    return out["r"]


@contextmanager
def peak_memory():
    """Yields a dict whose 'peak' is the traced peak allocation (bytes) inside the block."""
    box = {}
    tracemalloc.start()
    try:
        yield box
    finally:
        box["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# ---------------------------------------------------------------------------
# item 6: CIFAR "billion laughs" pickles (shared references) - bounded work
# ---------------------------------------------------------------------------
def laughs(depth: int = 6, width: int = 1000):
    """Nested lists sharing one child per level: width**depth elements in a few KB
    (depth 6: within the 8 levels a batch may nest, so only the sharing is hostile)."""
    x = [0]
    for _ in range(depth):
        x = [x] * width
    return x


def batch_pickle(data: np.ndarray, labels, protocol: int = 2, **extra) -> bytes:
    d = {"batch_label": "hostile", "labels": labels, "data": data}
    d.update(extra)
    return pickle.dumps(d, protocol=protocol)


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.mark.parametrize("where", ["ignored key", "labels", "label_names"])
def test_billion_laughs_is_bounded(tmp_path, where):
    bomb = laughs()
    if where == "label_names":
        blob = pickle.dumps({"label_names": bomb, "num_vis": 3072}, protocol=2)
    elif where == "labels":
        blob = batch_pickle(_rows(3), bomb)
    else:
        blob = batch_pickle(_rows(3), [1, 2, 3], filenames=bomb)
    assert len(blob) < 40_000  # 9 KB of pixels and ~12 KB of lists that denote 10**18 elements
    p = tmp_path / "batch"
    p.write_bytes(blob)
    if where == "label_names":
        kind, res = bounded(lambda: D._load_cifar_meta(p, None))
    else:
        kind, res = bounded(lambda: D.load_cifar_batch(p))
    if where == "ignored key":  # plain data after all: loads, in work linear in the file size
        assert kind == "ok", res
        assert res[1].tolist() == [1, 2, 3] and res[0].shape == (3, 3, 32, 32)
    else:
        assert kind == "raised" and isinstance(res, DataError), res
        msg = str(res)
        assert "\n" not in msg and len(msg) < 2000
        assert ("labels" if where == "labels" else "label_names") in msg


def test_billion_laughs_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "cifar-10-subset"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(cifar_meta_bytes())
    (folder / "data_batch_1").write_bytes(batch_pickle(_rows(4), [0, 1, 2, 3], filenames=laughs()))
    (folder / "test_batch_first1000").write_bytes(batch_pickle(_rows(2), laughs(6, 500)))
    kind, rc = bounded(lambda: D.main(["info", "cifar10-subset", "--data-dir", str(tmp_path)]))
    assert kind == "ok" and rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test_batch_first1000" in err and "labels" in err


# ---------------------------------------------------------------------------
# item 12: labels of a CIFAR batch - refused, never cast
# ---------------------------------------------------------------------------
LABELS = {
    "2**64": [0, 2 ** 64, 1],
    "-2**70": [0, -(2 ** 70), 1],
    "float": [0, 1.5, 2],
    "string": ["0", "1", "2"],
    "bool": [True, False, True],
    "2-D list": [[0], [1], [2]],
    "2-D array": np.array([[0], [1], [2]], dtype=np.int64),
    "float array": np.array([0.0, 1.0, 2.0]),
    "bool array": np.array([True, False, True]),
}
#: refused before the fix too (by np.asarray failing or wrapping to -1): kept as guards
#: of the stricter check that replaced that cast
LABELS_GUARD = {
    "uint64 2**64-1": np.array([0, 2 ** 64 - 1, 1], dtype=np.uint64),
    "not a list": "012",
    "None inside": [0, None, 1],
}


@pytest.mark.parametrize("case", list(LABELS) + [f"guard: {k}" for k in LABELS_GUARD])
def test_cifar_labels_are_refused_not_cast(tmp_path, case):
    labels = LABELS_GUARD[case[7:]] if case.startswith("guard: ") else LABELS[case]
    p = tmp_path / "batch"
    p.write_bytes(batch_pickle(_rows(3), labels, protocol=4))
    with pytest.raises(DataError) as e:
        D.load_cifar_batch(p)
    msg = one_line(e)
    assert "labels" in msg and str(p) in msg


def test_cifar_good_labels_still_load(tmp_path):
    """The strict label check accepts both genuine forms: a list of ints and an int array."""
    for labels in ([3, 0, 9], np.array([3, 0, 9], dtype=np.int64), np.array([3, 0, 9], np.uint8)):
        p = tmp_path / "ok"
        p.write_bytes(batch_pickle(_rows(3), labels))
        _, y, _ = D.load_cifar_batch(p)
        assert y.dtype == np.int64 and y.tolist() == [3, 0, 9]


# ---------------------------------------------------------------------------
# item 12: error messages are capped (a 1 MB pickle must not give a 1.5 MB error line)
# ---------------------------------------------------------------------------
BIG = "\x01" * 1_000_000  # repr() makes 4 characters of each: a 4 MB line uncapped


def _big_pickles():
    return {
        "key": pickle.dumps({BIG: 1, "other": 2}, protocol=2),
        "dtype": b"\x80\x02cnumpy\ndtype\nX" + len(BIG).to_bytes(4, "little") + BIG.encode()
                 + b"\x85R.",
        "global": b"\x80\x02c" + b"m" * 1_000_000 + b"\nx\n.",
        "shape": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                 + pickle.dumps(tuple(range(200_000)), protocol=2)[2:-1] + b"C\x01b\x87R.",
    }


@pytest.mark.parametrize("case", list(_big_pickles()))
def test_error_lines_are_capped(tmp_path, case, capsys):
    blob = _big_pickles()[case]
    assert len(blob) >= 600_000
    p = tmp_path / "data_batch_1"
    p.write_bytes(blob)
    with pytest.raises(DataError) as e:
        D.load_cifar_batch(p)
    one_line(e, limit=1000)
    # and through the CLI: one short line on stderr
    folder = tmp_path / "cifar-10-subset"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(cifar_meta_bytes())
    (folder / "data_batch_1").write_bytes(blob)
    (folder / "test_batch_first1000").write_bytes(batch_pickle(_rows(1), [0]))
    assert D.main(["info", "cifar10-subset", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 1200


# ---------------------------------------------------------------------------
# item 7 and item 12: IDX files - header first, declared size capped, streamed
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gz_zeros_member(chunk_mib: int) -> bytes:
    return gzip.compress(bytes(chunk_mib * MiB), compresslevel=9, mtime=0)


def _gz_zeros(n_mib: int, chunk_mib: int = 64) -> bytes:
    """gzip members of zeros, concatenated (a valid multi-member stream of n_mib MiB)."""
    return _gz_zeros_member(chunk_mib) * (n_mib // chunk_mib)


def _idx_head(dims, type_code=0x08) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


IDX_CASES = {
    # 10 images declared, then 1 GiB of zeros in a 1 MB file: stop after the payload
    "gz bomb after payload": lambda: gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    + _gz_zeros(1024),
    # a header declaring 2**31 images (1.7 TB): refused from the header
    "gz declares 1.7 TB": lambda: gzip.compress(_idx_head((2 ** 31, 28, 28)) + bytes(1000)),
    # dims whose product overflows int64 (2**31 * 2**31 * 4 = 2**64 wraps to 0)
    "gz dims overflow int64": lambda: gzip.compress(_idx_head((2 ** 31, 2 ** 31, 4))),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_hostile_idx_gz(tmp_path, case):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(IDX_CASES[case]())
    assert p.stat().st_size < 4 * MiB
    with peak_memory() as mem:
        with pytest.raises(DataError) as e:
            D.read_idx(p, expect_ndim=3)
    msg = one_line(e)
    assert str(p) in msg
    assert ("unexpected bytes" if "bomb" in case else "limit") in msg
    assert mem["peak"] < 32 * MiB, mem["peak"]


def test_idx_dims_overflow_in_parse_idx():
    with pytest.raises(DataError) as e:
        D.parse_idx(_idx_head((2 ** 31, 2 ** 31, 4)), expect_ndim=3)
    assert "limit" in one_line(e)
    with pytest.raises(DataError) as e:  # 255 dims of 2**32-1: an astronomically large product
        D.parse_idx(_idx_head((2 ** 32 - 1,) * 255))
    assert "limit" in one_line(e)


def test_idx_raw_file_checked_by_length_before_reading(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    with open(p, "wb") as fh:  # a 256 MiB (sparse) file behind a 10-image header
        fh.write(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
        fh.truncate(256 * MiB)
    with peak_memory() as mem:
        with pytest.raises(DataError) as e:
            D.read_idx(p, expect_ndim=3)
    assert "unexpected bytes" in one_line(e)
    assert mem["peak"] < 8 * MiB, mem["peak"]


def test_idx_gz_bomb_through_the_loader(tmp_path):
    arrays = synthetic_mnist()
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dir(raw, arrays, gz=True)
    bomb = gzip.compress(idx_bytes(arrays["train-images-idx3-ubyte"])) + _gz_zeros(512)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    with peak_memory() as mem:
        with pytest.raises(DataError) as e:
            D.load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in one_line(e)
    assert mem["peak"] < 32 * MiB, mem["peak"]


@pytest.mark.parametrize("kind", ["idx", "cifar"])
def test_empty_dataset_through_data_info(tmp_path, capsys, kind):
    if kind == "idx":
        arrays = synthetic_mnist()
        arrays["train-images-idx3-ubyte"] = np.zeros((0, 28, 28), np.uint8)
        arrays["train-labels-idx1-ubyte"] = np.zeros(0, np.uint8)
        write_idx_dir(tmp_path / "MNIST" / "raw", arrays, gz=True)
        name = "mnist"
    else:
        folder = tmp_path / "cifar-10-subset"
        folder.mkdir()
        (folder / "batches.meta").write_bytes(cifar_meta_bytes())
        (folder / "data_batch_1").write_bytes(batch_pickle(_rows(3), [0, 1, 2]))
        (folder / "test_batch_first1000").write_bytes(  # protocol 4: b"" is no global
            batch_pickle(np.zeros((0, 3072), np.uint8), [], protocol=4))
        name = "cifar10-subset"
    assert D.main(["info", name, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split is empty" in err


# ---------------------------------------------------------------------------
# item 8: tar archives - sizes capped by what the dataset can be, truncation refused
# ---------------------------------------------------------------------------
def _tar_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti.tobuf(format=tarfile.USTAR_FORMAT)


def _zeros_member_gz(name: str, n_mib: int) -> bytes:
    # header + n_mib MiB of zeros (a multiple of 512, so no padding), gzip multi-member
    return gzip.compress(_tar_header(name, n_mib * MiB), mtime=0) + _gz_zeros(n_mib, min(n_mib, 32))


END_GZ = gzip.compress(bytes(2 * tarfile.BLOCKSIZE), mtime=0)


def _tar_bytes(entries, fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, content in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


TAR_CASES = {
    # a 96 MiB member (more than CIFAR's 31 MB batches) from a small .tar.gz
    "member too large": lambda: _zeros_member_gz("big", 96) + END_GZ,
    # a header declaring 2 GiB with almost nothing behind it
    "declares 2 GiB": lambda: gzip.compress(_tar_header("huge", 2 << 30) + bytes(4096)),
    # 9 members of 32 MiB: each allowed, 288 MiB in all is not
    "total too large": lambda: b"".join(_zeros_member_gz(f"m{i}", 32) for i in range(9)) + END_GZ,
    "too many members": lambda: gzip.compress(_tar_bytes([(f"f{i}", b"") for i in range(1200)])),
    # a pax header of 2 MiB (tarfile would read a declared 2 GiB one whole)
    "huge pax header": lambda: gzip.compress(_tar_bytes([("x" * (2 * MiB), b"a")],
                                                        fmt=tarfile.PAX_FORMAT)),
    # cut after a complete member: no end-of-archive blocks (uncompressed tar)
    "truncated at a member boundary": lambda: _tar_bytes([("a", b"1" * 600), ("b", b"2")])[:1536],
    # gzip stream without its 8-byte trailer (checksum and length)
    "gzip trailer missing": lambda: gzip.compress(_tar_bytes([("a", b"hello")]))[:-8],
    # cut inside the member data (refused before the fix too: a guard)
    "guard: truncated inside a member": lambda: gzip.compress(_tar_bytes([("a", os.urandom(5000))]))[:3000],
}

TAR_EXPECT = {"member too large": "more than", "declares 2 GiB": "more than",
              "total too large": "in all", "too many members": "members",
              "huge pax header": "header", "truncated at a member boundary": "truncated",
              "gzip trailer missing": "truncated", "guard: truncated inside a member": "truncated"}


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_hostile_tar(tmp_path, case):
    arc = tmp_path / "cifar-10-python.tar.gz"
    arc.write_bytes(TAR_CASES[case]())
    assert arc.stat().st_size < 8 * MiB
    dest = tmp_path / "out"
    kind, res = bounded(lambda: D.safe_extract_tar(arc, dest), 60)
    assert kind == "raised" and isinstance(res, DataError), res
    msg = str(res)
    assert "\n" not in msg and len(msg) < 1000 and TAR_EXPECT[case] in msg, msg
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p != arc)
    assert written == 0  # refused before anything was written


def test_good_tar_still_extracts(tmp_path):
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        arc = tmp_path / f"ok{fmt}.tar.gz"
        arc.write_bytes(gzip.compress(_tar_bytes([("d/a", b"x" * 3000), ("d/b", b"")], fmt=fmt)))
        dest = tmp_path / f"out{fmt}"
        assert D.safe_extract_tar(arc, dest) == ["d/a", "d/b"]
        assert (dest / "d" / "a").read_bytes() == b"x" * 3000


# ---------------------------------------------------------------------------
# item 9: downloads against hostile servers on 127.0.0.1
# ---------------------------------------------------------------------------
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
LABELS_SIZE = 4542   # bytes of the canonical file (checked against the genuine one below)


def test_known_sizes_match_the_genuine_files(shared_data_dir):
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        for fname, size in D.SIZES[name].items():
            path = shared_data_dir / folder / "raw" / fname
            assert path.stat().st_size == size and D._md5_file(path) == D.MD5[name][fname]
    assert D.SIZES["mnist"][LABELS_FILE] == LABELS_SIZE


class _Hostile(BaseHTTPRequestHandler):
    behaviour = "endless"
    stop: threading.Event
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def _trickle(self, data: bytes, every: float):
        t_end = time.monotonic() + 60
        for i in range(len(data)):
            if self.stop.is_set() or time.monotonic() > t_end:
                return
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(every)

    def do_GET(self):  # noqa: N802 - http.server API
        b = self.behaviour
        try:
            if b == "trickle headers":
                self._trickle(b"HTTP/1.0 200 OK\r\nX-Slow: " + b"a" * 5000, 0.05)
                return
            self.send_response(200)
            if b in ("wrong size", "trickle body", "announces 1 GiB"):
                self.send_header("Content-Length", {"wrong size": str(LABELS_SIZE + 1000),
                                                    "trickle body": str(LABELS_SIZE),
                                                    "announces 1 GiB": str(1 << 30)}[b])
            self.end_headers()
            if b == "trickle body":
                self._trickle(b"\0" * LABELS_SIZE, 0.05)
            elif b == "wrong size":
                self.wfile.write(b"\0" * (LABELS_SIZE + 1000))
            elif b == "truncated":  # no Content-Length, closes early
                self.wfile.write(b"\0" * 100)
            elif b in ("endless", "announces 1 GiB"):  # bounded server-side: 64 MiB at most
                block = b"\0" * 65536
                for _ in range(1024):
                    if self.stop.is_set():
                        return
                    self.wfile.write(block)
        except OSError:  # the client hung up: that is the point
            pass


@contextmanager
def hostile_server(behaviour: str):
    stop = threading.Event()
    with serve(type("H", (_Hostile,), {"behaviour": behaviour, "stop": stop}), on_close=stop.set) as url:
        yield url


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.suffix == ".part" or p.name.startswith(".")]


def labels_only(monkeypatch):
    """mnist reduced to its smallest file: one registry entry replaced (files are listed nowhere else)."""
    monkeypatch.setitem(D.REGISTRY, "mnist", dataclasses.replace(D.REGISTRY["mnist"],
                                                                 files=("t10k-labels-idx1-ubyte",)))


# (behaviour, extra download kwargs, expected words in the error)
DOWNLOADS = {
    "endless body, known size": ("endless", {}, f"more than the {LABELS_SIZE:,} bytes"),
    "endless body, unknown size": ("endless", {"md5s": {LABELS_FILE: "0" * 32},
                                               "max_bytes": 2 * MiB}, "more than the 2,097,152"),
    "announces 1 GiB, unknown size": ("announces 1 GiB", {"md5s": {LABELS_FILE: "0" * 32}},
                                      "announces 1,073,741,824 bytes, more than"),
    "wrong size": ("wrong size", {}, "wrong size"),
    "truncated": ("truncated", {}, f"truncated: 100 of {LABELS_SIZE:,} bytes"),
    "trickle body": ("trickle body", {"deadline": 1.5}, "deadline of 1.5 s"),
    "trickle headers": ("trickle headers", {"deadline": 1.5}, "deadline of 1.5 s"),
}


@pytest.mark.parametrize("case", list(DOWNLOADS))
def test_hostile_download_server(tmp_path, case, monkeypatch):
    behaviour, kwargs, expect = DOWNLOADS[case]
    labels_only(monkeypatch)
    root = tmp_path / "data"
    with hostile_server(behaviour) as url:
        kind, res = bounded(lambda: D.download_dataset("mnist", root, mirror=url, progress=False,
                                                       timeout=5, **kwargs), 30)
    assert kind == "raised" and isinstance(res, DataError), res
    msg = str(res)
    assert "\n" not in msg and LABELS_FILE in msg and expect in msg, msg
    assert not (root / "MNIST" / "raw" / LABELS_FILE).exists()
    assert _leftovers(root) == []


@pytest.mark.parametrize("case", ["/dev/zero", "larger regular file", "folder"])
def test_file_mirror_is_capped(tmp_path, case, monkeypatch):
    labels_only(monkeypatch)
    if case == "/dev/zero":
        mirror = "file:///dev/zero#"   # the file name lands in the fragment: reads /dev/zero
        expect = "not a regular file"
    elif case == "folder":
        (tmp_path / "srv" / LABELS_FILE).mkdir(parents=True)
        mirror, expect = (tmp_path / "srv").as_uri(), "not a regular file"
    else:
        srv = tmp_path / "srv"
        srv.mkdir()
        with open(srv / LABELS_FILE, "wb") as fh:
            fh.truncate(64 * MiB)   # sparse: costs no disk
        mirror, expect = srv.as_uri(), "wrong size"
    root = tmp_path / "data"
    kind, res = bounded(lambda: D.download_dataset("mnist", root, mirror=mirror, progress=False), 30)
    assert kind == "raised" and isinstance(res, DataError), res
    assert expect in str(res) and "\n" not in str(res)
    assert _leftovers(root) == [] and not (root / "MNIST" / "raw" / LABELS_FILE).exists()


_CHILD = """
import signal, sys
# an interactive session's dispositions, whatever this test runner inherited (nohup, &)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
import dataclasses
from margin_theory import data as D
D.REGISTRY["mnist"] = dataclasses.replace(D.REGISTRY["mnist"], files=("t10k-labels-idx1-ubyte",))
D.download_dataset("mnist", sys.argv[1], mirror=sys.argv[2], progress=False, timeout=5)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP",  # SIGINT: cleaned up before the fix too
                                 pytest.param("SIGINT", id="guard-SIGINT")])
def test_signal_during_download_removes_the_part_file(tmp_path, sig):
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    with hostile_server("trickle body") as url:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), url], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            t_end = time.monotonic() + 60
            while not (raw.is_dir() and any(p.suffix == ".part" for p in raw.iterdir())):
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < t_end, "the download never started"
                time.sleep(0.05)
            time.sleep(0.3)  # well inside the transfer
            child.send_signal(getattr(signal, sig))
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    assert child.returncode != 0
    assert [p.name for p in raw.iterdir()] == []  # neither a .part nor a partial file


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_part_files_are_removed(tmp_path, monkeypatch):
    labels_only(monkeypatch)
    srv = tmp_path / "srv"
    written = write_idx_dir(srv, synthetic_mnist(), gz=True)
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    dead = raw / f".{LABELS_FILE}.{_dead_pid()}-k3j2h1x0.part"     # a SIGKILLed download
    legacy = raw / f".{LABELS_FILE}.a8f3k2_9.part"                  # older name, long untouched
    live = raw / f".{LABELS_FILE}.1-zz9x8c7v.part"                  # pid 1 is alive: kept
    other = raw / ".notes.part"                                     # not ours: kept
    for p in (dead, legacy, live, other):
        p.write_bytes(b"partial")
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    from _data_helpers import serve_directory

    with serve_directory(srv) as url:
        rep = D.download_dataset("mnist", tmp_path / "data", mirror=url, progress=False,
                                 md5s={LABELS_FILE: md5(written[LABELS_FILE])})
    assert sorted(rep["stale_removed"]) == sorted([str(dead), str(legacy)])
    assert not dead.exists() and not legacy.exists() and live.exists() and other.exists()
    assert (raw / LABELS_FILE).read_bytes() == written[LABELS_FILE]


# ---------------------------------------------------------------------------
# issue 10 / item 13: the data CLI - verify on a missing folder, absurd flag values
# ---------------------------------------------------------------------------
def test_verify_missing_folder_is_an_error(tmp_path, capsys):
    assert D.main(["verify", "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert D.main(["verify", "--data-dir", str(tmp_path / "empty"), "--json"]) == 1
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["found"] == 0 and rep["ok"] is False
    assert D.main(["verify", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "NOTHING FOUND" in capsys.readouterr().out


CLI_CASES = {  # argv, words the one-line error must contain
    "timeout 1e308": (["download", "mnist", "--timeout", "1e308"], ["--timeout", "seconds"]),
    "timeout inf": (["download", "mnist", "--timeout", "inf"], ["--timeout", "seconds"]),
    "guard: timeout nan": (["download", "mnist", "--timeout", "nan"], ["--timeout", "seconds"]),
    "deadline 0": (["download", "mnist", "--deadline", "0"], ["--deadline", "seconds"]),
    "deadline 1e400": (["download", "mnist", "--deadline", "1e400"], ["--deadline", "seconds"]),
    "seed -1": (["info", "iris", "--seed", "-1"], ["--seed", "0..2**32-1"]),
    "seed 2**40": (["info", "iris", "--seed", str(2 ** 40)], ["--seed", "0..2**32-1"]),
    "mirror bad ipv6": (["download", "mnist", "--mirror", "http://[::1"], ["mirror", "valid URL"]),
    "mirror bad port": (["download", "mnist", "--mirror", "http://127.0.0.1:99999999/"],
                        ["mirror", "valid URL"]),
    "mirror control chars": (["download", "mnist", "--mirror", "http://127.0.0.1/a\tb"],
                             ["mirror", "control characters"]),
    "mirror without download": (["info", "iris", "--mirror", "http://127.0.0.1:9/"],
                                ["--mirror", "--download"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_absurd_cli_values(tmp_path, capsys, case):
    argv, expect = CLI_CASES[case]
    argv = argv + ["--data-dir", str(tmp_path / "d")]
    if argv[0] == "download" and "--mirror" not in argv:  # loopback only, even if a check broke
        argv += ["--mirror", "http://127.0.0.1:9/"]
    try:
        rc = D.main(argv)
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and all(w in cap.err for w in expect), cap.err
    assert not (tmp_path / "d").exists()  # refused before touching anything


@pytest.mark.parametrize("kw", [{"timeout": float("inf")}, {"timeout": -1}, {"deadline": 1e9},
                                {"deadline": "soon"}, {"max_bytes": 0}, {"max_bytes": True}])
def test_absurd_download_arguments(tmp_path, kw):
    with pytest.raises(DataError) as e:
        D.download_dataset("mnist", tmp_path / "d", mirror="http://127.0.0.1:9/", **kw)
    assert list(kw)[0] in one_line(e)
    assert not (tmp_path / "d").exists()


def test_load_dataset_seed_range():
    for seed in (-1, 2 ** 32, 10 ** 30):
        with pytest.raises(DataError) as e:
            D.load_dataset("iris", seed=seed)
        assert "0..2**32-1" in one_line(e)
