"""Tests of the experiment runner (margin_theory.experiment): every paper result end to end
at the tiny scale, the output structure, skipping absent data, and bad input (exit 2, one line)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from margin_theory import experiment as ex

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL = ["fig1-fmnist", "fig2-eigen", "fig3-ranks", "fig5-margin", "fig6-margin-reg", "maxmargin", "small-data",
       "table2", "table3-cifar", "xor"]
#: the paper's Table 2 numbers, verbatim from SPEC section 7
TABLE2_PAPER = ["89.8 +- 0.5", "93.1 +- 0.4", "98.0 +- 0.1"]
RESULT_KEYS = {"experiment", "title", "reproduces", "paper_source", "definition", "scale", "seeds", "device",
               "data_dir", "out", "parts", "skipped", "notes", "runs", "analysis", "figures", "wall_time_s",
               "started", "finished"}
RUN_KEYS = {"label", "part", "model", "paper", "settings", "epochs", "parameters", "test_acc_mean", "test_acc_std",
            "n_ok", "n_seeds", "normalisation", "degree", "wall_s", "train_s", "per_seed"}


@pytest.fixture
def empty_dir(tmp_path) -> Path:
    d = tmp_path / "empty-data"
    d.mkdir()
    return d


def run(argv, capsys):
    """main(argv) in process -> (exit code, stdout, stderr)."""
    code = ex.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def check_outputs(out: Path, name: str, scale: str = "tiny") -> dict:
    """The documented structure of an experiment's output folder; returns results.json."""
    res = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(res), RESULT_KEYS - set(res)
    assert res["experiment"] == name and res["scale"] == scale
    for r in res["runs"]:
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["n_seeds"] == len(r["per_seed"]) >= 1
        for s in r["per_seed"]:
            assert s["status"] in ("ok", "diverged")
            if s["status"] == "ok":
                assert 0.0 <= s["test_acc"] <= 1.0
                assert s["history"][0]["epoch"] == 0 and s["history"][-1]["epoch"] == r["epochs"]
        if r["n_ok"]:
            assert 0.0 <= r["test_acc_mean"] <= 1.0
    md = (out / "results.md").read_text()
    assert md.startswith(f"# {name}: ")
    assert f"scale: **{scale}**" in md and "wall time" in md and "training time" in md and "seeds:" in md
    if res["runs"]:
        for r in res["runs"]:       # each run's row: its label, the paper's number, final and best accuracy
            row = next(line for line in md.splitlines() if line.startswith(f"| {r['part']} | {r['label'].replace('|', chr(92) + '|')} |"))
            assert r["paper"].replace("|", "\\|") in row
            if r["n_ok"]:
                assert f"{100 * r['test_acc_mean']:.2f}" in row and f"{100 * r['best_test_acc_mean']:.2f}" in row
    assert res["figures"], "every experiment writes at least one figure"
    for f in res["figures"]:
        assert (out / f).read_bytes()[:8] == PNG_MAGIC, f
    return res


def run_tiny(name: str, out: Path, capsys, *extra) -> dict:
    """``name --scale tiny [extra] --out OUT`` in process: exit 0 and the documented outputs; results.json."""
    code, _, _ = run([name, "--scale", "tiny", *extra, "--out", out], capsys)
    assert code == 0
    return check_outputs(out, name)


# ---------------------------------------------------------------------------
# Definitions
# ---------------------------------------------------------------------------
def test_every_definition_loads_and_is_listed(capsys):
    names = [e["name"] for e in ex.list_experiments()]
    assert names == ALL
    for n in ALL:
        spec = ex.load_definition(n)
        assert spec["name"] == n and spec["title"] and spec["reproduces"] and spec["paper_source"]
        for scale in ("tiny", "smoke"):       # every run resolves to a valid TrainConfig
            plan = ex.plan_experiment(spec, scale, data_dir=str(REPO / "nonexistent"))
            assert plan.seeds and (plan.runs or plan.skipped or n in ("xor", "maxmargin"))
    code, out, err = run(["--list"], capsys)
    assert code == 0 and all(n in out for n in ALL)
    code, out, _ = run(["--list", "--json"], capsys)
    assert code == 0 and [e["name"] for e in json.loads(out)["experiments"]] == ALL


def test_paper_numbers_are_verbatim_from_spec():
    spec = tomllib.loads((REPO / "experiments" / "table2.toml").read_text())
    paper = {r["label"]: r["paper"] for r in spec["runs"]}
    assert [paper["linear"], paper["relu2"], paper["quadratic"]] == TABLE2_PAPER
    spec_text = (REPO.parent / "shared" / "SPEC.md")
    if spec_text.is_file():
        t = " ".join(spec_text.read_text().split())
        assert "linear 89.8 +- 0.5, relu2 93.1 +- 0.4, quadratic 98.0 +- 0.1" in t
    t3 = tomllib.loads((REPO / "experiments" / "table3-cifar.toml").read_text())
    assert {r["paper"] for r in t3["runs"]} == {"not recoverable from the text"}
    sd = tomllib.loads((REPO / "experiments" / "small-data.toml").read_text())
    assert {r["paper"] for r in sd["runs"]} == {"not stated"}


def test_settings_merge_order():
    spec = ex.load_definition("fig3-ranks")
    plan = ex.plan_experiment(spec, "paper", data_dir=str(REPO.parent / "shared" / "data"), parts=["mnist"]) \
        if (REPO.parent / "shared" / "data" / "MNIST" / "raw").is_dir() else None
    tiny = ex.plan_experiment(spec, "tiny", data_dir=None, parts=["mnist"])
    relu = next(r for r in tiny.runs if r.label == "relu2")
    assert relu.settings["hidden"] == 64 and relu.settings["epochs"] == 1      # override.tiny, scales.tiny.train
    lin = next(r for r in tiny.runs if r.label == "linear")
    assert "hidden" not in lin.settings and lin.settings["lr"] == 0.01
    if plan is not None:
        assert all(r.settings["epochs"] == 10 for r in plan.runs)
        assert next(r for r in plan.runs if r.label == "relu2").settings.get("hidden") is None


# ---------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["no-such-experiment", "--scale", "tiny"],
    ["table2", "--scale", "huge"],
    ["table2"],
    ["table2", "--scale", "tiny", "--seeds", "0"],
    ["table2", "--scale", "tiny", "--parts", "cifar"],
    ["table2", "--scale", "tiny", "--device", "tpu"],
    ["table2", "--scale", "tiny", "--data-dir", "/nonexistent/folder"],
    ["table2", "--scale", "tiny", "--experiments-dir", "/nonexistent/folder"],
])
def test_bad_input_exits_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc_info:  # argparse errors exit from inside main
        raise SystemExit(ex.main(argv))
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err, err


def test_paper_scale_without_data_exits_2(empty_dir, capsys, tmp_path):
    code, out, err = run(["table2", "--scale", "paper", "--data-dir", empty_dir, "--out", tmp_path / "o"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "mnist" in err and "download" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_bad_definition_is_one_line(tmp_path, capsys):
    d = tmp_path / "defs"
    d.mkdir()
    text = (REPO / "experiments" / "table2.toml").read_text()
    (d / "table2.toml").write_text(text.replace("\n[train]", "\n[train]\nlearning_rate = 3", 1))
    code, _, err = run(["table2", "--scale", "tiny", "--experiments-dir", d], capsys)
    assert code == 2 and err.count("\n") == 1 and "learning_rate" in err
    (d / "table2.toml").write_text(text.replace("\n[train]", "\n[train]\nlr = -1.0", 1))   # overrides the recipe
    code, _, err = run(["table2", "--scale", "tiny", "--experiments-dir", d], capsys)
    assert code == 2 and err.count("\n") == 1 and "lr" in err


@pytest.mark.parametrize("name, old, new, needle", [
    ("xor", "\n[xor]\n", "\n[xor]\ntmax = 5\n", "[xor] has unknown key(s) tmax"),          # a misspelt setting
    ("xor", "\n[xor]\n", '\n[xor]\nt_max = "big"\n', "[xor] t_max must be numbers"),
    ("xor", "xor = { t_max = 1e3,", 'xor = { t_max = "x",', "[scales.tiny.xor] t_max must be numbers"),
    ("fig2-eigen", 'run = "quadratic"', 'run = "typo"', "[eigen] run = 'typo' is not a run label"),
    ("maxmargin", "\n[maxmargin]\n", "\n[maxmargin]\nstep = 3\n", "[maxmargin] has unknown key(s) step"),
    ("table2", "[[claims]]", '[[claims]]\npart = "mnist"\norder = [["a"], "b"]\n[[claims]]', "[[claims]] #1 needs"),
])
def test_bad_analysis_table_is_one_line_before_any_training(tmp_path, capsys, name, old, new, needle):
    d = tmp_path / "defs"
    d.mkdir()
    text = (REPO / "experiments" / f"{name}.toml").read_text()
    assert old in text
    (d / f"{name}.toml").write_text(text.replace(old, new, 1))
    code, out, err = run([name, "--scale", "tiny", "--experiments-dir", d, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err and not (tmp_path / "o").exists()


def test_cli_subprocess_exit_code():
    p = subprocess.run([sys.executable, "-m", "margin_theory.experiment", "nope", "--scale", "tiny"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "unknown experiment 'nope'" in p.stderr


# ---------------------------------------------------------------------------
# Every experiment end to end at the tiny scale
# ---------------------------------------------------------------------------
def test_table2_tiny(tmp_path, empty_dir, capsys):
    out = tmp_path / "table2"
    code, stdout, _ = run(["table2", "--scale", "tiny", "--data-dir", empty_dir, "--out", out], capsys)
    assert code == 0
    res = check_outputs(out, "table2")
    md = (out / "results.md").read_text()
    for number in TABLE2_PAPER:
        assert number in md and number in stdout
    assert [r["label"] for r in res["runs"]] == ["linear", "relu2", "quadratic", "lowrank r=1"]
    assert res["parts"]["mnist"]["dataset"] == "mnist-5k" and res["parts"]["mnist"]["n_train"] == 300
    params = {r["label"]: r["parameters"] for r in res["runs"]}
    assert params["linear"] == params["lowrank r=1"] == 7840 and params["quadratic"] == 6_146_560
    assert not res["skipped"]


def test_fig1_fmnist_skips_cleanly_without_data(tmp_path, empty_dir, capsys):
    out = tmp_path / "fig1"
    code, stdout, err = run(["fig1-fmnist", "--scale", "tiny", "--data-dir", empty_dir, "--out", out, "--json"],
                            capsys)
    assert code == 0
    res = json.loads(stdout)                   # --json: exactly one JSON document on stdout
    assert res["runs"] == [] and res["skipped"][0]["part"] == "fmnist"
    assert "fashion-mnist" in res["skipped"][0]["reason"] and "download" in res["skipped"][0]["reason"]
    md = (out / "results.md").read_text()
    assert "## Skipped" in md and "margin_theory.data download fashion-mnist" in md


def test_fig1_fmnist_tiny_with_data(tmp_path, shared_data_dir, capsys):
    if not (shared_data_dir / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST not in the shared data")
    out = tmp_path / "fig1"
    res = run_tiny("fig1-fmnist", out, capsys, "--data-dir", shared_data_dir)
    assert [r["model"] for r in res["runs"]] == ["conv-linear", "conv-lowrank", "conv-quadratic"]
    # every run states its margin normalisation, and it is the model's own (SPEC section 2)
    from margin_theory.models import build_model
    for r in res["runs"]:
        m = build_model(r["model"], (1, 28, 28), 10, rank=r["settings"].get("rank", 1), conv_bias=True)
        assert r["normalisation"] == ("full" if m.degree is not None else "head")
        assert r["degree"] == (m.degree if m.degree is not None else m.head_degree)


def test_fig2_eigen_tiny(tmp_path, empty_dir, capsys):
    out = tmp_path / "fig2"
    res = run_tiny("fig2-eigen", out, capsys, "--data-dir", empty_dir)
    e = res["analysis"]["eigen"]
    assert len(e["per_class"]) == 10 and "softmax" in e["sta_definition"]
    for c in e["per_class"]:
        assert 0.0 <= c["cos_sta"] <= 1.0 + 1e-12 and c["n_positive"] + c["n_negative"] <= 784
    ks = [t["k"] for t in e["topk"]]
    assert ks[0] == 1 and ks[-1] == 784 and ks == sorted(ks)
    # keeping every eigenpair reproduces the trained model exactly
    assert math.isclose(e["topk"][-1]["test_acc"], e["summary"]["full_test_acc"], abs_tol=1e-9)
    assert math.isclose(e["summary"]["full_test_acc"], res["runs"][0]["test_acc_mean"], abs_tol=1e-9)
    assert {"eigenvectors_sta.png", "eigen_topk.png"} <= set(res["figures"])
    assert "STA_i = sum_n p_i(x_n) x_n" in (out / "results.md").read_text()


def test_eigen_report_delta_model_drops_the_linear_term():
    """Fig. 2's top-k accuracies: with the authors' linear term, the trained model keeps it and the
    Delta W model (drop_linear) is x -> x^T W x alone, both against a direct einsum."""
    import torch

    from margin_theory.models import build_model

    torch.manual_seed(0)
    d, C, N = 6, 3, 200
    model = build_model("quadratic", (d,), C, linear_term=True, init="authors").double().eval()
    with torch.no_grad():
        model.head.linear.mul_(50.0)            # a linear term large enough to change predictions
    X, y = torch.randn(N, d, dtype=torch.float64), torch.randint(0, C, (N,))
    W = torch.randn(C, d, d, dtype=torch.float64)
    W = (W + W.transpose(1, 2)) / 2
    quad = torch.einsum("ni,cij,nj->nc", X, W, X)
    with_lin = (quad + X @ model.head.linear.detach().T) / 2
    acc = {k: float((f.argmax(1) == y).double().mean()) for k, f in (("alone", quad), ("lin", with_lin))}
    assert acc["alone"] != acc["lin"]
    sta, xbar = torch.zeros(C, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for drop, want in ((True, acc["alone"]), (False, acc["lin"])):
        _, _, rep = ex._eigen_report(model, W, sta, xbar, ["a", "b", "c"], [d], X, y, drop_linear=drop)
        assert math.isclose(rep["summary"]["full_test_acc"], want, abs_tol=1e-12)


def test_fig3_ranks_tiny(tmp_path, empty_dir, capsys):
    out = tmp_path / "fig3"
    res = run_tiny("fig3-ranks", out, capsys, "--data-dir", empty_dir)
    assert [s["part"] for s in res["skipped"]] == ["fmnist"]          # no Fashion-MNIST files: skipped
    info = res["analysis"]["ranks"]["parts"]["mnist"]
    assert info["ranks"] == [1, 2, 4, 8, 16, 32]
    assert set(info["checks"]) == {"rank 1 > linear", "rank 1 > relu2", "accuracy rises with rank"}
    assert "rank_accuracy.png" in res["figures"]


def test_table3_cifar_tiny(tmp_path, empty_dir, shared_data_dir, capsys):
    out = tmp_path / "t3-empty"
    code, _, _ = run(["table3-cifar", "--scale", "tiny", "--data-dir", empty_dir, "--out", out], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["runs"] == [] and "cifar10-subset" in res["skipped"][0]["reason"]
    if not (shared_data_dir / "cifar-10-subset").is_dir():
        pytest.skip("CIFAR-10 subset not in the shared data")
    out = tmp_path / "t3"
    res = run_tiny("table3-cifar", out, capsys, "--data-dir", shared_data_dir)
    assert res["parts"]["cifar"]["dataset"] == "cifar10-subset"
    assert [r["model"] for r in res["runs"]] == ["resnet10-linear", "resnet10-lowrank"]
    assert res["runs"][0]["settings"]["augment"] and res["runs"][0]["settings"]["normalize"]
    assert "not recoverable from the text" in (out / "results.md").read_text()


def test_fig5_margin_tiny(tmp_path, empty_dir, capsys):
    out = tmp_path / "fig5"
    res = run_tiny("fig5-margin", out, capsys, "--data-dir", empty_dir)
    assert {s["part"] for s in res["skipped"]} == {"fmnist", "cifar"}
    (m,) = res["analysis"]["margin"]["runs"]
    s = m["seeds"][0]
    hist = res["runs"][0]["per_seed"][0]["history"]

    def ranks(v):   # average ranks (ties share), written here independently of scipy
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r

    acc = [h["test_acc"] for h in hist]
    for key in ("gamma_bar", "gamma_min", "gamma_output", "gamma_smoothed"):   # every definition, every epoch
        vals = [h[key] for h in hist]
        assert all(isinstance(v, float) for v in vals), key
        want = np.corrcoef(ranks(vals), ranks(acc))[0, 1]
        got = s["definitions"][key]["spearman_rho"]
        assert (np.isnan(want) and np.isnan(got)) or abs(got - want) < 1e-9, key
    assert abs(s["spearman_rho"] - s["definitions"]["gamma_bar"]["spearman_rho"]) < 1e-12
    assert s["normalisation"] == "full" and s["degree"] == 2                # lowrank: homogeneous, L = 2
    assert s["monitor_epochs"] == 3                                          # epochs 0, 1, 2 (monitor_every 1)
    for mon in s["monitors"]:
        assert mon["theorem_applies"] == (mon["A1"] and mon["A2"] and mon["A3"])
    md = (out / "results.md").read_text()
    assert "Spearman" in md and "sufficient, not necessary" in md and "gamma_output" in md


def test_fig6_margin_reg_tiny(tmp_path, empty_dir, capsys):
    out = tmp_path / "fig6"
    res = run_tiny("fig6-margin-reg", out, capsys, "--data-dir", empty_dir)
    info = res["analysis"]["reach"]["parts"]["mnist"]
    assert [r["margin_reg"] for r in info["runs"]] == [0.0, 0.1, 1.0]
    assert info["targets"] == [0.2, 0.3]
    for r in info["runs"]:
        assert set(r["reach_epochs"]) == {"0.2", "0.3"}
        for reach in r["reach_epochs"]["0.2"]:
            assert reach is None or 0 <= reach <= 1
    hist = res["runs"][0]["per_seed"][0]["history"]
    expect = next((h["epoch"] for h in hist if h["test_acc"] >= 0.2), None)
    assert info["runs"][0]["reach_epochs"]["0.2"] == [expect]
    assert any(k.startswith("lambda=0.1 vs lambda=0, target 20%") for k in info["checks"])
    assert "first reaches each target" in (out / "results.md").read_text()


def test_small_data_tiny_and_cache(tmp_path, capsys):
    out, cache = tmp_path / "sd", tmp_path / "cache"
    res = run_tiny("small-data", out, capsys, "--seeds", "1", "--cache-dir", cache)
    assert {r["part"] for r in res["runs"]} == {"iris", "wine", "breast_cancer", "digits"}
    assert "not stated" in (out / "results.md").read_text()
    # a second run loads every model from the cache and gets the same numbers
    code, _, _ = run(["small-data", "--scale", "tiny", "--seeds", "1", "--parts", "iris", "--out",
                      tmp_path / "sd2", "--cache-dir", cache], capsys)
    assert code == 0
    res2 = json.loads((tmp_path / "sd2" / "results.json").read_text())
    assert all(s["cached"] for r in res2["runs"] for s in r["per_seed"])
    first = {(r["part"], r["label"]): r["test_acc_mean"] for r in res["runs"]}
    for r in res2["runs"]:
        assert r["test_acc_mean"] == first[(r["part"], r["label"])]


def test_xor_tiny(tmp_path, capsys):
    out = tmp_path / "xor"
    res = run_tiny("xor", out, capsys)
    x = res["analysis"]["xor"]
    assert len(x["starts"]) == 3 and x["all_monotone"]
    for s in x["starts"]:
        assert s["gamma_bar_final"] > s["gamma_bar_initial"] and s["gamma_bar_final"] <= 1.0
        assert max(s["invariant_drift"]) < 1e-6
    assert {"xor_flow_seed0.png", "xor_gd_seed0.png", "xor_margins.png"} <= set(res["figures"])


def test_ranks_analysis_takes_two_runs_of_one_rank(tmp_path, capsys):
    """Two Low-Rank runs of the same rank (e.g. two learning rates) are both kept by the
    ranks analysis (sorting (rank, result) pairs used to compare the result dicts and crash)."""
    d = tmp_path / "defs"
    d.mkdir()
    (d / "ranks2.toml").write_text('''name = "ranks2"
title = "two runs of rank 1"
reproduces = "-"
analysis = ["accuracy", "ranks"]
paper_source = "-"
[train]
recipe = "mnist-sgd"
[[runs]]
label = "linear"
part = "mnist"
model = "linear"
[[runs]]
label = "relu2"
part = "mnist"
model = "relu2"
hidden = 16
[[runs]]
label = "lowrank r=1"
part = "mnist"
model = "lowrank"
[[runs]]
label = "lowrank r=1 lr 0.02"
part = "mnist"
model = "lowrank"
lr = 0.02
[[runs]]
label = "lowrank r=2"
part = "mnist"
model = "lowrank"
rank = 2
[ranks]
paper_claims = []
[parts.mnist.tiny]
dataset = "mnist-5k"
n_train = 200
n_test = 100
[scales.tiny]
seeds = 1
train = { epochs = 1 }
''')
    out = tmp_path / "o"
    code = ex.main(["ranks2", "--scale", "tiny", "--experiments-dir", str(d), "--out", str(out), "--quiet",
                    "--data-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["analysis"]["ranks"]["parts"]["mnist"]["ranks"]) == [1, 1, 2]
