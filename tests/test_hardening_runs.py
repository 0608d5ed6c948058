"""Hardening of the trainer's run folder (issue 14, items 1-5, 11, 13): the lock on --out,
--overwrite deleting only our files, resume never duplicating metrics rows, the run's
config as the authority over a sidecar, non-finite checkpoints, the one strict
metrics.jsonl reader, disk full during writes and orphans of killed runs.

Every hostile input is built here in tmp_path; each case is one test (parametrized)."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _hostile import (make_base_run, BASE_ARGS, REPO, assert_same_rows, ckpt, copy_run, edit_sidecar, metrics_rows,
                      nan_like, no_temp_files, one_line_error, rewrite_tensors, run_main)
from margin_theory.checkpoint import list_checkpoints, read_checkpoint
from margin_theory.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_base_run(tmp_path_factory)


def resume(out, capsys, *extra):
    return run_main(train_main, [*BASE_ARGS, "--out", out, "--resume", *extra], capsys)


# ---------------------------------------------------------------------------
# 1. exclusive lock on --out
# ---------------------------------------------------------------------------
def test_second_run_on_a_locked_folder_fails_at_once_naming_the_holder(tmp_path):
    from margin_theory.runfolder import RunLock

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with RunLock(out):                       # this process holds it; the trainer is another process
        proc = subprocess.run([sys.executable, "-m", "margin_theory.train", *BASE_ARGS, "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "in use by another run" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and socket.gethostname() in proc.stderr
    assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()


def test_lock_is_released_and_its_file_removed_after_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--epochs", "1"], capsys)
    assert rc == 0, err
    assert not (out / ".margin_theory.lock").exists()
    rc, _, err = resume(out, capsys)                # the next run may take the folder
    assert rc == 0, err


def test_in_process_second_run_is_refused_while_locked(tmp_path, capsys):
    from margin_theory.runfolder import RunLock

    out = tmp_path / "run"
    with RunLock(out):
        rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out], capsys)
    one_line_error(rc, err, "in use by another run")


# ---------------------------------------------------------------------------
# 2. --overwrite deletes only what a run of ours wrote
# ---------------------------------------------------------------------------
FOREIGN = {
    "config.json": '{"my": "own notes"}\n',
    "summary.json": '{"status": "mine", "config": {"paper": "draft"}}\n',
    "metrics.jsonl": '{"epoch": 0, "what": "my own measurements"}\n',
    "checkpoints/epoch-0007.json": '{"format": "someone-else"}\n',
    "checkpoints/epoch-0007.safetensors": "not even safetensors",
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_overwrite_refuses_files_no_run_of_ours_wrote(base_run, tmp_path, capsys, name):
    out = copy_run(base_run, tmp_path / "run")
    target = out / name
    target.parent.mkdir(exist_ok=True)
    target.write_text(FOREIGN[name])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--overwrite"], capsys)
    one_line_error(rc, err, "not written by margin_theory.train")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before                           # nothing deleted, nothing changed


def test_overwrite_of_our_own_run_keeps_the_users_other_files(base_run, tmp_path, capsys):
    out = copy_run(base_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--overwrite", "--epochs", "1"], capsys)
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in list_checkpoints(out)] == ["epoch-0000.safetensors", "epoch-0001.safetensors"]


# ---------------------------------------------------------------------------
# 3. resume never duplicates metrics rows
# ---------------------------------------------------------------------------
def _kill_after(out: Path, epoch: int, metrics_ahead: bool) -> None:
    """What a kill leaves: checkpoints up to ``epoch``; metrics up to it, or one row further
    (killed between the metrics write and the checkpoint)."""
    for p in (out / "checkpoints").iterdir():
        if int(p.name[6:10]) > epoch:
            p.unlink()
    rows = metrics_rows(out)[: epoch + 1 + int(metrics_ahead)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").unlink(missing_ok=True)


@pytest.mark.parametrize("epoch", [0, 1, 2])
@pytest.mark.parametrize("metrics_ahead", [False, True], ids=["metrics-at-ckpt", "metrics-ahead"])
def test_resume_after_a_kill_equals_the_uninterrupted_run(base_run, tmp_path, capsys, epoch, metrics_ahead):
    out = copy_run(base_run, tmp_path / "run")
    _kill_after(out, epoch, metrics_ahead)
    rc, _, err = resume(out, capsys)
    assert rc == 0, err
    assert_same_rows(metrics_rows(out), metrics_rows(base_run))


def test_chained_kills_at_epoch_0_leave_one_row_per_epoch(base_run, tmp_path, capsys):
    out = copy_run(base_run, tmp_path / "run")
    for _ in range(3):
        _kill_after(out, 0, False)
        rc, _, err = resume(out, capsys, "--epochs", "1")
        assert rc == 0, err
        _kill_after(out, 0, True)
    rc, _, err = resume(out, capsys)
    assert rc == 0, err
    assert_same_rows(metrics_rows(out), metrics_rows(base_run))


# ---------------------------------------------------------------------------
# 4. the run's configuration is the authority over a sidecar's optimizer settings
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("maximize", True), ("momentum", 0.5), ("weight_decay", 0.1),
                                        ("nesterov", True), ("dampening", 0.5)])
def test_resume_refuses_a_sidecar_whose_optimizer_settings_differ(base_run, tmp_path, capsys, key, value):
    out = copy_run(base_run, tmp_path / "run")
    edit_sidecar(ckpt(out, 3), lambda m: m["optimizer"]["param_groups"][0].update({key: value}))
    rc, _, err = resume(out, capsys, "--epochs", "4")
    one_line_error(rc, err, key)
    assert [r["epoch"] for r in metrics_rows(out)] == [0, 1, 2, 3]   # nothing trained


def test_resume_refuses_a_sidecar_config_that_disagrees_with_config_json(base_run, tmp_path, capsys):
    out = copy_run(base_run, tmp_path / "run")
    edit_sidecar(ckpt(out, 3), lambda m: m["config"].update(lr=0.5))
    # the command line repeats the tampered value: only config.json can tell
    rc, _, err = resume(out, capsys, "--epochs", "4", "--lr", "0.5")
    one_line_error(rc, err, "--lr")


# ---------------------------------------------------------------------------
# 5. never write, keep or resume from a non-finite checkpoint
# ---------------------------------------------------------------------------
def _poison(tensors):
    return {k: nan_like(v) if k.startswith("model.") and v.is_floating_point() else v for k, v in tensors.items()}


def test_resume_refuses_an_all_nan_checkpoint(base_run, tmp_path, capsys):
    out = copy_run(base_run, tmp_path / "run")
    rewrite_tensors(ckpt(out, 3), _poison)                       # hash kept valid
    rc, _, err = resume(out, capsys, "--epochs", "4")
    one_line_error(rc, err, "NaN")


def test_read_checkpoint_refuses_an_infinite_momentum_buffer(base_run, tmp_path):
    from margin_theory._util import CheckpointError

    out = copy_run(base_run, tmp_path / "run")
    rewrite_tensors(ckpt(out, 2), lambda t: {k: torch.full_like(v, float("inf")) if k.startswith("optim.") else v
                                             for k, v in t.items()})
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        read_checkpoint(ckpt(out, 2))


def test_save_checkpoint_never_writes_nan_weights(tmp_path):
    from margin_theory._util import CheckpointError
    from margin_theory.checkpoint import checkpoint_stem, save_checkpoint
    from margin_theory.models import build_model

    model = build_model("lowrank", (4,), 3)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(checkpoint_stem(tmp_path, 1), model, None, {"model": "lowrank"}, 1, 0)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_divergence_with_nan_weights_but_finite_metrics_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                                       monkeypatch):
    """The loss checks pass (evaluation patched to report finite numbers) while the weights are
    NaN: the checkpoint guard turns this into a divergence and keeps the older checkpoint."""
    import margin_theory.train as tr

    real = tr.evaluate
    calls = {"n": 0}

    def evaluate(model, ds, **kw):
        calls["n"] += 1
        if calls["n"] == 3:                                    # after epoch 2: poison the weights
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
            return {"train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5, "gamma_bar": 0.1,
                    "gamma_min": 0.0, "theta_norm": 1.0, "degree": 4, "normalisation": "full"}
        return real(model, ds, **kw)

    monkeypatch.setattr(tr, "evaluate", evaluate)
    out = tmp_path / "run"
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out], capsys)
    one_line_error(rc, err, "diverged in epoch 2", code=3)
    assert [p.name for p in list_checkpoints(out)] == ["epoch-0000.safetensors", "epoch-0001.safetensors"]
    for p in list_checkpoints(out):
        read_checkpoint(p)                                     # all finite, all readable


# ---------------------------------------------------------------------------
# 11. the one strict metrics.jsonl reader: --resume, plot, check --plot
# ---------------------------------------------------------------------------
GOOD = '{"epoch": 0, "train_loss": 1.0, "gamma_bar": 0.1, "test_acc": 0.5}\n'
BAD_METRICS = {
    "invalid-utf8": (GOOD.encode() + b'{"epoch": 1, "note": "\xff\xfe"}\n', "line 2: invalid UTF-8"),
    "epoch-string": (GOOD + '{"epoch": "x"}\n', "line 2: epoch must be an integer"),
    "epoch-null": (GOOD + '{"epoch": null}\n', "line 2: epoch must be an integer"),
    "epoch-float": (GOOD + '{"epoch": 1.5}\n', "line 2: epoch must be an integer"),
    "epoch-bool": (GOOD + '{"epoch": true}\n', "line 2: epoch must be an integer"),
    "epoch-negative": ('{"epoch": -1}\n', "line 1: epoch must be an integer"),
    "epoch-repeated": (GOOD + GOOD, "line 2: epoch 0 does not follow"),
    "deep-nesting": (GOOD + '{"epoch": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 2"),
    "nan-constant": (GOOD + '{"epoch": 1, "train_loss": NaN}\n', "line 2 is not JSON"),
    "not-an-object": (GOOD + "[1, 2]\n", "line 2 is not a metrics record"),
    "no-epoch": (GOOD + '{"loss": 1}\n', "line 2 is not a metrics record"),
    "value-string": (GOOD + '{"epoch": 1, "gamma_bar": "big"}\n', "line 2: gamma_bar must be a number"),
    "partial-line": (GOOD + '{"epoch": 1, "train_lo', "line 2 is not JSON"),
}


def _plant(folder: Path, case: str) -> None:
    data, _ = BAD_METRICS[case]
    (folder / "metrics.jsonl").write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_plot_reads_metrics_strictly(tmp_path, capsys, case):
    from margin_theory.plot import main as plot_main

    run = tmp_path / "run"
    run.mkdir()
    _plant(run, case)
    rc, _, err = run_main(plot_main, [run, "--out", tmp_path / "fig.png"], capsys)
    one_line_error(rc, err, BAD_METRICS[case][1])
    assert "metrics.jsonl" in err and not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("case", ["invalid-utf8", "epoch-string", "deep-nesting", "epoch-repeated"])
def test_resume_reads_metrics_strictly(base_run, tmp_path, capsys, case):
    out = copy_run(base_run, tmp_path / "run")
    _plant(out, case)
    rc, _, err = resume(out, capsys, "--epochs", "4")
    one_line_error(rc, err, BAD_METRICS[case][1])


@pytest.mark.parametrize("case", ["invalid-utf8", "epoch-null", "deep-nesting"])
def test_check_plot_reads_metrics_strictly(base_run, tmp_path, capsys, case):
    pytest.importorskip("margin_theory.assumptions")
    from margin_theory.check import main as check_main

    out = copy_run(base_run, tmp_path / "run")
    for p in list_checkpoints(out)[1:]:                      # one checkpoint is enough here
        p.unlink()
        p.with_suffix(".json").unlink()
    _plant(out, case)
    rc, _, err = run_main(check_main, [out, "--plot", "--out", tmp_path / "c.png", "--subset", "8"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert BAD_METRICS[case][1] in err and err.count("\n") == 1, err


@pytest.mark.parametrize("entry", ["plot", "resume"])
def test_a_directory_in_place_of_metrics_jsonl(base_run, tmp_path, capsys, entry):
    from margin_theory.plot import main as plot_main

    out = copy_run(base_run, tmp_path / "run")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").mkdir()
    if entry == "plot":
        rc, _, err = run_main(plot_main, [out, "--out", tmp_path / "f.png"], capsys)
    else:
        rc, _, err = resume(out, capsys, "--epochs", "4")
    one_line_error(rc, err, "is a folder, not a metrics file")


# ---------------------------------------------------------------------------
# 13. disk full during a checkpoint or metrics write; orphans of killed runs
# ---------------------------------------------------------------------------
def _enospc_on(monkeypatch, needle: str) -> None:
    """os.fsync fails with ENOSPC for the temporary file whose name contains ``needle``."""
    real = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if needle in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("needle", [".epoch-0002.safetensors.", ".epoch-0002.json.", ".summary.json."])
def test_disk_full_during_a_checkpoint_write(tmp_path, capsys, monkeypatch, needle):
    out = tmp_path / "run"
    _enospc_on(monkeypatch, needle)
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out], capsys)
    one_line_error(rc, err, "No space left on device")
    monkeypatch.undo()
    assert no_temp_files(out) == []
    if "summary" not in needle:
        assert not list((out / "checkpoints").glob("epoch-0002.*"))        # no half checkpoint
        assert [p.name for p in list_checkpoints(out)] == ["epoch-0000.safetensors", "epoch-0001.safetensors"]
    for p in list_checkpoints(out):
        read_checkpoint(p)                                                  # earlier ones intact


def test_disk_full_during_a_metrics_write(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = os.fsync
    seen = {"n": 0}

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".metrics.jsonl." in name:
            seen["n"] += 1
            if seen["n"] == 3:                      # the rows of epochs 0..1 are written
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out], capsys)
    one_line_error(rc, err, "No space left on device")
    monkeypatch.undo()
    assert no_temp_files(out) == []
    assert [r["epoch"] for r in metrics_rows(out)] == [0]
    assert [p.name for p in list_checkpoints(out)] == ["epoch-0000.safetensors"]
    rc, _, err = resume(out, capsys)                                        # and it resumes cleanly
    assert rc == 0, err


@pytest.mark.parametrize("orphan", ["checkpoints/.epoch-0002.safetensors.k3j4l5.tmp",
                                    "checkpoints/.epoch-0002.json.a1b2c3.tmp",
                                    ".metrics.jsonl.zz9x8y.tmp", ".config.json.q1w2e3.tmp",
                                    "checkpoints/epoch-0009.safetensors"])
def test_orphans_of_a_killed_run_are_removed_by_the_next_run(base_run, tmp_path, capsys, orphan):
    out = copy_run(base_run, tmp_path / "run")
    target = out / orphan
    if orphan.endswith(".safetensors"):                     # tensors written, sidecar never
        target.write_bytes(ckpt(out, 1).read_bytes())
    else:
        target.write_bytes(b"half written")
    (out / ".notes.tmp").write_text("mine")                # not ours: stays
    rc, _, err = resume(out, capsys, "--epochs", "4")
    assert rc == 0, err
    assert not target.exists() and (out / ".notes.tmp").read_text() == "mine"


def test_sigkill_mid_run_then_resume_loses_nothing(base_run, tmp_path, capsys):
    """A real SIGKILL (no clean-up runs) in the middle of a run, then --resume."""
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [a for a in BASE_ARGS if a != "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "margin_theory.train", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:                                # kill right after epoch 1 is reported
        if line.startswith("epoch 1/3"):
            break
    time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    rc, _, err = resume(out, capsys)
    assert rc == 0, err
    assert_same_rows(metrics_rows(out), metrics_rows(base_run))
    assert no_temp_files(out) == [] and not (out / ".margin_theory.lock").exists()
