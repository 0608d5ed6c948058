"""Plot a training run's metrics (``RUN_DIR/metrics.jsonl``, written by :mod:`margin_theory.train`).

Four panels over epochs (epoch 0 = the initialisation): training loss (mean
cross-entropy), train and test accuracy, the average margin gamma_bar and the
minimum margin gamma_min (SPEC §2). The margin panels' labels state the
normalisation (``full``: all parameters; ``head``: the head's only) and the degree
L of ``gamma_n = q_n / ||theta||^L``. Epochs where the Theorem 2 monitors ran are
marked on the gamma_bar panel (filled: A1-A3 held, open: the theorem made no
claim).

Command line::

    python -m margin_theory.plot RUN_DIR [--out PNG] [--title T] [--json]

writes ``RUN_DIR/metrics.png`` by default. A missing or empty ``metrics.jsonl``
is a one-line error with exit status 2.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ._util import (ArgumentParser, ConfigError, MarginTheoryError, check_output_path, cli_entry, print_json,
                    save_figure, use_agg_backend)

__all__ = ["load_history", "plot_metrics", "plot_run", "main"]

PROG = "python -m margin_theory.plot"


def load_history(run_dir: str | Path) -> list[dict]:
    """The metrics lines of a run folder (or of a ``metrics.jsonl`` path), read by the one
    strict reader :func:`margin_theory.runfolder.read_metrics`.

    Raises :class:`ConfigError` (one line naming file and line) if the file is missing,
    empty, not UTF-8 JSON lines or not metrics records.
    """
    from .runfolder import read_metrics

    return read_metrics(run_dir, required=True)


def _num(v) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("inf", "-inf"):
        return float(v)
    return math.nan


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in history:
        if key in r:
            xs.append(_num(r.get("epoch")))
            ys.append(_num(r.get(key)))
    return xs, ys


def plot_metrics(history: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Write the 4-panel PNG of ``history`` (metrics.jsonl records) to ``path``; return it."""
    if not history:
        raise ConfigError("nothing to plot: the history is empty")
    use_agg_backend()
    import matplotlib.pyplot as plt

    last = history[-1]
    norm = last.get("normalisation", "?")
    L = last.get("degree", "?")
    what = "all parameters" if norm == "full" else "head parameters" if norm == "head" else str(norm)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax_loss, ax_acc, ax_gb, ax_gm = axes.ravel()

    x, y = _series(history, "train_loss")
    ax_loss.plot(x, y, marker="o", ms=3, color="C0", label="train loss (cross-entropy)")
    finite = [v for v in y if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean cross-entropy")
    ax_loss.set_title("training loss")
    ax_loss.legend(loc="best")
    ax_loss.grid(alpha=0.3)

    for key, lab, c in (("train_acc", "train", "C0"), ("test_acc", "test", "C1")):
        x, y = _series(history, key)
        ax_acc.plot(x, [100 * v for v in y], marker="o", ms=3, color=c, label=f"{lab} accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.legend(loc="best")
    ax_acc.grid(alpha=0.3)

    x, y = _series(history, "gamma_bar")
    ax_gb.plot(x, y, marker="o", ms=3, color="C2", label=r"$\bar\gamma$ (training set)")
    mon = [(r["epoch"], _num(r.get("gamma_bar")), bool(r["theorem2"].get("theorem_applies")))
           for r in history if isinstance(r.get("theorem2"), dict)]
    if mon:
        held = [(e, g) for e, g, a in mon if a]
        nocl = [(e, g) for e, g, a in mon if not a]
        if held:
            ax_gb.scatter(*zip(*held), s=60, color="C3", zorder=3, label="Theorem 2: A1-A3 hold")
        if nocl:
            ax_gb.scatter(*zip(*nocl), s=60, facecolors="none", edgecolors="C3", zorder=3,
                          label="Theorem 2: no claim")
    ax_gb.axhline(0, color="k", lw=0.6)
    ax_gb.set_xlabel("epoch")
    ax_gb.set_ylabel(rf"$\bar\gamma$ = mean $q_n/\|\theta\|^{{{L}}}$ ({norm}: {what}, L = {L})")
    ax_gb.set_title(r"average margin $\bar\gamma$")
    ax_gb.legend(loc="best")
    ax_gb.grid(alpha=0.3)

    x, y = _series(history, "gamma_min")
    ax_gm.plot(x, y, marker="o", ms=3, color="C4", label=r"$\gamma_{\min}$ (training set)")
    ax_gm.axhline(0, color="k", lw=0.6)
    ax_gm.set_xlabel("epoch")
    ax_gm.set_ylabel(rf"$\gamma_{{\min}}$ = min $q_n/\|\theta\|^{{{L}}}$ ({norm}, L = {L})")
    ax_gm.set_title(r"minimum margin $\gamma_{\min}$")
    ax_gm.legend(loc="best")
    ax_gm.grid(alpha=0.3)

    fig.suptitle(title or "training run")
    fig.tight_layout()
    return save_figure(fig, path)


def _run_title(run_dir: Path, history: Sequence[dict]) -> str:
    cfg = {}
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        pass
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str) or \
            not isinstance(cfg.get("layers", 1), int):
        return f"{run_dir.name}: {len(history)} records"
    from .models import ModelSpec

    model = cfg["model"]
    try:
        options = ModelSpec.from_mapping(cfg).describe()
    except MarginTheoryError:
        options = ""
    model += f" ({options})" if options else ""
    bits = [f"SGD lr {cfg.get('lr')}", f"batch {cfg.get('batch_size')}"]
    if cfg.get("momentum"):
        bits.append(f"momentum {cfg['momentum']}")
    if cfg.get("weight_decay"):
        bits.append(f"wd {cfg['weight_decay']}")
    if cfg.get("margin_reg"):
        bits.append(f"margin reg $\\lambda$ = {cfg['margin_reg']}")
    if cfg.get("augment"):
        bits.append("augment")
    return f"{model} on {cfg.get('dataset')}, seed {cfg.get('seed')}: " + ", ".join(bits)


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Plot ``run_dir/metrics.jsonl`` to ``out`` (default ``run_dir/metrics.png``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    check_output_path(out if out else run_dir / "metrics.png", kind="file")
    history = load_history(run_dir)
    return plot_metrics(history, Path(out) if out else run_dir / "metrics.png",
                        title=title or _run_title(run_dir, history))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Plot a training run: loss, train/test accuracy, gamma_bar and "
                                              "gamma_min over epochs (from RUN_DIR/metrics.jsonl).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by python -m margin_theory.train --out")
    p.add_argument("--out", default=None, metavar="PNG", help="figure path (default RUN_DIR/metrics.png)")
    p.add_argument("--title", default=None, help="figure title (default: model, dataset and settings)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return p


@cli_entry(PROG)
def main(argv=None) -> int:
    """Write the metrics figure of a run; exit 2 when its metrics are missing or empty."""
    args = build_parser().parse_args(argv)
    path = plot_run(args.run_dir, args.out, args.title)
    history = load_history(args.run_dir)
    last = history[-1]
    if args.json:
        print_json({"figure": str(path), "records": len(history), "last": last})
    else:
        print(f"figure: {path} ({len(history)} epochs, last: epoch {last.get('epoch')}, "
              f"gamma_bar {_num(last.get('gamma_bar')):+.4e}, test acc {100 * _num(last.get('test_acc')):.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
