r"""Check Theorem 2's assumptions on saved checkpoints (SPEC §5); the reference is ``docs/checking.md``.

::

    python -m margin_theory.check RUN_DIR|RUNS_DIR|CKPT|FOREIGN... [--subset N] [--seed S] [--json]
                                  [--plot [--out PNG]] [--data-dir DIR] [--download]
                                  [--normalisation auto|full|head]
                                  [--model NAME --dataset NAME [--rank R ...] | --spec FILE]

A run folder stands for its checkpoints in epoch order, a folder of runs for the runs below it; a
foreign file (a ``torch.save`` state dict, or a bare ``.safetensors``) is described by ``train``'s
model and data flags or ``--spec`` (:mod:`margin_theory.foreign`). Per checkpoint, on the run's data
(the trainer's loader): :func:`margin_theory.assumptions.theorem2_report` on the seeded subset S
(A1-A3, the exact Lemma-2 velocity, its lower bound, the verdict ``grows`` or ``no-claim``: the
conditions are sufficient, not necessary) and the max-margin gap of
:class:`margin_theory.maxmargin.GapMonitor`; between consecutive checkpoints, :func:`transitions`.
``--json``: ``{"checkpoints": [...], "transitions": [...], "errors": [...], "summary": {...}}``. An
unreadable checkpoint prints one line on stderr and makes the exit status 2; the others are still
reported. ``--plot`` (``--out``, default ``RUN_DIR/theorem2-check.png``): Fig. 5 with the verdict.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ._util import (ArgumentParser, CheckpointError, ConfigError, MarginTheoryError, check_output_path, cli_entry,
                    explicit_options, nonneg_int, one_line, positive_int, print_json, save_figure, to_jsonable,
                    use_agg_backend)

__all__ = ["CheckReport", "check_checkpoints", "expand_targets", "plot_check", "transitions", "main"]

PROG = "python -m margin_theory.check"


@dataclass
class CheckReport:
    """Result of :func:`check_checkpoints`: per-checkpoint rows, transitions, errors."""

    checkpoints: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return to_jsonable({"checkpoints": self.checkpoints, "transitions": self.transitions, "errors": self.errors})

    def summary(self) -> dict:
        predicted = [t for t in self.transitions if t["predicted_sign"] == "+"]
        return {"checkpoints": len(self.checkpoints),
                "theorem_applies": sum(bool(c["theorem_applies"]) for c in self.checkpoints),
                "transitions": len(self.transitions),
                "gamma_bar_grew": sum(t["delta_gamma_bar"] > 0 for t in self.transitions),
                "predictions": len(predicted), "agreements": sum(t["agrees"] is True for t in predicted),
                "disagreements": sum(t["agrees"] is False for t in predicted),
                "velocity_sign_disagreements": sum(t["velocity_agrees"] is False for t in self.transitions),
                "errors": len(self.errors)}


def _error(path, exc: BaseException | str) -> dict:
    """An ``errors`` entry: the path and the one-line message (an unexpected error type is named)."""
    msg = exc if isinstance(exc, str) else one_line(exc)
    if isinstance(exc, BaseException) and not isinstance(exc, MarginTheoryError):
        msg = f"{type(exc).__name__}: {msg}"
    return {"path": str(path), "error": msg}


def _by_run(rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    return runs


def _run_of(tensor_path: Path) -> Path:
    folder = tensor_path.parent
    return folder.parent if folder.name == "checkpoints" else folder


# --- Targets and data ---
def expand_targets(targets: Sequence[str | Path]) -> tuple[list[Path], list[dict]]:
    """``(checkpoint tensor paths, errors)`` of the command-line targets: a run folder (or its
    ``checkpoints``) stands for its complete checkpoints, a folder holding none for the runs below it,
    a foreign file for itself; an incomplete pair, an empty folder or a missing path is an error."""
    from .checkpoint import CHECKPOINT_DIR, checkpoint_files, list_checkpoints, resolve_checkpoint
    from .foreign import is_foreign_file

    paths: list[Path] = []
    errors: list[dict] = []
    expanded: list[Path] = []
    for t in map(Path, targets):   # a folder of runs stands for the runs inside (any depth)
        if t.is_dir() and not (t / CHECKPOINT_DIR).is_dir() and not any(t.glob("epoch-*")):
            expanded.extend(sorted({c.parent for c in t.rglob(CHECKPOINT_DIR) if c.is_dir()}) or [t])
        else:
            expanded.append(t)
    for t in expanded:
        if is_foreign_file(t):
            paths.append(t)
        elif t.is_dir():
            folder = t / CHECKPOINT_DIR if (t / CHECKPOINT_DIR).is_dir() else t
            found = list_checkpoints(t)
            complete = {p.with_suffix("") for p in found}
            incomplete = [f for f in sorted(set(folder.glob("epoch-*.safetensors")) | set(folder.glob("epoch-*.json")))
                          if f.with_suffix("") not in complete]
            for f in incomplete:
                missing = ", ".join(str(p) for p in checkpoint_files(f) if not p.exists())
                errors.append(_error(f, f"incomplete checkpoint: {missing} missing"))
            if not found and not incomplete:
                errors.append(_error(t, f"no checkpoint in {t} (expected {CHECKPOINT_DIR}/epoch-NNNN.safetensors "
                                        "+ .json)"))
            paths.extend(found)
        else:
            try:
                paths.append(resolve_checkpoint(t))
            except MarginTheoryError as exc:
                errors.append(_error(t, exc))
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(p.resolve(), p)
    return list(unique.values()), errors


_DATA_KEYS = ("dataset", "data_dir", "seed", "normalize", "n_train", "n_test")


def _load_training_data(config: dict, data_dir: str | None, download: bool = False):
    """The run's data by the trainer's own loader (``train.load_data_for``), on CPU; ``data_dir``
    replaces the run's own, ``download`` fetches missing standard files as ``train --download``."""
    from .train import TrainConfig, load_data_for

    cfg = {**config, "resume": False, "overwrite": False, "augment": False,  # irrelevant to the data
           "download": bool(download)}
    if data_dir is not None:
        cfg["data_dir"] = str(data_dir)
    return load_data_for(TrainConfig.from_dict(cfg), torch.device("cpu"))


# --- The check ---
def check_checkpoints(targets: Sequence[str | Path], *, subset: int = 512, seed: int | None = None,
                      normalisation: str = "auto", data_dir: str | None = None, foreign: dict | None = None,
                      download: bool = False, progress: bool = False) -> CheckReport:
    """Evaluate Theorem 2 on every checkpoint of ``targets`` and compare consecutive ones. ``seed``: the
    subset's (``None``: each run's). ``foreign``: what a foreign file holds (``train``'s options or a spec
    file's content); such a file is its own "run" with ``epoch`` ``None``. Errors are collected, never raised."""
    from ._util import progress as _progress
    from .assumptions import theorem2_report
    from .checkpoint import describe_model_args, read_checkpoint
    from .foreign import foreign_config, is_foreign_file, read_foreign
    from .margins import compute_margins
    from .maxmargin import GapMonitor

    paths, errors = expand_targets(targets)
    report = CheckReport(errors=errors)
    data_cache: dict[tuple, Any] = {}
    gaps: dict[tuple, Any] = {}             # the max-margin monitor of each data set, seed and architecture
    rows: list[dict] = []
    bar = _progress(total=len(paths), desc="check", unit="ckpt", quiet=not progress)

    def phase(p: Path, what: str) -> None:
        where = f"{_run_of(p).name}/{p.stem}" if p.parent.name == "checkpoints" else p.name
        bar.set_description(f"{where}: {what}", refresh=True)

    for p in paths:
        try:
            phase(p, "reading")
            is_foreign = is_foreign_file(p)
            if is_foreign and foreign is None:
                why = f"no sidecar {p.stem}.json" if p.suffix == ".safetensors" else "a foreign state dict"
                raise CheckpointError(f"{p.name} is not a margin_theory checkpoint ({why}): say what it holds with the "
                                      "model and data flags of train (--model NAME --dataset NAME [--rank R ...]) or "
                                      "--spec FILE (docs/checking.md)")
            ck = None if is_foreign else read_checkpoint(p, device="cpu")
            cfg = foreign_config(foreign) if is_foreign else ck.config
            key = tuple(to_jsonable(cfg.get(k)) for k in _DATA_KEYS) + (data_dir, download)
            if key not in data_cache:
                phase(p, f"loading {cfg.get('dataset')}")
                ds = _load_training_data(cfg, data_dir, download)
                data_cache[key] = ds, ds.X_train.to(torch.float64)      # converted once per data set
            ds, X64 = data_cache[key]
            if is_foreign:
                ck = read_foreign(p, foreign, input_shape=ds.input_shape, num_classes=ds.num_classes)
            s = int(ck.config.get("seed", 0)) if seed is None else int(seed)
            phase(p, "Theorem 2 on the subset")
            rep = theorem2_report(ck.model, ds.X_train, ds.y_train, subset=subset, seed=s, normalisation=normalisation)
            phase(p, "margins on the training set")
            full = compute_margins(ck.model.to(torch.float64), X64, ds.y_train, normalisation=normalisation)
            run = str(p if is_foreign else _run_of(p))
            gkey = key + (s, repr(ck.model))   # the optimum depends on the data, the seed and the architecture
            if gkey not in gaps:               # solved once per data set and architecture, as the trainer's
                gaps[gkey] = GapMonitor(ck.model, ds.X_train, ds.y_train, subset=subset, seed=s)
            gap = gaps[gkey].report(ck.model)
        except (MarginTheoryError, OSError, ValueError, RuntimeError) as exc:   # never a traceback
            report.errors.append(_error(p, exc))
            continue
        finally:
            bar.update(1)
        row = {"path": str(p), "run": run, "epoch": ck.epoch, "step": ck.step,
               **rep.as_dict(),         # every Theorem 2 monitor field (assumptions.Theorem2Report)
               "gamma_bar_train": full.gamma_bar, "gamma_min_train": full.gamma_min,
               "train_acc": full.accuracy, "test_acc": ck.metrics.get("test_acc"),
               "n_train": int(ds.y_train.shape[0]), "model": ck.config.get("model"), "verdict": rep.verdict(),
               "note": rep.note, "maxmargin": gap}
        if is_foreign:
            row["foreign"] = {"notes": ck.meta.get("notes", []), "map": ck.meta.get("map", {}),
                              "model": describe_model_args({**cfg, "name": cfg["model"], "num_classes": ds.num_classes,
                                                            "input_shape": list(ds.input_shape)})}
        rows.append(row)
    bar.close()
    for run_rows in _by_run(rows).values():      # transitions only within a run, in epoch order
        run_rows.sort(key=lambda r: r["epoch"] if r["epoch"] is not None else -1)
        report.checkpoints.extend(run_rows)
        report.transitions.extend(transitions(run_rows))
    return report


def transitions(rows: list[dict]) -> list[dict]:
    """Consecutive checkpoints of one run (epoch order): ``delta_gamma_bar`` on the WHOLE training set
    against ``predicted_sign`` at the earlier one (``+`` where A1-A3 hold, else ``?``); ``agrees`` is
    ``delta_gamma_bar > 0`` for a ``+``, else None; ``velocity_sign``/``velocity_agrees``: the same with
    the exact Lemma-2 velocity. Training runs SGD over whole epochs, so a disagreement shows the local
    prediction did not persist - it does not contradict the theorem."""
    out = []
    for a, b in zip(rows, rows[1:]):
        dg = b["gamma_bar_train"] - a["gamma_bar_train"]
        pred = "+" if a["theorem_applies"] else "?"
        vsign = "+" if a["velocity"] > 0 else ("-" if a["velocity"] < 0 else "0")
        out.append({"from": a["epoch"], "to": b["epoch"], "from_path": a["path"], "to_path": b["path"],
                    "run": a["run"], "delta_gamma_bar": dg, "predicted_sign": pred,
                    "agrees": (dg > 0) if pred == "+" else None, "velocity_sign": vsign,
                    "velocity_agrees": None if vsign == "0" else ((dg > 0) == (vsign == "+"))})
    return out


# --- Output ---
def _fmt(v, spec=".3g") -> str:
    if v is None or isinstance(v, bool):
        return {None: "-", True: "yes", False: "no"}[v]
    return str(v) if isinstance(v, str) or not math.isfinite(v) else format(v, spec)     # inf, -inf, nan


#: the table's columns: (header, row key, width, format)
_COLUMNS = (("epoch", "epoch", 5, "d"), ("gbar(train)", "gamma_bar_train", 11, "+.4e"),
            ("gbar(S)", "gamma_bar", 10, "+.4e"), ("rho", "rho", 7, ".4f"), ("cv", "cv", 7, ".4f"),
            ("eps", "eps", 8, ".3g"), ("delta", "delta_min", 8, ".3g"), ("A1", "A1", 3, ".3g"),
            ("A2", "A2", 3, ".3g"), ("A3", "A3", 3, ".3g"), ("velocity", "velocity", 10, "+.3e"),
            ("lower bnd", "lower_bound", 10, "+.3e"))
_AGREES = {True: "agrees", False: "DISAGREES", None: "no prediction"}
_VELOCITY_AGREES = {True: "agrees", False: "differs", None: "-"}


def format_report(rep: CheckReport) -> str:
    """The human report: per run its table (:data:`_COLUMNS`), max-margin gap and transitions; a summary."""
    lines = []
    head = "  ".join(f"{h:>{w}}" for h, _, w, _ in _COLUMNS) + "  verdict"
    for run, rows in _by_run(rep.checkpoints).items():
        r0 = rows[0]
        if "foreign" in r0:
            lines.append(f"file {run}: foreign state dict mapped onto {r0['foreign']['model']}"
                         + (f" ({'; '.join(r0['foreign']['notes'])})" if r0["foreign"]["notes"] else ""))
        lines += [f"run {run}: model {r0['model']}, normalisation {r0['normalisation']} (L = {r0['degree']}), "
                  f"Theorem 2 on a seeded subset of {r0['n_subset']} of {r0['n_train']} training points "
                  f"(seed {r0['subset_seed']}); gbar(train) = gamma_bar on the whole training set, "
                  f"gbar(S) on the subset", head]
        lines += ["  ".join(f"{_fmt(c[k], spec):>{w}}" for _, k, w, spec in _COLUMNS) + f"  {c['verdict']}"
                  for c in rows]
        gaps = [c for c in rows if c["maxmargin"]["available"]]
        if gaps:
            g = gaps[0]["maxmargin"]
            lines.append(f"max-margin gap ({g['head']} head, optimum gamma* = {g['gamma_star']:.5g} on {g['data']}): "
                         + ", ".join(f"epoch {c['epoch']}: gamma_min/gamma* {c['maxmargin']['ratio']:+.4f}, "
                                     f"cos {c['maxmargin']['cosine']:.4f}" for c in gaps))
        elif r0["maxmargin"]["note"]:
            lines.append(f"max-margin gap: not available ({r0['maxmargin']['note']})")
        trans = [t for t in rep.transitions if t["run"] == run]
        lines += ["transitions (gamma_bar on the whole training set):"] if trans else []
        lines += [f"  epoch {t['from']:>4} -> {t['to']:<4}  delta gamma_bar {t['delta_gamma_bar']:+.4e}  "
                  f"predicted {t['predicted_sign']}  {_AGREES[t['agrees']]}  (Lemma-2 velocity sign "
                  f"{t['velocity_sign']}: {_VELOCITY_AGREES[t['velocity_agrees']]})" for t in trans] + [""]
    s = rep.summary()
    if s["checkpoints"]:
        lines += [f"A1-A3 held at {s['theorem_applies']} of {s['checkpoints']} checkpoints; gamma_bar grew in "
                  f"{s['gamma_bar_grew']} of {s['transitions']} transitions; predictions '+': {s['predictions']}, "
                  f"disagreements: {s['disagreements']}.",
                  "Theorem 2's conditions are sufficient, not necessary: where they fail ('no-claim') the theorem "
                  "says nothing and the margin may still grow. Predictions concern the gradient flow at the earlier "
                  "checkpoint; training between checkpoints is SGD over whole epochs."]
    if s["errors"]:
        lines.append(f"{s['errors']} checkpoint(s) could not be checked (see stderr).")
    return "\n".join(lines)


def plot_check(rep: CheckReport, out: str | Path, metrics: dict[str, list[dict]] | None = None) -> Path:
    """Fig. 5 with the theorem's verdict: gamma_bar (left axis) and test accuracy (right axis)
    over epochs for each run, intervals after checkpoints where A1-A3 held shaded."""
    use_agg_backend()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = _by_run([c for c in rep.checkpoints if c["epoch"] is not None])  # foreign files have no epochs
    if not runs:
        raise CheckpointError("nothing to plot: no checkpoint of a training run could be checked "
                              "(foreign files have no epochs)")
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 4.2 * len(runs)), squeeze=False)
    for ax, (run, rows) in zip(axes[:, 0], runs.items()):
        hist = (metrics or {}).get(run)      # the curves: every epoch in metrics.jsonl, else the checkpoints
        pts, key, src = (hist, "gamma_bar", "metrics.jsonl") if hist else (rows, "gamma_bar_train", "checkpoints")
        ep, gb = [r["epoch"] for r in pts], [r.get(key, math.nan) for r in pts]
        ta = [t if isinstance(t := r.get("test_acc"), (int, float)) else math.nan for r in pts]
        for r, nxt in zip(rows, rows[1:] + [None]):
            if r["theorem_applies"]:      # until the next checkpoint
                ax.axvspan(r["epoch"], nxt["epoch"] if nxt else r["epoch"] + 0.5, color="tab:green", alpha=0.18, lw=0)
        l1, = ax.plot(ep, gb, "o-", color="tab:blue", ms=3, label="average margin gamma_bar (train set)")
        for applies, style in ((True, dict(color="tab:green", label="checkpoint: A1-A3 hold")),
                               (False, dict(mfc="none", color="gray", label="checkpoint: no claim"))):
            sel = [r for r in rows if r["theorem_applies"] == applies]
            ax.plot([r["epoch"] for r in sel], [r["gamma_bar_train"] for r in sel], "s", ms=6, **style)
        ax.set(xlabel="epoch", ylabel=f"gamma_bar ({rows[0]['normalisation']} normalisation, L = {rows[0]['degree']})")
        ax2 = ax.twinx()
        l2, = ax2.plot(ep, [100 * t for t in ta], "^-", color="tab:red", ms=3, label="test accuracy (%)")
        ax2.set_ylabel("test accuracy (%)")
        held = any(r["theorem_applies"] for r in rows)
        shade = "A1-A3 hold: Theorem 2 predicts growth" + ("" if held else " (at no checkpoint here)")
        handles = [l1, l2, Patch(color="tab:green", alpha=0.3, label=shade)] + ax.get_legend_handles_labels()[0][1:]
        ax.legend(handles=handles, loc="lower right", fontsize=8)
        ax.set_title(f"{Path(run).name}: {rows[0]['model']} - average margin, test accuracy and Theorem 2 "
                     f"(from {src})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def build_parser() -> ArgumentParser:
    from .train import add_data_model_arguments

    p = ArgumentParser(prog=PROG, description=(
        "Theorem 2 (SPEC §5) on saved checkpoints: A1-A3, rho, cv, eps, the exact Lemma-2 margin velocity and its "
        "lower bound per checkpoint, and the change of gamma_bar between consecutive checkpoints against the sign "
        "the theorem predicts. The conditions are sufficient, not necessary."))
    p.add_argument("targets", nargs="+", metavar="RUN_DIR|CKPT",
                   help="run folders (all their checkpoints; a folder of runs: every run inside), "
                        "checkpoint files (.safetensors or .json), or foreign files (.pt/.pth state dicts, "
                        "bare .safetensors) described by the model flags or --spec")
    p.add_argument("--subset", type=positive_int, default=512,
                   help="size of the seeded subset S the theorem is evaluated on (default 512; all if fewer)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="subset seed (default: the run's training "
                   "seed; for a foreign file also its data split seed, default 0)")
    p.add_argument("--normalisation", choices=("auto", "full", "head"), default="auto",
                   help="margin normalisation (auto: all parameters if homogeneous, else the head's)")
    p.add_argument("--spec", default=None, metavar="FILE",
                   help="JSON/TOML file saying what a foreign file holds (train's options: model, rank, "
                        "dataset, ...; optional keys table); flags given override it")
    add_data_model_arguments(
        p.add_argument_group("model and data of a foreign file (the flags of train)"), augment=False,
        data_dir_help="data folder, overriding the runs' own data_dir (needed when a run's folder moved)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--plot", action="store_true", help="write a PNG: gamma_bar and test accuracy, A1-A3 shaded")
    p.add_argument("--out", default=None, help="PNG path for --plot (default RUN_DIR/theorem2-check.png)")
    return p


def _flags(names) -> str:
    return ", ".join(f"--{k.replace('_', '-')}" for k in names)


@cli_entry(PROG)
def main(argv=None) -> int:
    """Check Theorem 2's assumptions on checkpoints; exit 2 if any checkpoint is unreadable."""
    from .foreign import MODEL_KEYS, is_foreign_file, read_spec
    from .runfolder import read_metrics          # the one strict reader

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is not None and not args.plot:
        raise CheckpointError("--out applies to --plot only")
    given = explicit_options(parser, argv)
    if unsupported := [k for k in ("protocol", "init", "linear_term", "affine") if k in given]:
        raise ConfigError(_flags(unsupported) + " do not apply to check: a checkpoint of ours carries them in "
                          "its config; a foreign file's linear term and biases are mapped from its tensors "
                          "(docs/checking.md)")
    model_flags = sorted(k for k in given if k in MODEL_KEYS + ("dataset", "n_train", "n_test", "normalize"))
    kinds = [is_foreign_file(p) for p in expand_targets(args.targets)[0]]     # foreign file or ours, per target
    foreign = None
    if args.spec or model_flags:              # flags given override the spec file
        foreign = {**(read_spec(args.spec) if args.spec else {}),
                   **{k: getattr(args, k) for k in model_flags + [k for k in ("data_dir", "download") if k in given]},
                   **({} if args.seed is None else {"seed": args.seed})}
        if not any(kinds):
            sys.stderr.write(f"{PROG}: note: {_flags(['spec'] * bool(args.spec) + model_flags)} describe foreign "
                             "files only; the checkpoints given carry their own description (sidecar) and are "
                             "checked as saved\n")
    if args.out is not None:
        check_output_path(args.out, kind="file")
    elif args.plot and all(kinds):
        raise ConfigError("--plot of foreign files only: give --out FILE.png (there is no run folder to put it in)")
    rep = check_checkpoints(args.targets, subset=args.subset, seed=args.seed,
                            normalisation=args.normalisation, data_dir=args.data_dir,
                            foreign=foreign, download=args.download, progress=True)
    for e in rep.errors:
        sys.stderr.write(f"{PROG}: error: {e['path']}: {e['error']}\n")
    plot_path = None
    if args.plot and rep.checkpoints:
        runs = list(dict.fromkeys(c["run"] for c in rep.checkpoints if "foreign" not in c))
        out = args.out or check_output_path(Path(runs[0] if runs else ".") / "theorem2-check.png", kind="file")
        plot_path = plot_check(rep, out, {run: read_metrics(run) for run in runs})   # metrics once per run
    elif args.plot:
        sys.stderr.write(f"{PROG}: error: nothing to plot: no checkpoint could be checked\n")
    if args.json:
        print_json({**rep.as_dict(), "summary": rep.summary(), **({"plot": str(plot_path)} if plot_path else {})})
    else:
        print(format_report(rep) + (f"\nplot written to {plot_path}" if plot_path else ""))
    return 2 if rep.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
