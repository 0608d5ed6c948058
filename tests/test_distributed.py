"""Multi-process training (margin_theory.distributed): DDP through torchrun on 127.0.0.1 (gloo, CPU).

Every launched run uses a seeded subset of the bundled mnist-5k (1,000 train / 500 test;
batch 96 does not divide N, so the last batch is partial) with momentum, augmentation and
the margin term switched on, so that every path of the distributed epoch is exercised.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_theory._util import ConfigError
from margin_theory.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from margin_theory.distributed import DistContext, env_world, shard_indices
from margin_theory.train import TrainConfig, augment_batch, read_metrics, train

REPO = Path(__file__).resolve().parents[1]
RUN = dict(dataset="mnist-5k", n_train=1000, n_test=500, model="lowrank", rank=2, lr=0.02, momentum=0.9,
           augment=True, margin_reg=0.5, batch_size=96, epochs=3, monitor_every=3, monitor_subset=64,
           checkpoint_every=1, eval_every_steps=4, quiet=True)
N_TRAIN, N_TEST, STEPS = 1000, 500, 11
FLOAT_KEYS = ("train_loss", "gamma_bar", "gamma_min", "gamma_output", "gamma_smoothed", "theta_norm")
# float32 reduction-order noise after 3 epochs (measured: relative <= 2e-6 on these keys); an
# error in the loss scale, the shard or the batch split moves them by > 1e-2.
REL_TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _can_launch() -> str | None:
    import torch.distributed as dist

    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    return None


needs_gloo = pytest.mark.skipif(_can_launch() is not None, reason=str(_can_launch()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MARGIN_THEORY_DIST_TIMEOUT": "60",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _argv(**kw) -> list[str]:
    cfg = {**RUN, **kw}
    argv = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is False or v is None:
            continue
        else:
            argv += [flag, str(v)]
    return argv


def _torchrun(argv: list[str], nproc: int = 2, **popen) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr",
            "127.0.0.1", f"--master_port={_free_port()}", "-m", "margin_theory.train", *argv]


def _launch(argv: list[str], nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun(argv, nproc), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _close(a: float, b: float, tol: float = REL_TOL) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol * 1e-3)


def assert_metrics_match(rows_a, rows_b, n_train: int, n_test: int):
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert set(a) == set(b)
        for k in FLOAT_KEYS:
            assert _close(a[k], b[k]), (a["epoch"], k, a[k], b[k])
        # an accuracy may differ by a point whose margin is at rounding level
        assert abs(a["train_acc"] - b["train_acc"]) <= 1 / n_train + 1e-12, a["epoch"]
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / n_test + 1e-12, a["epoch"]
        # the best over the step-cadence evaluations (--eval-every-steps: a collective in DDP)
        assert abs(a["test_acc_best"] - b["test_acc_best"]) <= 1 / n_test + 1e-12, a["epoch"]
        assert a["lr"] == b["lr"] and a["degree"] == b["degree"] and a["normalisation"] == b["normalisation"]
        if "theorem2" in a:
            for k in ("gamma_bar", "rho", "cv", "velocity", "sigma_max"):
                assert _close(a["theorem2"][k], b["theorem2"][k], 1e-3), (k, a["theorem2"][k], b["theorem2"][k])
            assert a["theorem2"]["theorem_applies"] == b["theorem2"]["theorem_applies"]


# ---------------------------------------------------------------------------
# the pieces, without a process group
# ---------------------------------------------------------------------------
def _ctx(W: int, r: int) -> DistContext:
    return DistContext(world_size=W, rank=r, local_rank=r, device=torch.device("cpu"), backend="gloo",
                       owns_group=False)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), bs=st.integers(1, 120), W=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_rank_parts_partition_the_single_process_batches(n, bs, W, seed):
    """Global batch k of every rank's plan is perm[k B:(k+1) B] of a single process (same
    generator draw), and the ranks' parts partition it: each member exactly once, at the
    rank that holds it (index = rank mod W), at its position within the batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    batches = list(perm.split(bs))
    seen = [torch.zeros(b.shape[0], dtype=torch.long) for b in batches]
    for r in range(W):
        g = torch.Generator().manual_seed(seed)
        locs, withins, sizes = _ctx(W, r).epoch_plan(n, bs, g, torch.device("cpu"))
        assert sizes == [b.shape[0] for b in batches]
        held = shard_indices(n, W, r)
        for k, (loc, within) in enumerate(zip(locs, withins)):
            glob = held[loc]
            assert torch.equal(glob, batches[k][within])        # the same samples, the same slots
            assert bool((glob % W == r).all())
            seen[k][within] += 1
        # the generator advanced exactly as one randperm(n)
        assert torch.equal(g.get_state(), _after_randperm(n, seed))
    assert all(bool((s == 1).all()) for s in seen)


def _after_randperm(n, seed):
    g = torch.Generator().manual_seed(seed)
    torch.randperm(n, generator=g)
    return g.get_state()


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 24), seed=st.integers(0, 2**31 - 1), pad=st.sampled_from([0, 2, 4]))
def test_augment_part_equals_rows_of_the_whole_batch(B, seed, pad):
    torch.manual_seed(seed % 1000)
    x = torch.rand(B, 2, 6, 7)
    sel = torch.randperm(B, generator=torch.Generator().manual_seed(seed))[: max(0, B // 2)].sort().values
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    whole = augment_batch(x, g1, pad=pad)
    part = augment_batch(x[sel], g2, pad=pad, draws=B, select=sel)
    assert torch.equal(part, whole[sel])
    assert torch.equal(g1.get_state(), g2.get_state())      # generators stay in step


def test_world_from_environment(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert env_world() is None                      # torchrun --nproc_per_node=1: the plain trainer
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (4, 3, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK"):
        env_world()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        env_world()


def test_bad_timeout_is_a_config_error(monkeypatch):
    from margin_theory import distributed

    monkeypatch.setenv(distributed.TIMEOUT_ENV, "-3")
    with pytest.raises(ConfigError, match="MARGIN_THEORY_DIST_TIMEOUT"):
        distributed._timeout_s()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed._timeout_s() == 12.5


# ---------------------------------------------------------------------------
# launched runs: 2 processes against 1
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if _can_launch():
        pytest.skip(_can_launch())
    d = tmp_path_factory.mktemp("ddp")
    proc = _launch(_argv(out=d / "two") + ["--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(TrainConfig(**RUN, out=str(d / "one")), log=None)
    return d, proc, one


@needs_gloo
def test_two_processes_equal_one(runs):
    d, proc, one = runs
    docs = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(docs) == 1                          # rank 0 alone reports
    summary = json.loads(docs[0])
    assert summary["world_size"] == 2 and summary["n_train"] == N_TRAIN and summary["epochs"] == 3
    assert "error" not in proc.stderr
    two_rows = read_metrics(d / "two")
    assert_metrics_match(two_rows, one.history, N_TRAIN, N_TEST)
    assert [r["epoch"] for r in two_rows if "theorem2" in r] == [0, 3]   # monitors on rank 0
    # rank 0 alone wrote, atomically: one complete checkpoint per epoch, no temporary files
    assert [p.name for p in list_checkpoints(d / "two")] == [f"epoch-000{e}.safetensors" for e in range(4)]
    assert not [p for p in (d / "two").rglob("*") if p.name.endswith(".tmp")]
    ck2, ck1 = read_checkpoint(d / "two"), read_checkpoint(d / "one")
    assert ck2.step == ck1.step == 3 * STEPS
    for k, v in ck1.model.state_dict().items():
        assert torch.allclose(ck2.model.state_dict()[k], v, rtol=1e-4, atol=1e-6), k
    # the generator (permutation + augmentation) state is that of a single process
    assert torch.equal(ck2.rng_state["generator_cpu"], ck1.rng_state["generator_cpu"])


@needs_gloo
def test_check_works_on_a_distributed_run(runs):
    from margin_theory.check import check_checkpoints

    d, _, _ = runs
    a, b = check_checkpoints([d / "two"], subset=64), check_checkpoints([d / "one"], subset=64)
    assert not a.errors and len(a.checkpoints) == 4
    for x, y in zip(a.checkpoints, b.checkpoints):
        assert x["epoch"] == y["epoch"]
        assert _close(x["gamma_bar_train"], y["gamma_bar_train"]) and _close(x["velocity"], y["velocity"], 1e-3)
        assert x["theorem_applies"] == y["theorem_applies"]


@needs_gloo
def test_resume_with_another_world_size(runs, tmp_path):
    d, _, _ = runs
    straight = train(TrainConfig(**{**RUN, "epochs": 5}, out=str(tmp_path / "straight")), log=None)
    # a 2-process checkpoint continued by 1 process
    shutil.copytree(d / "two", tmp_path / "two")
    cont1 = train(TrainConfig(**{**RUN, "epochs": 5}, out=str(tmp_path / "two"), resume=True), log=None)
    assert cont1.final["resumed_from_epoch"] == 3 and cont1.final["world_size"] == 1
    assert_metrics_match(read_metrics(tmp_path / "two"), straight.history, N_TRAIN, N_TEST)
    # a 1-process checkpoint continued by 2 processes
    shutil.copytree(d / "one", tmp_path / "one")
    proc = _launch(_argv(out=tmp_path / "one", epochs=5) + ["--resume", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["resumed_from_epoch"] == 3
    assert_metrics_match(read_metrics(tmp_path / "one"), straight.history, N_TRAIN, N_TEST)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(read_checkpoint(tmp_path / "one").model.state_dict()[k], v, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# a rank that dies
# ---------------------------------------------------------------------------
def _rank_pid(parent_cmd_marker: str, rank: int) -> int | None:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if parent_cmd_marker not in cmd or "torch.distributed.run" in cmd:
                continue
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(p.name)
    return None


@needs_gloo
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finding a rank's process needs Linux /proc")
def test_killed_rank_ends_the_run_cleanly(tmp_path):
    out = tmp_path / "killed"
    marker = str(out)                               # unique in the workers' command lines
    argv = _argv(out=out, epochs=2000, monitor_every=0, augment=False, margin_reg=0.0)
    proc = subprocess.Popen(_torchrun(argv), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "epoch-0003.json").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not reach epoch 3"
            time.sleep(0.05)
        pid = _rank_pid(marker, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)                # mid-run: rank 0 is inside an epoch or a write
        t_kill = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert time.monotonic() - t_kill < 90           # bounded: no hang on a dead peer
    ours = [line for line in err.splitlines() if line.startswith("python -m margin_theory.train: error:")]
    assert len(ours) == 1 and "rank 0/2" in ours[0] and "last good checkpoint kept" in ours[0], err[-3000:]
    # the last good checkpoint is intact and is the one the line names
    last = latest_checkpoint(out)
    assert last is not None and str(last) in ours[0]
    ck = read_checkpoint(last)
    assert ck.epoch >= 3 and all(torch.isfinite(v).all() for v in ck.model.state_dict().values())
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(len(rows))) and rows[-1]["epoch"] >= ck.epoch


def test_guard_turns_failures_into_one_line():
    from margin_theory.distributed import RankFailedError

    ctx = _ctx(2, 1)
    with pytest.raises(RankFailedError) as info:
        with ctx.guard("training epoch 3"):
            raise RuntimeError("[pair.cc:545] Read error [127.0.0.1]:22221: Connection reset by peer.\nmore")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("rank 1/2: lost contact with the other ranks")
    assert "while training epoch 3" in msg and "Connection reset by peer" in msg
    with pytest.raises(RankFailedError, match=r"rank 1/2: failed while evaluating: ValueError: boom"):
        with ctx.guard("evaluating"):
            raise ValueError("boom")
    with pytest.raises(ConfigError, match="bad input"):       # toolkit errors pass through unchanged
        with ctx.guard("evaluating"):
            raise ConfigError("bad input")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="needs POSIX signals")
def test_termination_signal_waits_for_a_write_to_finish():
    from margin_theory.distributed import RankFailedError

    ctx = _ctx(2, 0)
    ctx.install_signal_handler()
    try:
        ctx.epoch = 5
        done = []
        with pytest.raises(RankFailedError, match="rank 0/2: stopped by SIGTERM in epoch 5"):
            with ctx.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):         # the handler runs between bytecodes: it must only take note
                    pass
                done.append("write finished")
        assert done == ["write finished"]
        with pytest.raises(RankFailedError, match="stopped by SIGTERM"):   # outside a write: at once
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    finally:
        ctx.close()
    assert signal.getsignal(signal.SIGTERM) != ctx._on_signal
