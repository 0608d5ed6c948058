#!/usr/bin/env python
r"""Fuzz a training run folder with random kills, resumes and corruptions (issue 14).

A small run (iris, Low-Rank rank 1, SGD with momentum, 6 epochs, a checkpoint every 2) is
trained once uninterrupted: the reference. Then the same run is driven through ``--rounds``
random actions in another folder:

* **kill** - start the run (``--resume`` when a checkpoint exists, ``--overwrite`` when only
  our files are there, else fresh) and kill it at a random point: ``--mode sigkill`` runs the
  CLI in a subprocess and sends SIGKILL after a random delay (nothing of ours runs on the way
  out); ``--mode inproc`` (fast, used by the test suite) raises a ``BaseException`` from the
  k-th metrics or checkpoint write, before or after the write;
* **corrupt** - damage the folder the way a disk, a user or an attacker might (a flipped byte
  in the latest checkpoint, NaN weights with a valid hash, an edited sidecar optimizer
  setting or epoch, a metrics line of invalid UTF-8 or 100,000-deep JSON), check that the
  next ``--resume`` refuses it with one line (exit 2; ``MarginTheoryError`` in-process) and
  changes nothing, then undo the damage;
* **orphans** - plant what a SIGKILL leaves (temporary files of atomic writes, a tensor
  file without its sidecar) and check that the next run removes them.

At the end one uninterrupted ``--resume`` finishes the run, and the script checks that
nothing was lost: ``metrics.jsonl`` equals the reference row for row (timings aside), every
checkpoint reads back, the final weights equal the reference's, no temporary or lock file
is left. Exit status 0 when every check held, 1 otherwise (the first failure is printed).

    python scripts/fuzz.py --rounds 40 --seed 1 --mode sigkill
    python scripts/fuzz.py --rounds 200 --mode inproc --json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUN_ARGS = ["--dataset", "iris", "--model", "lowrank", "--lr", "0.05", "--momentum", "0.9", "--epochs", "6",
            "--checkpoint-every", "2", "--quiet"]
TIME_KEYS = ("epoch_seconds", "monitor_seconds")
CORRUPTIONS = ("flip-byte", "nan-weights", "sidecar-maximize", "sidecar-epoch", "metrics-utf8", "metrics-deep")


class Killed(BaseException):
    """The emulated kill of ``--mode inproc``."""


class FuzzFailure(AssertionError):
    pass


def _config(out: Path, **kw):
    from margin_theory.train import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(RUN_ARGS + ["--out", str(out)]
                                                      + [x for k, v in kw.items() for x in (f"--{k}",) if v]))


def _rows(out: Path) -> list[dict]:
    from margin_theory.runfolder import read_metrics

    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in read_metrics(out)]


def _same_rows(a: list[dict], b: list[dict]) -> str | None:
    if [r["epoch"] for r in a] != [r["epoch"] for r in b]:
        return f"epochs {[r['epoch'] for r in a]} != reference {[r['epoch'] for r in b]}"
    for ra, rb in zip(a, b):
        if ra.keys() != rb.keys():
            return f"epoch {ra['epoch']}: keys differ"
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9):
                    return f"epoch {ra['epoch']}: {k} {x!r} != reference {y!r}"
            elif x != y:
                return f"epoch {ra['epoch']}: {k} {x!r} != reference {y!r}"
    return None


# ---------------------------------------------------------------------------
# Starting and killing runs
# ---------------------------------------------------------------------------
def _mode_flags(out: Path) -> dict:
    from margin_theory.checkpoint import latest_checkpoint
    from margin_theory.runfolder import existing_run

    if out.is_dir() and latest_checkpoint(out) is not None:
        return {"resume": True}
    if out.is_dir() and existing_run(out):
        return {"overwrite": True}
    return {}


def _run_inproc(out: Path, kill_at: int | None, after: bool) -> str:
    """Run in this process; with ``kill_at`` raise :class:`Killed` at that write. Returns
    ``"done"``, ``"killed"`` or ``"refused: <message>"``."""
    import margin_theory.checkpoint as ck
    import margin_theory.train as tr
    from margin_theory._util import MarginTheoryError

    real_metrics, real_save = tr._write_metrics, ck.save_checkpoint
    count = {"n": 0}

    def hook(real):
        def wrapped(*a, **kw):
            count["n"] += 1
            if kill_at is not None and count["n"] == kill_at and not after:
                raise Killed()
            res = real(*a, **kw)
            if kill_at is not None and count["n"] == kill_at and after:
                raise Killed()
            return res
        return wrapped

    tr._write_metrics, ck.save_checkpoint = hook(real_metrics), hook(real_save)
    try:
        tr.train(_config(out, **_mode_flags(out)), progress=False, log=None)
        return "done"
    except Killed:
        return "killed"
    except MarginTheoryError as exc:
        return "refused: " + " ".join(str(exc).split())
    finally:
        tr._write_metrics, ck.save_checkpoint = real_metrics, real_save


def _cli(out: Path, flags: dict) -> list[str]:
    return [sys.executable, "-m", "margin_theory.train", *RUN_ARGS, "--out", str(out)] + \
        [f"--{k}" for k, v in flags.items() if v]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _run_subprocess(out: Path, kill_after_s: float | None) -> str:
    proc = subprocess.Popen(_cli(out, _mode_flags(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env())
    if kill_after_s is not None:
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return "killed"
    _, err = proc.communicate(timeout=600)
    if proc.returncode == 0:
        return "done"
    lines = err.strip().splitlines()
    if proc.returncode == 2 and len(lines) == 1:
        return "refused: " + lines[0]
    raise FuzzFailure(f"run exited {proc.returncode} with {len(lines)} stderr line(s): {err.strip()[-400:]}")


# ---------------------------------------------------------------------------
# Corruptions
# ---------------------------------------------------------------------------
def _rehash(tensor_path: Path, fn) -> None:
    from safetensors import safe_open
    from safetensors.torch import load, save

    with safe_open(str(tensor_path), "pt") as fh:
        metadata = fh.metadata()
    tensors = fn(dict(load(tensor_path.read_bytes())))
    blob = save(tensors, metadata=metadata)
    tensor_path.write_bytes(blob)
    side = tensor_path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.update(tensor_bytes=len(blob), tensor_sha256=hashlib.sha256(blob).hexdigest())
    side.write_text(json.dumps(meta))


def _corrupt(out: Path, kind: str, rng: random.Random) -> None:
    """Damage the latest checkpoint or ``metrics.jsonl`` of ``out`` (the caller keeps the originals)."""
    import torch

    from margin_theory.checkpoint import latest_checkpoint

    latest = latest_checkpoint(out)
    side = latest.with_suffix(".json") if latest else None
    metrics = out / "metrics.jsonl"
    if kind == "flip-byte":
        raw = bytearray(latest.read_bytes())
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        latest.write_bytes(bytes(raw))
    elif kind == "nan-weights":
        _rehash(latest, lambda t: {k: torch.full_like(v, float("nan")) if k.startswith("model.")
                                   and v.is_floating_point() else v for k, v in t.items()})
    elif kind == "sidecar-maximize":
        meta = json.loads(side.read_text())
        meta["optimizer"]["param_groups"][0]["maximize"] = True
        side.write_text(json.dumps(meta))
    elif kind == "sidecar-epoch":
        meta = json.loads(side.read_text())
        meta["epoch"] = rng.choice([None, "2", [2], 1.5, -1])
        side.write_text(json.dumps(meta))
    elif kind == "metrics-utf8":
        with open(metrics, "ab") as fh:
            fh.write(b'{"epoch": 99, "x": "\xff"}\n')
    elif kind == "metrics-deep":
        with open(metrics, "a") as fh:
            fh.write('{"epoch": 99, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")


def _plant_orphans(out: Path, rng: random.Random) -> list[Path]:
    from margin_theory.checkpoint import latest_checkpoint

    ck = out / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    tag = f"{rng.randrange(16**6):06x}"
    planted = [ck / f".epoch-{rng.randrange(1, 7):04d}.safetensors.{tag}.tmp", out / f".metrics.jsonl.{tag}.tmp"]
    for p in planted:
        p.write_bytes(b"half written")
    latest = latest_checkpoint(out)
    if latest is not None:
        orphan = ck / "epoch-0099.safetensors"                    # tensors whose sidecar never came
        shutil.copyfile(latest, orphan)
        planted.append(orphan)
    return planted


# ---------------------------------------------------------------------------
# The fuzz loop
# ---------------------------------------------------------------------------
def fuzz(workdir: str | Path, rounds: int = 20, seed: int = 0, mode: str = "inproc", log=None) -> dict:
    """Run the fuzz loop in ``workdir``; return counts. Raises :class:`FuzzFailure` on any loss."""
    import torch

    from margin_theory._util import MarginTheoryError
    from margin_theory.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
    from margin_theory.train import train

    workdir = Path(workdir)
    rng = random.Random(seed)
    ref_dir, out = workdir / "reference", workdir / "run"
    t0 = time.perf_counter()
    if mode == "inproc":
        ref = train(_config(ref_dir), progress=False, log=None)
    else:
        if _run_subprocess(ref_dir, None) != "done":
            raise FuzzFailure("the reference run failed")
        ref = None
    run_seconds = time.perf_counter() - t0
    ref_rows = _rows(ref_dir)
    counts = {"kills": 0, "completed": 0, "corruptions_refused": 0, "orphans_removed": 0, "rounds": rounds}
    pending_orphans: list[Path] = []

    def check_orphans_gone():
        nonlocal pending_orphans
        left = [p for p in pending_orphans if p.exists()]
        if left:
            raise FuzzFailure(f"orphans not removed by the next run: {', '.join(p.name for p in left)}")
        counts["orphans_removed"] += len(pending_orphans)
        pending_orphans = []

    for i in range(rounds):
        action = rng.choice(["kill", "kill", "kill", "corrupt", "orphans"])
        if action == "corrupt" and latest_checkpoint(out) is None:
            action = "kill"
        if action == "kill":
            if mode == "inproc":
                res = _run_inproc(out, kill_at=rng.randint(1, 6), after=rng.random() < 0.5)
            else:
                res = _run_subprocess(out, kill_after_s=rng.uniform(0.0, 1.5 * run_seconds))
            if res.startswith("refused"):
                raise FuzzFailure(f"round {i}: a clean folder was refused: {res}")
            counts["kills" if res == "killed" else "completed"] += 1
            check_orphans_gone()
        elif action == "orphans":
            pending_orphans += _plant_orphans(out, rng)
        else:
            kind = rng.choice(CORRUPTIONS)
            latest = latest_checkpoint(out)
            originals = {q: q.read_bytes() for q in (latest, latest.with_suffix(".json"), out / "metrics.jsonl")
                         if q.is_file()}
            _corrupt(out, kind, rng)
            damaged = {q: q.read_bytes() for q in originals}
            res = _run_inproc(out, None, False) if mode == "inproc" else _run_subprocess(out, None)
            if not res.startswith("refused"):
                raise FuzzFailure(f"round {i}: corruption {kind} was not refused (run {res})")
            if any(q.read_bytes() != b for q, b in damaged.items()):
                raise FuzzFailure(f"round {i}: the refused run changed the run folder ({kind})")
            counts["corruptions_refused"] += 1
            check_orphans_gone()
            for q, b in originals.items():                          # undo the damage
                q.write_bytes(b)
        if log:
            log(f"round {i}: {action} -> {counts}")

    # finish, then check that nothing was lost
    res = _run_inproc(out, None, False) if mode == "inproc" else _run_subprocess(out, None)
    if res != "done":
        raise FuzzFailure(f"the final resume did not finish: {res}")
    check_orphans_gone()
    try:
        rows = _rows(out)
    except MarginTheoryError as exc:
        raise FuzzFailure(f"metrics.jsonl of the finished run is unreadable: {exc}") from None
    diff = _same_rows(rows, ref_rows)
    if diff:
        raise FuzzFailure(f"metrics.jsonl differs from the uninterrupted run: {diff}")
    for p in list_checkpoints(out):
        try:
            read_checkpoint(p)
        except MarginTheoryError as exc:
            raise FuzzFailure(f"checkpoint {p.name} does not read back: {exc}") from None
    final = read_checkpoint(out)
    refm = read_checkpoint(ref_dir).model.state_dict()
    for k, v in final.model.state_dict().items():
        if not torch.allclose(v, refm[k], rtol=0, atol=1e-6):
            raise FuzzFailure(f"final weights differ from the uninterrupted run's ({k})")
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".margin_theory.lock"]
    if leftovers:
        raise FuzzFailure(f"files left behind: {', '.join(leftovers)}")
    return counts



def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="random actions (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the action sequence (default 0)")
    p.add_argument("--mode", choices=("inproc", "sigkill"), default="sigkill",
                   help="sigkill: real SIGKILLs of CLI subprocesses (default); inproc: emulated, fast")
    p.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mt-fuzz-"))
    t0 = time.perf_counter()
    try:
        counts = fuzz(work, args.rounds, args.seed, args.mode,
                      log=None if args.json else lambda m: print(m, flush=True))
        ok, error = True, None
    except FuzzFailure as exc:
        counts, ok, error = {}, False, str(exc)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"ok": ok, "error": error, "mode": args.mode, "seed": args.seed, "seconds": time.perf_counter() - t0,
           **counts}
    if args.json:
        print(json.dumps(doc))
    else:
        print(("OK: nothing lost" if ok else f"FAILED: {error}") + f" ({json.dumps(doc)})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
