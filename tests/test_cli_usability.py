"""``train`` / ``check`` usability (issue 10, item 4): run configs store an absolute data
folder, ``check`` finds runs in a folder of runs and has ``--download``, ``train --resume``
takes the run's own settings, flags that do not apply are errors, oversize subsets a note."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_helpers import synthetic_mnist, write_idx_dir  # noqa: E402

from margin_theory import check  # noqa: E402
from margin_theory import train as T  # noqa: E402
from margin_theory._util import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
XOR = ["--dataset", "xor", "--model", "lowrank", "--lr", "0.5", "--quiet"]


def run(main, argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    write_idx_dir(tmp_path / "data" / "MNIST" / "raw", synthetic_mnist(40, 20))
    return tmp_path / "data"


def test_run_config_stores_the_absolute_data_dir_and_check_falls_back_to_data_dir(tmp_path, mnist_dir, capsys,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(T.main, ["--dataset", "mnist", "--model", "linear", "--data-dir", "data", "--epochs", "1",
                              "--out", "runs/a", "--quiet"], capsys)
    assert rc == 0, err
    cfg = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert cfg["data_dir"] == str(mnist_dir.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, err = run(check.main, [tmp_path / "runs" / "a", "--json", "--subset", "8"], capsys)
    assert rc == 0, err
    assert len(json.loads(out)["checkpoints"]) == 2
    # a run saved with a relative data folder (older runs): the error says what to pass
    for js in (tmp_path / "runs" / "a" / "checkpoints").glob("*.json"):
        meta = json.loads(js.read_text())
        meta["config"]["data_dir"] = "data"
        js.write_text(json.dumps(meta))
    rc, _, err = run(check.main, [tmp_path / "runs" / "a", "--subset", "8"], capsys)
    assert rc == 2 and "--data-dir" in err
    rc, out, err = run(check.main, [tmp_path / "runs" / "a", "--subset", "8", "--data-dir", mnist_dir, "--json"],
                       capsys)
    assert rc == 0 and len(json.loads(out)["checkpoints"]) == 2


def test_check_finds_the_runs_in_a_folder_of_runs_and_has_download(tmp_path, capsys):
    for name in ("a", "b"):
        rc, _, err = run(T.main, XOR + ["--epochs", "1", "--out", tmp_path / "runs" / "sweep" / name], capsys)
        assert rc == 0, err
    rc, out, err = run(check.main, [tmp_path / "runs", "--json", "--download"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert sorted({Path(c["run"]).name for c in doc["checkpoints"]}) == ["a", "b"]
    assert len(doc["transitions"]) == 2
    # model flags with our own checkpoints are a printed note, not silently ignored
    rc, out, err = run(check.main, [tmp_path / "runs", "--rank", "3"], capsys)
    assert rc == 0 and "note: --rank describe foreign files only" in err
    rc, _, err = run(check.main, [tmp_path / "empty-nothing"], capsys)
    assert rc == 2 and "not found" in err


def test_resume_takes_dataset_and_model_from_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(T.main, XOR + ["--rank", "2", "--epochs", "2", "--momentum", "0.5", "--out", out], capsys)
    assert rc == 0, err
    rc, stdout, err = run(T.main, ["--resume", "--out", out, "--epochs", "3", "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["epochs"] == 3 and summary["resumed_from_epoch"] == 2
    assert summary["config"]["rank"] == 2 and summary["config"]["momentum"] == 0.5
    # an explicit flag still wins, and a differing one is still refused
    rc, _, err = run(T.main, ["--resume", "--out", out, "--epochs", "4", "--lr", "0.1"], capsys)
    assert rc == 2 and "--lr" in err
    rc, _, err = run(T.main, ["--epochs", "1"], capsys)
    assert rc == 2 and "--dataset, --model" in err and "--resume" in err


@pytest.mark.parametrize("argv,match", [
    (["--model", "linear", "--rank", "2"], "--rank applies to models with lowrank layers"),
    (["--model", "quadratic", "--rank", "3"], "--rank applies"),
    (["--model", "lowrank", "--hidden", "16"], "--hidden applies to relu2 and to the deep lowrank"),
    (["--model", "relu2", "--hidden", "8,4"], "relu2 has one hidden layer"),
    (["--model", "lowrank", "--conv-channels", "2"], "--conv-channels applies to the conv"),
    (["--model", "linear", "--no-conv-bias"], "--no-conv-bias applies"),
    (["--model", "linear", "--layers", "2"], "--layers applies"),
])
def test_flags_that_do_not_apply_are_errors(argv, match, capsys):
    rc, _, err = run(T.main, ["--dataset", "xor", "--epochs", "0"] + argv, capsys)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match=match.split(" ")[0]):     # the API refuses it as well
        T.config_from_args(T.build_parser().parse_args(["--dataset", "xor"] + argv))
    # the model the flag belongs to accepts it
    assert T.TrainConfig(dataset="xor", model="lowrank", layers=3, hidden=[4, 3]).validate().hidden == [4, 3]
    assert T.TrainConfig(dataset="xor", model="conv-lowrank", rank=2, conv_channels=2).validate().rank == 2


def test_oversize_subset_is_a_printed_note(capsys):
    rc, out, err = run(T.main, ["--dataset", "xor", "--model", "lowrank", "--epochs", "0", "--n-train", "10"],
                       capsys)
    assert rc == 0, err
    assert "note: --n-train 10 exceeds the 4 points of xor; all 4 are used" in out


@pytest.mark.parametrize("flag", [["--protocol", "authors"], ["--init", "authors"], ["--linear-term"], ["--affine"]])
def test_check_refuses_train_only_model_flags(tmp_path, capsys, flag):
    """train's protocol flags do not describe a file to check: one-line error, exit 2, not ignored."""
    from margin_theory.check import main as check_main

    rc = check_main([str(tmp_path / "whatever.pt"), "--model", "lowrank", "--dataset", "digits", *flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "do not apply to check" in err[0] and flag[0] in err[0]


def test_number_helpers_of_util():
    """The one integer test, finite-number test and table-number formatter every module uses."""
    import math

    import numpy as np

    from margin_theory._util import fmt_number, is_int, is_number
    ints = [1, -3, np.int64(7), np.uint8(2)]
    not_ints = [True, 1.0, "1", np.float64(1.0), np.array([1]), None, np.bool_(True)]
    assert all(is_int(v) for v in ints) and not any(is_int(v) for v in not_ints)
    nums, not_nums = [0, 2.5, -1e300, np.float32(1.5)], [math.inf, -math.inf, math.nan, False, "2", None, 10**400]
    assert all(is_number(v) for v in nums) and not any(is_number(v) for v in not_nums)
    assert fmt_number(0.123456) == "0.1235" and fmt_number(0.123456, ".2f") == "0.12" and fmt_number(3) == "3"
    assert [fmt_number(v) for v in (None, math.nan, True, "x")] == ["n/a"] * 4
    assert fmt_number(math.inf) == "inf"
