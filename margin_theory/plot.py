"""Plot a training run's metrics (``RUN_DIR/metrics.jsonl``, written by :mod:`margin_theory.train`).

Four panels over epochs (epoch 0 = the initialisation): training loss, train and test accuracy, the
average margin gamma_bar and the minimum margin gamma_min (SPEC §2) of ``gamma_n = q_n / ||theta||^L``,
labelled with the normalisation (``full``/``head``) and L; Theorem 2 monitor epochs are marked on the
gamma_bar panel (filled: A1-A3 held, open: no claim). ``python -m margin_theory.plot RUN_DIR [--out PNG]
[--title T] [--json]`` writes ``RUN_DIR/metrics.png`` by default; a missing or empty ``metrics.jsonl``
is a one-line error with exit status 2.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ._util import (ArgumentParser, ConfigError, MarginTheoryError, check_output_path, cli_entry, print_json,
                    save_figure, use_agg_backend)

__all__ = ["load_history", "plot_metrics", "plot_run", "main"]

PROG = "python -m margin_theory.plot"


def load_history(run_dir: str | Path) -> list[dict]:
    """The metrics records of a run folder (or a ``metrics.jsonl`` path) by the one strict reader
    :func:`margin_theory.runfolder.read_metrics` (:class:`ConfigError` if missing, empty or malformed)."""
    from .runfolder import read_metrics

    return read_metrics(run_dir, required=True)


def _num(v) -> float:
    """A metrics value as a float: a number, ``"inf"`` or ``"-inf"``; NaN for anything else."""
    return float(v) if (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("inf", "-inf") else math.nan


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    return [_num(r.get("epoch")) for r in history if key in r], [_num(r[key]) for r in history if key in r]


def plot_metrics(history: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Write the 4-panel PNG of ``history`` (metrics.jsonl records) to ``path``; return it."""
    if not history:
        raise ConfigError("nothing to plot: the history is empty")
    use_agg_backend()
    import matplotlib.pyplot as plt

    norm, L = history[-1].get("normalisation", "?"), history[-1].get("degree", "?")
    what = {"full": "all parameters", "head": "head parameters"}.get(norm, str(norm))
    panels = [   # title, y label, y factor, [(key, label, colour)]
        ("training loss", "mean cross-entropy", 1, [("train_loss", "train loss (cross-entropy)", "C0")]),
        ("accuracy", "accuracy (%)", 100,
         [("train_acc", "train accuracy", "C0"), ("test_acc", "test accuracy", "C1")]),
        (r"average margin $\bar\gamma$",
         rf"$\bar\gamma$ = mean $q_n/\|\theta\|^{{{L}}}$ ({norm}: {what}, L = {L})", 1,
         [("gamma_bar", r"$\bar\gamma$ (training set)", "C2")]),
        (r"minimum margin $\gamma_{\min}$",
         rf"$\gamma_{{\min}}$ = min $q_n/\|\theta\|^{{{L}}}$ ({norm}, L = {L})", 1,
         [("gamma_min", r"$\gamma_{\min}$ (training set)", "C4")]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax_loss, _, ax_gb, ax_gm = axes.ravel()
    for ax, (name, ylabel, factor, series) in zip(axes.ravel(), panels):
        for key, label, colour in series:
            x, y = _series(history, key)
            ax.plot(x, [factor * v for v in y], marker="o", ms=3, color=colour, label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        if ax in (ax_gb, ax_gm):
            ax.axhline(0, color="k", lw=0.6)
    loss = [v for v in _series(history, "train_loss")[1] if math.isfinite(v)]
    if loss and min(loss) > 0 and max(loss) / min(loss) > 20:
        ax_loss.set_yscale("log")
    mon = [(r["epoch"], _num(r.get("gamma_bar")), bool(r["theorem2"].get("theorem_applies")))
           for r in history if isinstance(r.get("theorem2"), dict)]
    for held, style in ((True, {"color": "C3", "label": "Theorem 2: A1-A3 hold"}),
                        (False, {"facecolors": "none", "edgecolors": "C3", "label": "Theorem 2: no claim"})):
        if pts := [(e, g) for e, g, a in mon if a == held]:
            ax_gb.scatter(*zip(*pts), s=60, zorder=3, **style)
    for ax in axes.ravel():
        ax.legend(loc="best")           # after the monitors' markers
    fig.suptitle(title or "training run")
    fig.tight_layout()
    return save_figure(fig, path)


def _run_title(run_dir: Path, history: Sequence[dict]) -> str:
    """Model, dataset and the trainer settings of ``run_dir/config.json``, or the record count."""
    from .models import ModelSpec
    from .runfolder import read_config

    try:
        cfg = read_config(run_dir)
    except MarginTheoryError:
        cfg = None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str) \
            or not isinstance(cfg.get("layers", 1), int):
        return f"{run_dir.name}: {len(history)} records"
    try:
        options = ModelSpec.from_mapping(cfg).describe()
    except MarginTheoryError:
        options = ""
    bits = [f"SGD lr {cfg.get('lr')}", f"batch {cfg.get('batch_size')}"]
    bits += [f"{label} {cfg[k]}" for k, label in (("momentum", "momentum"), ("weight_decay", "wd"),
                                                  ("margin_reg", "margin reg $\\lambda$ =")) if cfg.get(k)]
    bits += ["augment"] if cfg.get("augment") else []
    model = f"{cfg['model']} ({options})" if options else cfg["model"]
    return f"{model} on {cfg.get('dataset')}, seed {cfg.get('seed')}: " + ", ".join(bits)


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Plot ``run_dir/metrics.jsonl`` to ``out`` (default ``run_dir/metrics.png``)."""
    return _plot_run(run_dir, out, title)[0]


def _plot_run(run_dir, out, title) -> tuple[Path, list[dict]]:
    """:func:`plot_run` and the history it read (``main`` reports it without reading the file again)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    out = check_output_path(out or run_dir / "metrics.png", kind="file")
    history = load_history(run_dir)
    return plot_metrics(history, out, title=title or _run_title(run_dir, history)), history


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
    path, history = _plot_run(args.run_dir, args.out, args.title)
    last = history[-1]
    if args.json:
        print_json({"figure": str(path), "records": len(history), "last": last})
    else:
        print(f"figure: {path} ({len(history)} epochs, last: epoch {last.get('epoch')}, gamma_bar "
              f"{_num(last.get('gamma_bar')):+.4e}, test acc {100 * _num(last.get('test_acc')):.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
