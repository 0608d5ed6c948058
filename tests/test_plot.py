"""Tests of margin_theory.plot: a PNG from a short run, one-line errors (exit 2)."""
from __future__ import annotations

import json

import pytest
import torch

from margin_theory._util import ConfigError
from margin_theory.plot import load_history, main, plot_metrics
from margin_theory.train import TrainConfig, train
from _hostile import run_main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("plot") / "run"
        train(TrainConfig(dataset="digits", model="lowrank", rank=2, lr=0.1, epochs=3, out=str(out),
                          quiet=True), log=None)
    finally:
        torch.set_num_threads(old)
    return out


def _cli(argv, capsys):
    return run_main(main, argv, capsys)


def test_plot_writes_png_from_a_run(run_dir, capsys):
    rc, out, _ = _cli([run_dir], capsys)
    png = run_dir / "metrics.png"
    assert rc == 0 and str(png) in out
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    custom = run_dir / "figs" / "m.png"
    rc, out, _ = _cli([run_dir, "--out", custom, "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["figure"] == str(custom) and d["records"] == 4 and d["last"]["epoch"] == 3
    assert custom.read_bytes()[:8] == PNG_MAGIC


def test_plot_metrics_api_with_monitors_and_missing_values(tmp_path):
    hist = [{"epoch": e, "train_loss": 2.0 / (e + 1), "train_acc": 0.1 * e, "test_acc": None if e == 1 else 0.09 * e,
             "gamma_bar": -0.1 + 0.05 * e, "gamma_min": -0.5 + 0.01 * e, "degree": 1, "normalisation": "head",
             **({"theorem2": {"theorem_applies": e == 2}} if e % 2 == 0 else {})} for e in range(5)]
    p = plot_metrics(hist, tmp_path / "h.png", title="synthetic")
    assert p.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ConfigError):
        plot_metrics([], tmp_path / "e.png")


def test_missing_or_empty_metrics_exit_2(tmp_path, capsys):
    rc, out, err = _cli([tmp_path / "absent"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    (tmp_path / "run").mkdir()
    rc, _, err = _cli([tmp_path / "run"], capsys)
    assert rc == 2 and "metrics.jsonl" in err and err.count("\n") == 1
    (tmp_path / "run" / "metrics.jsonl").write_text("\n")
    rc, _, err = _cli([tmp_path / "run"], capsys)
    assert rc == 2 and "empty" in err and err.count("\n") == 1
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 0}\n{oops\n')
    rc, _, err = _cli([tmp_path / "run"], capsys)
    assert rc == 2 and "line 2" in err
    assert not (tmp_path / "run" / "metrics.png").exists()
    with pytest.raises(ConfigError):
        load_history(tmp_path / "absent")
