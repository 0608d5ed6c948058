"""Tests of ``python -m margin_theory.check``: Theorem 2 on saved checkpoints (SPEC §5)."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from margin_theory import check
from margin_theory.assumptions import Theorem2Report, theorem2_report
from margin_theory.checkpoint import list_checkpoints
from margin_theory.train import TrainConfig, read_metrics, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small real run: lowrank rank 2 on digits (300 training points), 3 epochs, a
    checkpoint every epoch (epochs 0..3)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    train(TrainConfig(dataset="digits", model="lowrank", rank=2, epochs=3, lr=0.1, n_train=300, n_test=100,
                      out=str(out), checkpoint_every=1, quiet=True), progress=False, log=None)
    assert len(list_checkpoints(out)) == 4
    return out


def run(argv, capsys):
    rc = check.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_structure(run_dir, capsys):
    rc, out, err = run([run_dir, "--json", "--subset", "64"], capsys)
    assert rc == 0 and err == ""
    doc = json.loads(out)
    assert set(doc) >= {"checkpoints", "transitions", "errors"} and doc["errors"] == []
    cks = doc["checkpoints"]
    assert [c["epoch"] for c in cks] == [0, 1, 2, 3]
    for c in cks:
        for f in dataclasses.fields(Theorem2Report):     # every monitor field, picked up by iteration
            assert f.name == "extra" or f.name in c, f.name
        assert c["normalisation"] == "full" and c["degree"] == 2
        assert isinstance(c["A1"], bool) and isinstance(c["theorem_applies"], bool)
        assert c["theorem_applies"] == (c["A1"] and c["A2"] and c["A3"])
        assert c["n_subset"] == 64 and c["n_train"] == 300
        assert c["verdict"] in ("grows", "no-claim")
        assert c["lower_bound"] <= c["velocity"] + 1e-9 * abs(c["velocity"])
    trs = doc["transitions"]
    assert [(t["from"], t["to"]) for t in trs] == [(0, 1), (1, 2), (2, 3)]
    assert trs == check.transitions(cks)          # the rule itself is pinned in test_transition_rule
    # the whole-training-set margins match the trainer's own per-epoch record
    metrics = {r["epoch"]: r for r in read_metrics(run_dir)}
    for c in cks:
        assert c["gamma_bar_train"] == pytest.approx(metrics[c["epoch"]]["gamma_bar"], rel=1e-4, abs=1e-7)
        assert c["test_acc"] == pytest.approx(metrics[c["epoch"]]["test_acc"])
    assert doc["summary"]["checkpoints"] == 4


def test_transition_rule():
    """Hand-made checkpoints, hand-written expectations: a '+' prediction (A1-A3 held at the
    earlier checkpoint) agrees iff gamma_bar rose; without it there is no claim (None); the
    velocity's sign is compared either way, a zero velocity makes no claim."""
    def row(epoch, g, applies, velocity):
        return {"epoch": epoch, "gamma_bar_train": g, "theorem_applies": applies, "velocity": velocity,
                "path": f"e{epoch}", "run": "r"}
    rows = [row(0, 0.10, True, 0.5), row(1, 0.30, True, -0.2), row(2, 0.25, False, 0.0), row(3, 0.20, True, 1.0)]
    got = [(t["from"], t["to"], t["predicted_sign"], t["agrees"], t["velocity_sign"], t["velocity_agrees"])
           for t in check.transitions(rows)]
    assert got == [(0, 1, "+", True, "+", True),      # rose, as predicted and as the velocity says
                   (1, 2, "+", False, "-", True),     # fell: the prediction fails, the velocity was right
                   (2, 3, "?", None, "0", None)]      # no claim either way
    assert [round(t["delta_gamma_bar"], 12) for t in check.transitions(rows)] == [0.2, -0.05, -0.05]
    assert check.transitions(rows[:1]) == []


def test_matches_theorem2_report_on_rebuilt_data(run_dir, capsys):
    """The checker rebuilds exactly the run's data (the trainer's loader) and subset."""
    from margin_theory.checkpoint import read_checkpoint

    rc, out, _ = run([run_dir / "checkpoints" / "epoch-0002.json", "--json", "--subset", "50", "--seed", "7"], capsys)
    assert rc == 0
    row = json.loads(out)["checkpoints"][0]
    ck = read_checkpoint(run_dir / "checkpoints" / "epoch-0002.safetensors")
    ds = check._load_training_data(ck.config, None)
    assert ds.y_train.shape[0] == 300
    rep = theorem2_report(ck.model, ds.X_train, ds.y_train, subset=50, seed=7)
    assert row["subset_seed"] == 7 and row["epoch"] == 2
    for k in ("gamma_bar", "rho", "cv", "eps", "velocity", "lower_bound", "sigma_max", "B"):
        assert row[k] == pytest.approx(getattr(rep, k), rel=1e-12), k


def test_human_table(run_dir, capsys):
    rc, out, err = run([run_dir, "--subset", "64"], capsys)
    assert rc == 0 and err == ""
    assert "epoch" in out and "verdict" in out and "transitions" in out
    assert "sufficient, not necessary" in out
    assert "normalisation full (L = 2)" in out and "subset of 64 of 300" in out
    assert out.count("\n    0  ") + out.count("\n    3  ") == 2


def _broken_copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    ck = dest / "checkpoints"
    # epoch 1: truncated tensor file
    data = (ck / "epoch-0001.safetensors").read_bytes()
    (ck / "epoch-0001.safetensors").write_bytes(data[: len(data) // 2])
    # epoch 2: a foreign JSON sidecar
    (ck / "epoch-0002.json").write_text(json.dumps({"format": "someone-else", "weights": [1, 2, 3]}))
    # epoch 3: a configuration that names an unknown model
    meta = json.loads((ck / "epoch-0003.json").read_text())
    meta["model_args"]["name"] = "transformer9000"
    meta["config"]["model"] = "transformer9000"
    (ck / "epoch-0003.json").write_text(json.dumps(meta))
    return dest


def test_broken_checkpoints_exit_2_and_others_still_reported(run_dir, tmp_path, capsys):
    bad = _broken_copy(run_dir, tmp_path / "broken")
    missing = tmp_path / "nope" / "epoch-0009.safetensors"
    rc, out, err = run([bad, missing, "--json", "--subset", "32"], capsys)
    assert rc == 2
    doc = json.loads(out)
    assert [c["epoch"] for c in doc["checkpoints"]] == [0]          # the good one is still reported
    assert doc["transitions"] == []
    lines = err.strip().splitlines()
    assert len(lines) == 4 == len(doc["errors"])
    assert all(line.startswith("python -m margin_theory.check: error: ") for line in lines)
    assert "Traceback" not in err
    joined = "\n".join(lines)
    assert "epoch-0001" in joined and ("truncated" in joined or "corrupt" in joined)
    assert "epoch-0002" in joined and "not a margin_theory checkpoint" in joined
    assert "epoch-0003" in joined and "transformer9000" in joined
    assert "epoch-0009" in joined and ("not found" in joined or "missing" in joined)


def test_incomplete_pair_and_empty_folder_are_errors(run_dir, tmp_path, capsys):
    d = tmp_path / "partial"
    shutil.copytree(run_dir, d)
    (d / "checkpoints" / "epoch-0003.json").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = run([d, empty, "--json", "--subset", "32"], capsys)
    assert rc == 2
    doc = json.loads(out)
    assert [c["epoch"] for c in doc["checkpoints"]] == [0, 1, 2] and len(doc["transitions"]) == 2
    assert "incomplete checkpoint" in err and "no checkpoint in" in err


def test_folder_with_only_an_incomplete_pair_gets_one_error(run_dir, tmp_path, capsys):
    d = tmp_path / "only-partial"
    shutil.copytree(run_dir, d)
    ck = d / "checkpoints"
    for f in ck.glob("epoch-*"):
        if not f.name.startswith("epoch-0001"):
            f.unlink()
    (ck / "epoch-0001.json").unlink()          # a lone tensor file: incomplete, and nothing else
    rc, out, err = run([d, "--json", "--subset", "32"], capsys)
    assert rc == 2
    doc = json.loads(out)
    assert doc["checkpoints"] == [] and len(doc["errors"]) == 1      # not also "no checkpoint in"
    assert "incomplete checkpoint" in doc["errors"][0]["error"] and "no checkpoint in" not in err


def test_plot_writes_png(run_dir, tmp_path, capsys):
    png = tmp_path / "fig" / "check.png"
    rc, out, err = run([run_dir, "--subset", "32", "--plot", "--out", png], capsys)
    assert rc == 0 and png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert str(png) in out


def test_plot_from_checkpoints_without_metrics(run_dir, tmp_path, capsys):
    d = tmp_path / "nometrics"
    shutil.copytree(run_dir, d)
    (d / "metrics.jsonl").unlink()
    png = tmp_path / "c.png"
    rc, _, _ = run([d, "--subset", "32", "--plot", "--out", png, "--json"], capsys)
    assert rc == 0 and png.is_file() and png.stat().st_size > 5000


def test_cli_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        check.main(["--subset", "0", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    rc, _, err = run([tmp_path, "--out", tmp_path / "x.png"], capsys)
    assert rc == 2 and "--out applies to --plot" in err


def test_console_script_dispatch(run_dir, capsys):
    from margin_theory import cli

    rc = cli.main(["check", str(run_dir / "checkpoints" / "epoch-0000.safetensors"), "--json", "--subset", "16"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(doc["checkpoints"]) == 1 and doc["transitions"] == []


def test_trainer_monitor_uses_theorem2_report(tmp_path):
    res = train(TrainConfig(dataset="iris", model="lowrank", rank=1, epochs=2, lr=0.1, monitor_every=1,
                            monitor_subset=40, quiet=True), progress=False, log=None)
    for row in res.history:
        t2 = row["theorem2"]
        assert t2["n_subset"] == 40 and t2["normalisation"] == "full" and t2["degree"] == 2
        assert isinstance(t2["theorem_applies"], bool) and "note" in t2
        assert t2["lower_bound"] <= t2["velocity"] + 1e-9 * abs(t2["velocity"])
        json.dumps(t2, allow_nan=False)
    assert not math.isnan(res.history[-1]["theorem2"]["velocity"])


def test_theorem_applies_on_xor_and_predictions_agree(tmp_path, capsys):
    """XOR with a rank-1 Low-Rank DIQNN (two classes, eps = 0): A1-A3 hold early in
    training, so the checker predicts '+' and the measured gamma_bar indeed grows."""
    out = tmp_path / "xor"
    train(TrainConfig(dataset="xor", model="lowrank", rank=1, epochs=3, lr=0.1, batch_size=4, out=str(out),
                      checkpoint_every=1, quiet=True), progress=False, log=None)
    rc, text, _ = run([out, "--json"], capsys)
    doc = json.loads(text)
    assert rc == 0 and len(doc["checkpoints"]) == 4
    assert all(c["theorem_applies"] and c["verdict"] == "grows" and c["eps"] == 0.0 for c in doc["checkpoints"])
    assert all(c["lower_bound"] > 0 for c in doc["checkpoints"])
    assert [t["predicted_sign"] for t in doc["transitions"]] == ["+"] * 3
    assert all(t["agrees"] is True and t["delta_gamma_bar"] > 0 for t in doc["transitions"])
    assert doc["summary"]["agreements"] == 3 and doc["summary"]["disagreements"] == 0


def test_plot_beside_a_foreign_file(run_dir, tmp_path, capsys):
    """--plot without --out goes into the run folder, never beside (or into) a foreign file; with
    foreign files only there is no folder to choose: a one-line error before any work."""
    from margin_theory.models import build_model

    f = tmp_path / "theirs.pt"
    torch.save(build_model("lowrank", (64,), 10, rank=2).state_dict(), f)
    flags = ["--model", "lowrank", "--rank", "2", "--dataset", "digits", "--n-train", "300", "--subset", "32"]
    rc, out, err = run([f, *flags, "--plot"], capsys)
    assert rc == 2 and "--plot of foreign files only: give --out" in err and out == ""
    shutil.copytree(run_dir, tmp_path / "run")
    rc, out, err = run([f, tmp_path / "run", *flags, "--plot", "--json"], capsys)
    assert rc == 0 and json.loads(out)["plot"] == str(tmp_path / "run" / "theorem2-check.png")
    assert (tmp_path / "run" / "theorem2-check.png").stat().st_size > 10_000
