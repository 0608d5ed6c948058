"""Helpers of the hardening tests (issue 14): a tiny base run, CLI calls that capture exit
status and output, and tampering with checkpoints while keeping their hashes valid (so a
test reaches the check it means, not the hash check)."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: iris (112 train / 38 test, 2 steps an epoch): a whole run takes a fraction of a second;
#: momentum so that the checkpoints hold optimizer tensors
BASE_ARGS = ["--dataset", "iris", "--model", "lowrank", "--lr", "0.05", "--momentum", "0.9",
             "--epochs", "3", "--checkpoint-every", "1", "--quiet"]
TIME_KEYS = ("epoch_seconds", "monitor_seconds")


def run_main(main, argv, capsys):
    """``(rc, stdout, stderr)`` of an in-process CLI call (argparse exits included)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, needle=None, code=2):
    assert rc == code, (rc, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert " error: " in err, err
    if needle is not None:
        assert needle in err, (needle, err)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def strip_time(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def assert_same_rows(a, b, tol=1e-6):
    """Row for row equal (timings aside): same epochs, keys and values."""
    a, b = strip_time(a), strip_time(b)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), (ra, rb)
        for k in ra:
            if isinstance(ra[k], float) and isinstance(rb[k], float):
                assert math.isclose(ra[k], rb[k], rel_tol=tol, abs_tol=tol), (k, ra, rb)
            else:
                assert ra[k] == rb[k], (k, ra, rb)


def metrics_rows(run: Path):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def ckpt(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / f"epoch-{epoch:04d}.safetensors"


def edit_sidecar(tensor_path: Path, fn) -> None:
    side = tensor_path.with_suffix(".json")
    meta = json.loads(side.read_text())
    new = fn(meta)
    side.write_text(new if isinstance(new, str) else json.dumps(meta if new is None else new))


def rewrite_tensors(tensor_path: Path, fn) -> None:
    """Replace the tensor file by ``fn(tensors)`` and update the sidecar's size and SHA-256."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    blob = tensor_path.read_bytes()
    with safe_open(str(tensor_path), "pt") as fh:
        metadata = fh.metadata()
    tensors = dict(load(blob))
    out = fn(tensors)
    tensors = tensors if out is None else out
    new = save(tensors, metadata=metadata)
    tensor_path.write_bytes(new)

    def fix(meta):
        meta["tensor_bytes"] = len(new)
        meta["tensor_sha256"] = hashlib.sha256(new).hexdigest()

    edit_sidecar(tensor_path, fix)


def first_weight(tensors) -> str:
    return next(k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point())


def no_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


def make_base_run(tmp_path_factory):
    """An uninterrupted run of ``BASE_ARGS`` (checkpoints every epoch): the reference and the
    raw material the hardening tests copy and damage."""
    from margin_theory.train import main as train_main

    out = tmp_path_factory.mktemp("base") / "run"
    assert train_main([*BASE_ARGS, "--out", str(out)]) == 0
    return out
