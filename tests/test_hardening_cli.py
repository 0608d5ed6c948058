"""Hardening of CLI values (issue 14, items 13-14): absurd sizes and values are refused up
front (before any data are loaded), output locations are checked (an existing file where
a folder goes, a folder where a PNG goes, an unwritable place, the package source), and
experiment definitions of the wrong shape are one-line errors. One test per case."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import margin_theory
from _hostile import one_line_error, run_main

PKG = Path(margin_theory.__file__).resolve().parent
UNWRITABLE = Path("/sys/margin_theory-test")          # read-only even for root


def _mains():
    from margin_theory.check import main as check
    from margin_theory.experiment import main as experiment
    from margin_theory.homogeneity import main as homogeneity
    from margin_theory.plot import main as plot
    from margin_theory.train import main as train
    from margin_theory.xor_flow import main as xor

    return {"train": train, "homogeneity": homogeneity, "xor": xor, "plot": plot, "check": check,
            "experiment": experiment}


@pytest.fixture
def places(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    d = tmp_path / "a-folder"
    d.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0}\n')
    return {"FILE": f, "DIR": d, "RUN": run, "EMPTY": tmp_path / "no-data", "TMP": tmp_path}


def _fill(argv, places):
    out = []
    for a in argv:
        for k, v in places.items():
            a = a.replace(f"<{k}>", str(v))
        out.append(a.replace("<PKG>", str(PKG)).replace("<RO>", str(UNWRITABLE)))
    return out


# mnist from an empty --data-dir: the size checks must come before the data are looked for
TRAIN = ["--dataset", "mnist", "--data-dir", "<EMPTY>", "--model", "lowrank", "--quiet"]
CASES = [
    ("train", TRAIN + ["--rank", "1000000000"], "of memory"),
    ("train", TRAIN + ["--layers", "2", "--hidden", "10000000000"], "of memory"),
    ("train", ["--dataset", "mnist", "--data-dir", "<EMPTY>", "--model", "relu2", "--hidden", "10000000000",
               "--quiet"], "of memory"),
    ("train", TRAIN + ["--layers", "1100"], "overflows float64"),
    ("train", TRAIN + ["--lr", "1e308"], "float32"),
    ("train", TRAIN + ["--lr", "1e-45"], "float32"),
    ("train", TRAIN + ["--lr", "1", "--lr-milestones", "1", "--lr-gamma", "1e-300"], "of epoch 2"),
    ("train", TRAIN + ["--weight-decay", "1e300"], "float32"),
    ("train", TRAIN + ["--margin-reg", "1e300"], "float32"),
    ("train", TRAIN + ["--out", "<FILE>"], "is not a folder"),
    ("train", TRAIN + ["--out", "<FILE>/sub"], "is a file, not a folder"),
    ("train", TRAIN + ["--out", "<RO>/run"], "not writable"),
    ("train", TRAIN + ["--out", "<PKG>/runs"], "package source"),
    ("homogeneity", ["--model", "lowrank", "--rank", "1000000000"], "of memory"),
    ("homogeneity", ["--model", "relu2", "--hidden", "10000000000"], "of memory"),
    ("homogeneity", ["--model", "lowrank", "--layers", "1100"], "overflows float64"),
    ("homogeneity", ["--model", "lowrank", "--batch", "1000000000000"], "of memory"),
    ("xor", ["--init", "1e308", "1", "1", "1"], "||theta0||"),
    ("xor", ["--init", "1e-300", "0", "0", "0"], "||theta0||"),
    ("xor", ["--points", "1000000000"], "of memory"),
    ("xor", ["--plot", "--out", "<DIR>"], "is a folder"),
    ("xor", ["--plot", "--out", "<PKG>/xor.png"], "package source"),
    ("xor", ["--plot", "--out", "<RO>/xor.png"], "not writable"),
    ("xor", ["--plot", "--out", "<FILE>/xor.png"], "is a file, not a folder"),
    ("plot", ["<RUN>", "--out", "<DIR>"], "is a folder"),
    ("plot", ["<RUN>", "--out", "<PKG>/m.png"], "package source"),
    ("plot", ["<RUN>", "--out", "<RO>/m.png"], "not writable"),
    ("check", ["<RUN>", "--plot", "--out", "<DIR>"], "is a folder"),
    ("check", ["<RUN>", "--plot", "--out", "<PKG>/c.png"], "package source"),
    ("experiment", ["table2", "--scale", "tiny", "--out", "<FILE>"], "is not a folder"),
    ("experiment", ["table2", "--scale", "tiny", "--out", "<PKG>/results"], "package source"),
    ("experiment", ["table2", "--scale", "tiny", "--out", "<DIR>", "--cache-dir", "<FILE>"], "--cache-dir"),
]


@pytest.mark.parametrize("cli, argv, needle", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_cli_values_are_refused_up_front(places, capsys, cli, argv, needle):
    before = sorted(p for p in places["TMP"].rglob("*"))
    rc, out, err = run_main(_mains()[cli], _fill(argv, places), capsys)
    one_line_error(rc, err, needle)
    assert out == ""
    assert sorted(p for p in places["TMP"].rglob("*")) == before     # nothing written
    assert not (PKG / "runs").exists() and not (PKG / "results").exists()


# ---------------------------------------------------------------------------
# 14. experiment definitions of the wrong shape
# ---------------------------------------------------------------------------
BASE_DEF = '''name = "probe"
title = "probe"
analysis = ["accuracy"]
#TOP#

[train]
lr = 0.05
epochs = 1

[[runs]]
label = "lin"
part = "iris"
model = "linear"
#RUN#

[parts.iris.tiny]
dataset = "iris"
#PART#

[scales.tiny]
seeds = 1
'''

DEFS = {
    "scales-not-a-table": ({"#TOP#": "scales = 3", "[scales.tiny]\nseeds = 1\n": ""}, "[scales] must be a table"),
    "scale-not-a-table": ({"[scales.tiny]\nseeds = 1\n": "[scales]\ntiny = 5\n"}, "[scales.tiny] must be a table"),
    "scale-xor-not-a-table": ({"seeds = 1\n": "seeds = 1\nxor = 2\n"}, "[scales.tiny.xor] must be a table"),
    "runs-a-string": ({"[[runs]]\nlabel = \"lin\"\npart = \"iris\"\nmodel = \"linear\"\n#RUN#": "",
                       "#TOP#": 'runs = "all of them"'}, "runs must be a list"),
    "runs-a-table": ({"[[runs]]": "[runs]"}, "runs must be a list"),
    "runs-of-numbers": ({"[[runs]]\nlabel = \"lin\"\npart = \"iris\"\nmodel = \"linear\"\n#RUN#": "",
                         "#TOP#": "runs = [1, 2]"}, "[[runs]] #1 must be a table"),
    "rank-a-string": ({"#RUN#": 'rank = "two"'}, "rank must be an integer"),
    "rank-zero": ({"#RUN#": "rank = 0"}, "rank must be >= 1"),
    "rank-float": ({"#RUN#": "rank = 2.5"}, "rank must be an integer"),
    "rank-at-another-scale": ({"#RUN#": 'override = { paper = { rank = "x" } }'}, "rank must be an integer"),
    "lr-a-string": ({"lr = 0.05": 'lr = "fast"'}, "lr must be a finite number"),
    "run-model-a-number": ({'model = "linear"': "model = 3"}, "model must be"),
    "run-scales-a-string": ({"#RUN#": 'scales = "tiny"'}, "scales must be from"),
    "target-a-string": ({"#PART#": 'target = "high"'}, "target must be an accuracy"),
    "target-above-1": ({"#PART#": "target = 1.5"}, "target must be an accuracy"),
    "target-empty-list": ({"#PART#": "target = []"}, "target must be an accuracy"),
    "target-list-with-string": ({"#PART#": 'target = [0.5, "x"]'}, "target must be an accuracy"),
    "n-train-a-string": ({"#PART#": 'n_train = "many"'}, "n_train must be a positive integer"),
    "part-not-a-table": ({"[parts.iris.tiny]\ndataset = \"iris\"\n#PART#": "[parts]\niris = 3"},
                         "[parts.iris] must be a table"),
    "part-scale-not-a-table": ({"[parts.iris.tiny]\ndataset = \"iris\"\n#PART#": "[parts.iris]\ntiny = 3"},
                               "[parts.iris.tiny] must be a table"),
    "eigen-not-a-table": ({"#TOP#": "eigen = 5"}, "[eigen] must be a table"),
    "ranks-not-a-table": ({"#TOP#": 'ranks = "1,2,4"'}, "[ranks] must be a table"),
    "claims-not-a-list": ({"#TOP#": 'ranks = { paper_claims = "rank 1 wins" }'}, "paper_claims must be a list"),
}


def _definition(tmp_path, case=None) -> Path:
    text = BASE_DEF
    if case is not None:
        for old, new in DEFS[case][0].items():
            assert old in text, (case, old)
            text = text.replace(old, new)
    for ph in ("#TOP#", "#RUN#", "#PART#"):
        text = text.replace(ph, "")
    d = tmp_path / "defs"
    d.mkdir(exist_ok=True)
    (d / "probe.toml").write_text(text)
    return d


def test_the_base_definition_is_valid(tmp_path):
    from margin_theory.experiment import load_definition, plan_experiment

    spec = load_definition("probe", _definition(tmp_path))
    assert [r.label for r in plan_experiment(spec, "tiny").runs] == ["lin"]


@pytest.mark.parametrize("case", sorted(DEFS))
def test_malformed_experiment_definition_is_one_line_error(tmp_path, capsys, case):
    from margin_theory.experiment import main as experiment

    d = _definition(tmp_path, case)
    rc, out, err = run_main(experiment, ["probe", "--scale", "tiny", "--experiments-dir", d,
                                         "--out", tmp_path / "res", "--json"], capsys)
    one_line_error(rc, err, DEFS[case][1])
    assert out == "" and not (tmp_path / "res").exists()


def test_memory_check_uses_the_available_memory(monkeypatch):
    """The size check compares with what the machine has: pinned by faking the figure."""
    from margin_theory import _util
    from margin_theory._util import ConfigError, check_memory

    monkeypatch.setattr(_util, "available_memory_bytes", lambda: 1000)
    check_memory(1000, "exactly enough")
    with pytest.raises(ConfigError, match="needs about .* only"):
        check_memory(1001, "one byte too many")


def test_dataset_shapes_table_matches_the_loader():
    """The preflight's shape table (no data loaded) agrees with the bundled data sets."""
    from margin_theory.data import load_dataset
    from margin_theory.runfolder import DATASET_SHAPES

    for name in ("xor", "iris", "wine", "breast_cancer", "digits", "mnist-5k"):
        ds = load_dataset(name)
        assert DATASET_SHAPES[name] == (tuple(ds.input_shape), int(ds.num_classes)), name
    assert json.dumps(sorted(DATASET_SHAPES))            # all names are plain strings
