r"""Reproduce the paper's tables and figures from readable definitions (SPEC §7).

Each result has one TOML file in ``experiments/`` (format, scales and outputs: ``experiments/README.md``).
Settings merge in this order, later winning: ``[train]`` < run < ``scales.S.train`` < ``parts.P.S.train`` <
``run.override.S``. Each (run, seed) is one :func:`margin_theory.train.train` run (``--cache-dir``: kept
under a hash of its configuration and reused); the final test accuracy is aggregated over seeds (mean +-
sample std), then the definition's analyses run: ``accuracy`` (the table and accuracy curves), ``ranks``
(Fig. 3), ``eigen`` (Fig. 2), ``margin`` (Fig. 5: :math:`\bar\gamma`, SPEC §2, and every margin definition
against test accuracy; Theorem 2's verdicts), ``reach`` (Fig. 6), ``xor`` (Theorem 1 / Fig. 4) and
``maxmargin`` (:mod:`margin_theory.maxmargin`). Outputs in ``--out``, written atomically: ``results.json``,
``results.md`` and PNG figures.

Command line::

    python -m margin_theory.experiment NAME|all --scale smoke|paper|tiny [--data-dir DIR]
        [--seeds K] [--parts P[,P]] [--device auto|cpu|cuda] [--protocol P|both] [--out DIR]
        [--cache-dir DIR] [--experiments-dir DIR] [--json] [--quiet] [--verbose]
    python -m margin_theory.experiment --list [--json]
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._util import (ArgumentParser, ConfigError, MarginTheoryError, NonFiniteLossError, atomic_write_json,
                    atomic_write_text, check_output_path, cli_entry, dumps_json, one_line, positive_int,
                    print_json, fmt_number as _f, is_int, is_number, progress, save_figure, tomllib, use_agg_backend)
from .checkpoint import latest_checkpoint, read_checkpoint
from .data import REGISTRY, available, canonical_name
from .margins import MARGIN_DEFINITIONS, accuracy, param_norm, predict
from .maxmargin import render_markdown as _md_maxmargin, run_experiment_cases
from .models import ModelSpec, QuadraticHead
from .protocols import get_protocol, protocol_names, with_recipe
from .runfolder import read_metrics
from .train import TrainConfig, build_model_for, load_data_for, select_device, train

__all__ = ["SCALES", "ANALYSES", "default_experiments_dir", "list_experiments", "load_definition",
           "plan_experiment", "run_experiment", "Plan", "PlannedRun", "main"]

PROG = "python -m margin_theory.experiment"
SCALES = ("tiny", "smoke", "paper")
ANALYSES = ("accuracy", "ranks", "eigen", "margin", "reach", "xor", "maxmargin")
#: the settings each analysis table (``[eigen]``, ``[scales.S.xor]`` ...) may hold besides ``paper_claims``
ANALYSIS_KEYS = {"eigen": ("run", "ks", "show_classes"), "xor": ("t_max", "points", "rtol", "gd_t_max", "gd_lr"),
                 "maxmargin": ("cases", "only", "heads", "steps", "lr", "points")}
#: TrainConfig fields the runner sets itself (a definition may not)
RUNNER_FIELDS = frozenset({"dataset", "n_train", "n_test", "data_dir", "download", "seed", "device", "out",
                           "resume", "overwrite", "quiet", "json", "checkpoint_every", "eval_batch_size"})
RUN_META_KEYS = frozenset({"label", "part", "paper", "scales", "override"})
PART_META_KEYS = frozenset({"dataset", "n_train", "n_test", "train", "target"})
#: every analysis but ``accuracy`` may have a table of its own
TOP_KEYS = frozenset({"name", "title", "reproduces", "analysis", "paper_source", "train", "runs", "parts",
                      "scales", "claims", *ANALYSES[1:]})
#: config fields that do not change the trained weights or history (left out of the cache key)
_CACHE_IGNORED = RUNNER_FIELDS - {"dataset", "n_train", "n_test", "seed"}


# --- Definitions ---
def default_experiments_dir() -> Path:
    """``experiments/`` beside the package (an editable install or a source checkout)."""
    return Path(__file__).resolve().parents[1] / "experiments"


def _experiments_dir(path: str | Path | None) -> Path:
    d = Path(path).expanduser() if path is not None else default_experiments_dir()
    if not d.is_dir():
        how = ("pass --experiments-dir DIR (the experiments/ folder of a margin_theory source checkout)"
               if path is None else "check --experiments-dir")
        raise ConfigError(f"experiments folder not found: {d}; {how}")
    return d


def list_experiments(experiments_dir: str | Path | None = None) -> list[dict]:
    """Name, title, what it reproduces, parts and scales of every definition (sorted by name)."""
    d = _experiments_dir(experiments_dir)
    return [{"name": s["name"], "title": s.get("title", ""), "reproduces": s.get("reproduces", ""),
             "parts": sorted(s.get("parts", {})), "analysis": s["analysis"], "file": s["_file"]}
            for s in (load_definition(f.stem, d) for f in sorted(d.glob("*.toml")))]


def load_definition(name: str, experiments_dir: str | Path | None = None) -> dict:
    """Read and validate ``experiments/<name>.toml``; :class:`ConfigError` names any problem."""
    d = _experiments_dir(experiments_dir)
    path = d / f"{name}.toml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or "") or not path.is_file():
        known = ", ".join(sorted(p.stem for p in d.glob("*.toml"))) or "none"
        raise ConfigError(f"unknown experiment {name!r}; known: {known}")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    _validate_definition(spec, path)
    spec["_file"] = str(path)
    return spec


def _is_count(v: Any) -> bool:
    return is_int(v) and v >= 1


def _is_target(t: Any) -> bool:
    """One accuracy in (0, 1] or a non-empty list of them."""
    vals = t if isinstance(t, list) else [t]
    return bool(vals) and all(type(x) in (int, float) and 0 < x <= 1 for x in vals)


def _strings(v: Any, at_least: int = 0) -> bool:
    return isinstance(v, list) and len(v) >= at_least and all(isinstance(x, str) for x in v)


def _validate_definition(spec: dict, path: Path) -> None:
    """The definition's structure; each table's training settings are checked by
    ``TrainConfig.from_dict`` (the merged ones again by :func:`plan_experiment`)."""
    fields = set(TrainConfig.__dataclass_fields__) - RUNNER_FIELDS

    def fail(msg: str):
        raise ConfigError(f"{path.name}: {msg}") from None

    def table(v: Any, ctx: str, allowed=None, **rules) -> dict:
        """``v``, a table of only ``allowed`` keys (None: any); ``rules``: key -> (test, what the value must be)."""
        if not isinstance(v, dict):
            fail(f"{ctx} must be a table, got {type(v).__name__}")
        if allowed is not None and (bad := sorted(set(v) - set(allowed))):
            fail(f"{ctx} has unknown key(s) {', '.join(bad)}")
        for k, (ok, what) in rules.items():
            if k in v and not ok(v[k]):
                fail(f"{ctx} {k} must be {what}, got {v[k]!r}")
        return v

    def call(ctx: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except MarginTheoryError as exc:
            fail(f"{ctx}: {exc}")

    def settings(d: Any, ctx: str, run: dict | None = None) -> dict:
        """A settings table with its recipe expanded; ``run``: the run's own settings it belongs to
        (then its model options must apply to the run's model), None for a shared table."""
        d = call(ctx, with_recipe, table(d, ctx))
        if bad := sorted(set(d) - fields):
            fail(f"{ctx}: unknown or runner-controlled training key(s) {', '.join(bad)}")
        call(ctx, TrainConfig.from_dict, {**(run or {}), **d}, applicable=run is not None)
        return d

    def analysis_table(d: Any, sec: str, ctx: str) -> None:
        table(d, ctx, ("paper_claims", *ANALYSIS_KEYS.get(sec, ())), paper_claims=(_strings, "a list of strings"))
        if sec == "xor" and (bad := [k for k, v in d.items() if k != "paper_claims" and type(v) not in (int, float)]):
            fail(f"{ctx} {', '.join(bad)} must be numbers")

    table(spec, "the top level", TOP_KEYS)
    if spec.get("name") != path.stem:
        fail(f"name = {spec.get('name')!r} must equal the file name {path.stem!r}")
    if not _strings(analysis := spec.get("analysis"), 1) or not set(analysis) <= set(ANALYSES):
        fail(f"analysis must be a non-empty list from {', '.join(ANALYSES)}")
    base = settings(spec.get("train", {}), "[train]")
    for sec in ANALYSES[1:]:
        analysis_table(spec.get(sec, {}), sec, f"[{sec}]")
    for s, sd in table(spec.get("scales", {}), "[scales]", SCALES).items():
        table(sd, f"[scales.{s}]", ("seeds", "train", "xor", "maxmargin"), seeds=(_is_count, "a positive integer"))
        for sec in ("xor", "maxmargin"):
            analysis_table(sd.get(sec, {}), sec, f"[scales.{s}.{sec}]")
        settings(sd.get("train", {}), f"[scales.{s}.train]")
    parts = table(spec.get("parts", {}), "[parts]")
    count = (_is_count, "a positive integer")
    for p, pd in parts.items():
        for s, ps in table(pd, f"[parts.{p}]", SCALES).items():
            ctx = f"[parts.{p}.{s}]"
            table(ps, ctx, PART_META_KEYS, n_train=count, n_test=count,
                  target=(_is_target, "an accuracy in (0, 1] or a non-empty list of them"))
            if not (isinstance(ps.get("dataset"), str) or _strings(ps.get("dataset"), 1)):
                fail(f"{ctx} needs dataset = NAME or a list of names")
            settings(ps.get("train", {}), f"[parts.{p}.{s}.train]")
    runs = spec.get("runs", [])
    if not isinstance(runs, list):
        fail(f"runs must be a list of [[runs]] tables, got {type(runs).__name__}")
    if not runs and not {"xor", "maxmargin"} & set(analysis):
        fail("no [[runs]]")
    labels = set()
    for i, r in enumerate(runs, 1):
        ctx = f"[[runs]] #{i}"
        if not isinstance(table(r, ctx).get("label"), str) or not isinstance(r.get("part"), str):
            fail(f"{ctx} needs label and part")
        if (r["part"], r["label"]) in labels:
            fail(f"{ctx}: duplicate label {r['label']!r} in part {r['part']!r}")
        labels.add((r["part"], r["label"]))
        ctx += f" ({r['label']})"
        table(r, ctx, scales=(lambda v: isinstance(v, list) and set(v) <= set(SCALES), f"from {', '.join(SCALES)}"),
              override=(lambda v: isinstance(v, dict) and set(v) <= set(SCALES),
                        f"a table of scales ({', '.join(SCALES)})"))
        if r["part"] not in parts:
            fail(f"{ctx}: part {r['part']!r} has no [parts.{r['part']}]")
        if "model" not in r:
            fail(f"{ctx} needs model")
        own = settings({k: v for k, v in r.items() if k not in RUN_META_KEYS}, ctx, run=base)
        for s, o in r.get("override", {}).items():
            settings(o, f"{ctx}.override.{s}", run={**base, **own})
    claims = spec.get("claims", [])      # [[claims]] part = P, order = [label, ...]: "first > second > ..."
    if not isinstance(claims, list):
        fail("claims must be a list of tables ([[claims]])")
    for i, c in enumerate(claims, 1):
        ok = isinstance(c, dict) and set(c) <= {"part", "order"} and isinstance(c.get("part"), str)
        if not ok or not _strings(c.get("order"), 2) or any((c["part"], lab) not in labels for lab in c["order"]):
            fail(f"[[claims]] #{i} needs part = P and order = [two or more run labels of P]")
    if "run" in spec.get("eigen", {}) and spec["eigen"]["run"] not in {lab for _, lab in labels}:
        fail(f"[eigen] run = {spec['eigen']['run']!r} is not a run label")


# --- Planning: definition + scale -> concrete runs ---
@dataclass
class PlannedRun:
    """One model of an experiment at one scale: the merged trainer settings and its seeds."""
    label: str
    part: str
    paper: str
    settings: dict                  # TrainConfig fields (without seed / device / out)
    seeds: list[int]


@dataclass
class Plan:
    name: str
    scale: str
    spec: dict
    runs: list[PlannedRun]
    parts: dict[str, dict]          # part -> {"dataset", "n_train", "n_test", "target", "note"?}
    skipped: list[dict]
    seeds: list[int]
    data_dir: str | None
    notes: list[str] = field(default_factory=list)
    quiet: bool = True              # analyses with long loops of their own show a progress bar unless quiet

    def part_runs(self, part: str) -> list[PlannedRun]:
        return [r for r in self.runs if r.part == part]

    def run_parts(self) -> list[str]:
        """The parts that have runs, in definition order."""
        return [p for p in self.parts if self.part_runs(p)]

    def config(self, run: PlannedRun, **extra):
        """The run's TrainConfig on its part's data (``extra``: seed, device ...)."""
        pi = self.parts[run.part]
        return TrainConfig.from_dict(dict(run.settings, dataset=pi["dataset"], n_train=pi["n_train"],
                                          n_test=pi["n_test"], **extra))


def _how_to_get(dataset: str, data_dir: str | None) -> str:
    dd = data_dir or "DIR"
    s = REGISTRY[dataset]
    if not s.downloadable:
        return (f"{dataset} is a local folder {s.folder}/ ({', '.join(s.files)}) and cannot be downloaded"
                + (f"; or get the full set with: python -m margin_theory.data download {s.subset_of} "
                   f"--data-dir {dd}" if s.subset_of else ""))
    return f"get it with: python -m margin_theory.data download {dataset} --data-dir {dd}"


def plan_experiment(spec: dict, scale: str, *, data_dir: str | None = None, seeds: int | None = None,
                    parts: list[str] | None = None, protocol: str | None = None) -> Plan:
    """Resolve ``spec`` at ``scale``: each part's data (missing: :class:`ConfigError` at paper scale, else the
    part is skipped with a note), the runs and their merged settings; ``protocol`` overrides every run's."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    name = spec["name"]
    sc = spec.get("scales", {}).get(scale, {})
    seed_list = list(range(seeds if seeds is not None else int(sc.get("seeds", 1))))
    all_parts = list(spec.get("parts", {}))
    if bad := [p for p in parts or [] if p not in all_parts]:
        raise ConfigError(f"{name} has no part(s) {', '.join(bad)}; its parts: {', '.join(all_parts) or 'none'}")
    chosen = [p for p in all_parts if not parts or p in parts]
    plan = Plan(name=name, scale=scale, spec=spec, runs=[], parts={}, skipped=[], seeds=seed_list,
                data_dir=data_dir, notes=[f"only the part(s) {', '.join(chosen)} were run (--parts)"] if parts else [])
    for p in chosen:
        ps = spec["parts"][p].get(scale)
        if ps is None:
            plan.skipped.append({"part": p, "reason": f"part {p!r} has no {scale} scale"})
            continue
        names = [canonical_name(n) for n in (ps["dataset"] if isinstance(ps["dataset"], list) else [ps["dataset"]])]
        problems = []
        for ds in names:
            ok, where = available(ds, data_dir)
            if ok:
                plan.parts[p] = {"dataset": ds, "n_train": ps.get("n_train"), "n_test": ps.get("n_test"),
                                 "target": ps.get("target")}
                if ds != names[0]:
                    plan.parts[p]["note"] = f"{names[0]} not found; used {ds}"
                break
            problems.append(f"{ds}: {where}; {_how_to_get(ds, data_dir)}")
        else:
            msg = f"part {p!r} needs " + " or ".join(problems)
            if scale == "paper":
                raise ConfigError(f"{name} at paper scale: {msg} (paper scale needs the real data; "
                                  f"use --scale smoke, or --parts to run the other parts)")
            plan.skipped.append({"part": p, "reason": msg})
    for r in spec.get("runs", []):
        if r["part"] not in plan.parts or scale not in r.get("scales", SCALES):
            continue
        settings = {"protocol": TrainConfig.protocol}
        for t in (spec.get("train", {}), {k: v for k, v in r.items() if k not in RUN_META_KEYS}, sc.get("train", {}),
                  spec["parts"][r["part"]][scale].get("train", {}), r.get("override", {}).get(scale, {})):
            settings.update(with_recipe(t))     # a named recipe (protocols.RECIPES) under each table's own keys
        if protocol is not None:
            settings["protocol"] = get_protocol(protocol).name
        run = PlannedRun(label=r["label"], part=r["part"], paper=str(r.get("paper", "not stated")),
                         settings=settings, seeds=seed_list)
        try:
            plan.config(run)
        except MarginTheoryError as exc:
            raise ConfigError(f"{spec['_file']}: run {r['label']!r} ({scale}): {exc}") from None
        plan.runs.append(run)
    return plan


# --- Running ---
def _cache_key(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _CACHE_IGNORED}
    return hashlib.sha256(dumps_json(d).encode()).hexdigest()[:16]


def _load_cached(folder: Path, config):
    """A finished trainer run folder with the same configuration -> (model, history, final), else None."""
    try:
        final = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        same = final.get("status") == "ok" and _cache_key(config) == _cache_key(TrainConfig.from_dict(final["config"]))
        if same and (ck := latest_checkpoint(folder)) is not None:
            c, history = read_checkpoint(ck, device="cpu"), read_metrics(folder)
            if history and int(history[-1]["epoch"]) == c.epoch == config.epochs:
                return c.model, history, final
    except (MarginTheoryError, OSError, ValueError, KeyError):
        pass
    return None


def _r(v: Any) -> Any:
    """A float rounded to 7 significant digits (keeps results.json small); other values as they are."""
    return float(f"{v:.7g}") if isinstance(v, float) and math.isfinite(v) and v != 0.0 else v


def _compact_history(history: list[dict]) -> list[dict]:
    """The metrics lines without the monitors' notes, floats to 7 significant digits."""
    out = []
    for h in history:
        row = {k: _r(h.get(k)) for k in ("epoch", "train_loss", "train_acc", "test_acc", *MARGIN_DEFINITIONS,
                                         "theta_norm", "lr", "epoch_seconds")}
        if isinstance(h.get("theorem2"), dict):
            row["theorem2"] = {k: _r(v) for k, v in h["theorem2"].items() if k != "note"}
        out.append(row)
    return out


def _train_one(config, cache_dir: Path | None, label: str, verbose: bool) -> dict:
    """Train (or load from the cache) one run; returns the per-seed record (+ live objects)."""
    t0 = time.perf_counter()
    rec, cached = {"seed": config.seed, "status": "ok"}, None
    if cache_dir is not None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower() or "run"
        folder = cache_dir / f"{slug}-s{config.seed}-{_cache_key(config)}"
        rec["cache_folder"] = str(folder)
        if (cached := _load_cached(folder, config)) is None:
            config = copy.deepcopy(config)
            config.out, config.checkpoint_every, config.overwrite = str(folder), 0, True
    rec["cached"] = cached is not None
    if cached is None:
        log = (lambda msg: sys.stderr.write(f"  [{label} seed {config.seed}] {msg}\n")) if verbose else None
        try:
            res = train(config, progress=False, log=log)
        except NonFiniteLossError as exc:
            return {"seed": config.seed, "status": "diverged", "error": one_line(exc),
                    "history": _compact_history(getattr(exc, "history", []) or []),
                    "wall_s": time.perf_counter() - t0, "_model": None}
        cached = res.model, res.history, res.final
    model, history, final = cached
    last = history[-1]
    rec.update({k: last.get(k) for k in ("test_acc", "train_acc", "gamma_bar", "gamma_min", "degree",
                                         "normalisation")})
    rec.update({k: final.get(k) for k in ("best_test_acc", "parameters", "unique_parameters", "n_train", "n_test")})
    rec.update({"epochs": int(last["epoch"]), "train_seconds": final.get("total_seconds"),
                "device": final.get("device"), "history": _compact_history(history),
                "wall_s": time.perf_counter() - t0, "_model": model, "_config": config})
    return rec


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [float(x) for x in xs if is_number(x)]
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _summary(run: PlannedRun, recs: list[dict]) -> dict:
    """One run's row of results.json: its settings and the seeds aggregated (mean +- sample std)."""
    ok = [r for r in recs if r["status"] == "ok"]
    first = ok[0] if ok else {}
    mean, std = _mean_std([r.get("test_acc") for r in ok])
    bmean, bstd = _mean_std([r.get("best_test_acc") for r in ok])
    model = ModelSpec.from_mapping(run.settings)
    return {"label": run.label, "part": run.part, "model": run.settings.get("model"),
            "rank": model.rank if model.head == "lowrank" else None,
            "paper": run.paper, "settings": run.settings, "epochs": run.settings.get("epochs", TrainConfig.epochs),
            "parameters": first.get("parameters"), "test_acc_mean": mean, "test_acc_std": std,
            "protocol": run.settings["protocol"], "best_test_acc_mean": bmean, "best_test_acc_std": bstd,
            "n_ok": len(ok), "n_seeds": len(recs), "normalisation": first.get("normalisation"),
            "degree": first.get("degree"), "wall_s": float(sum(r["wall_s"] for r in recs)),
            "train_s": float(sum(r.get("train_seconds") or 0.0 for r in recs)),
            "per_seed": [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]}


def run_experiment(name: str, scale: str, *, data_dir: str | None = None, seeds: int | None = None,
                   parts: list[str] | None = None, device: str = "auto", out: str | Path | None = None,
                   cache_dir: str | Path | None = None, experiments_dir: str | Path | None = None,
                   quiet: bool = False, verbose: bool = False, command: str | None = None,
                   protocol: str | None = None) -> dict:
    """Run experiment ``name`` at ``scale`` under ``protocol`` (see :func:`plan_experiment`); write
    results.json, results.md and figures in ``out``. Returns what results.json holds."""
    spec = load_definition(name, experiments_dir)
    plan = plan_experiment(spec, scale, data_dir=data_dir, seeds=seeds, parts=parts, protocol=protocol)
    plan.quiet = quiet
    out = check_output_path(out if out is not None else Path("results") / scale / name, kind="dir")
    if cache_dir is not None:
        cache_dir = check_output_path(cache_dir, kind="dir", flag="--cache-dir")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "experiment": name, "title": spec.get("title", ""), "reproduces": spec.get("reproduces", ""),
        "paper_source": spec.get("paper_source", ""), "definition": spec["_file"], "scale": scale,
        "seeds": plan.seeds, "device": device, "data_dir": data_dir, "out": str(out),
        "protocol": ", ".join(sorted({r.settings["protocol"] for r in plan.runs})) or (protocol or "paper"),
        "cache_dir": str(cache_dir) if cache_dir else None, "command": command, "started": _now(),
        "parts": {p: {k: v for k, v in pi.items() if k != "target"} for p, pi in plan.parts.items()},
        "skipped": plan.skipped, "notes": list(plan.notes), "runs": [], "analysis": {},
        "claims": [c for c in spec.get("claims", []) if c["part"] in plan.parts], "figures": [],
    }
    jobs = [(r, s) for r in plan.runs for s in r.seeds]
    live: dict[tuple[str, str], list[dict]] = {}
    with progress(total=len(jobs), desc=f"{name} ({scale})", quiet=quiet, unit="run") as bar:
        for i, (run, seed) in enumerate(jobs):
            cfg = plan.config(run, data_dir=data_dir, seed=seed, device=device, quiet=True)
            rec = _train_one(cfg, cache_dir, f"{run.part} {run.label}", verbose)
            live.setdefault((run.part, run.label), []).append(rec)
            bar.update(1)
            if not quiet:
                acc = rec.get("test_acc")
                what = f"test acc {100 * acc:.2f}%" if isinstance(acc, (int, float)) else rec["status"]
                bar.write(f"[{i + 1}/{len(jobs)}] {name} {run.part} {run.label} seed {seed}: {what} "
                          f"({rec['wall_s']:.1f} s{', cached' if rec.get('cached') else ''})", file=sys.stderr)
    for run in plan.runs:
        results["runs"].append(row := _summary(run, live.get((run.part, run.label), [])))
        if row["n_ok"]:
            first = next(s for s in row["per_seed"] if s["status"] == "ok")
            results["parts"][run.part].update({"n_train": first.get("n_train"), "n_test": first.get("n_test")})
    use_agg_backend()
    for a in spec["analysis"]:
        results["analysis"][a] = _ANALYSES[a](plan, results, live, out)
    if devices := sorted({s.get("device") for r in results["runs"] for s in r["per_seed"] if s.get("device")}):
        results["device"] = ", ".join(devices)
    results["wall_time_s"] = time.perf_counter() - t_start
    results["finished"] = _now()
    results["figures"] = sorted({f for a in results["analysis"].values() if isinstance(a, dict)
                                 for f in a.get("figures", [])})
    text = dumps_json(results, indent=2)      # serialised once: the file and the returned JSON-clean copy
    atomic_write_text(out / "results.json", text + "\n")
    atomic_write_text(out / "results.md", render_markdown(results))
    return json.loads(text)


# --- Analyses (small and explicit); each returns a JSON-able dict with "figures" ---
def _finished(live: dict, run: PlannedRun) -> list[dict]:
    """The per-seed records of ``run`` that finished."""
    return [r for r in live.get((run.part, run.label), []) if r["status"] == "ok"]


def _curves(recs: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """Epochs and a (seeds, epochs) array of the test accuracy over finished records."""
    rows = [r["history"] for r in recs]
    if not rows:
        return None
    n = min(len(h) for h in rows)
    return _floats(row["epoch"] for row in rows[0][:n]), np.array([_floats(r["test_acc"] for r in h[:n]) for h in rows])


def _subplots(*args, **kw):
    """``plt.subplots``; pyplot is imported only once :func:`use_agg_backend` has run."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kw)


def _part_axes(plan: Plan):
    """(parts with runs, figure, one axis per part), or (parts, None, None) when there is none."""
    if not (parts := plan.run_parts()):
        return parts, None, None
    fig, axes = _subplots(1, len(parts), figsize=(6.2 * len(parts), 4.4), squeeze=False)
    return parts, fig, axes[0]


def _dress(ax, xlabel: str, ylabel: str, title: str | None = None, legend: int | None = 8, **title_kw) -> None:
    """Labels, title, grid and legend of one axis (the house style)."""
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title, **title_kw)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=legend, loc="lower right")


def _part_title(results: dict, p: str, test: bool = False) -> str:
    pi = results["parts"][p]
    return f"{p}: {pi['dataset']} ({pi.get('n_train')} train" + (f" / {pi.get('n_test')} test)" if test else ")")


def _save(fig, out: Path, fname: str, title: str, fontsize: int = 10, tight: bool = True) -> str:
    fig.suptitle(title, fontsize=fontsize)
    if tight:
        fig.tight_layout()
    save_figure(fig, out / fname)
    return fname


def analysis_accuracy(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Test-accuracy curves (mean over seeds, band = min..max) per part; one figure."""
    parts, fig, axes = _part_axes(plan)
    if fig is None:
        return {"figures": []}
    for ax, p in zip(axes, parts):
        later = []                      # the mean accuracies after initialisation set the y range
        for run in plan.part_runs(p):
            if (c := _curves(_finished(live, run))) is None:
                continue
            ep, v = c
            m = 100 * np.nanmean(v, axis=0)
            line, = ax.plot(ep, m, marker="o", ms=3, label=f"{run.label} ({m[-1]:.2f}%)")
            if v.shape[0] > 1:
                ax.fill_between(ep, 100 * np.nanmin(v, 0), 100 * np.nanmax(v, 0), color=line.get_color(), alpha=0.2)
            later.extend(m[1:])
        _dress(ax, "epoch (0 = initialisation)", "test accuracy (%)", _part_title(results, p, test=True))
        if np.isfinite(later).any():
            ax.set_ylim(max(0.0, np.nanmin(later) - 5), 100.5)
    return {"figures": [_save(fig, out, "accuracy_curves.png", f"{plan.spec.get('title', plan.name)}\ntest accuracy "
                              f"over epochs ({plan.scale} scale, mean over {len(plan.seeds)} seed(s), "
                              "band = min..max)")]}


def _rank_checks(ranked: list[dict], refs: list[dict]) -> dict:
    """Fig. 3's claims: rank 1 beats each reference; accuracy rises with rank and saturates."""
    rs, ms = [r["rank"] for r in ranked], [r["test_acc_mean"] for r in ranked]
    checks = {}
    if rs[0] == 1:
        for ref in refs:
            if (acc := ref["test_acc_mean"]) is not None:
                checks[f"rank 1 > {ref['label']}"] = {"holds": bool(ms[0] > acc), "rank1": ms[0], ref["label"]: acc,
                                                      "difference_pct_points": 100 * (ms[0] - acc)}
    gains = [100 * (b - a) for a, b in zip(ms, ms[1:])]
    checks["accuracy rises with rank"] = {
        "gains_pct_points": {f"{a}->{b}": g for a, b, g in zip(rs, rs[1:], gains)},
        "non_decreasing": bool(all(g >= -0.05 for g in gains)),
        "best_rank": rs[int(np.argmax(ms))],
        "last_gain_pct_points": gains[-1] if gains else None,
        "saturates": bool(gains and abs(gains[-1]) < max(0.5, 0.25 * max(abs(g) for g in gains))),
    }
    return checks


def analysis_ranks(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Fig. 3: accuracy against rank, with linear and relu2 as references; the paper's three claims."""
    res: dict[str, Any] = {"parts": {}, "figures": []}
    parts, fig, axes = _part_axes(plan)
    if fig is None:
        return res
    for ax, p in zip(axes, parts):
        rows = [r for r in results["runs"] if r["part"] == p]
        ranked = sorted((r for r in rows if r["rank"]), key=lambda r: r["rank"])   # two of one rank: both kept
        refs = [r for r in rows if not r["rank"]]
        rs, ms = [r["rank"] for r in ranked], [r["test_acc_mean"] for r in ranked]
        res["parts"][p] = info = {"ranks": rs, "test_acc_mean": ms,
                                  "references": {r["label"]: r["test_acc_mean"] for r in refs}}
        if rs and None not in ms:
            ax.errorbar(rs, [100 * m for m in ms], yerr=[100 * (r["test_acc_std"] or 0.0) for r in ranked],
                        marker="o", capsize=3, label="Low-Rank DIQNN")
            for ref in refs:
                if (acc := ref["test_acc_mean"]) is not None:
                    ax.axhline(100 * acc, ls="--", lw=1.2, color="C1" if "relu" in ref["label"] else "C2",
                               label=f"{ref['label']} ({100 * acc:.2f}%)")
            info["checks"] = _rank_checks(ranked, refs)
        ax.set_xscale("log", base=2)
        ax.set_xticks(rs or [1], [str(r) for r in rs or [1]])
        _dress(ax, "rank r of the Low-Rank DIQNN", "final test accuracy (%)", _part_title(results, p))
    res["figures"].append(_save(fig, out, "rank_accuracy.png", f"Fig. 3: accuracy vs rank ({plan.scale} scale, "
                                f"mean +- std over {len(plan.seeds)} seed(s))"))
    return res


def _sorted_eigen(W):
    """Eigenpairs of each symmetric ``W[i]`` (float64) ordered by |eigenvalue|, largest first:
    ``(lam (C, d), V (C, d, d) with eigenvectors as columns, raw eigenvalues (C, d))``."""
    evals, evecs = torch.linalg.eigh(W)                                          # ascending
    order = torch.argsort(evals.abs(), dim=1, descending=True)
    C, d = evals.shape
    lam = torch.gather(evals, 1, order)
    V = torch.gather(evecs, 2, order.unsqueeze(1).expand(C, d, d))
    return lam, V, evals


def _cos(a, b) -> float:
    """|cos| of the angle between two vectors."""
    return float((a @ b).abs() / (a.norm() * b.norm()).clamp_min(1e-300))


def _eigen_report(model, W, sta, xbar, classes, ks, Xte, yte, drop_linear: bool = False):
    """Eigenpairs of every W_i, their leading eigenvector against STA_i per class, and the test
    accuracy of ``model`` with head weights W and with W_i cut to its top-k eigenpairs (by |lambda|);
    a head's linear term (``authors``) is kept, or zeroed with ``drop_linear`` (x -> x^T W x alone).
    Returns ``(lam, V, {"per_class", "topk", "summary"})``."""
    lam, V, evals = _sorted_eigen(W)
    C, v1 = lam.shape[0], V[:, :, 0]
    per_class = []
    for i in range(C):
        c = {"class": classes[i] if i < len(classes) else str(i), "leading_eigenvalue": float(lam[i, 0]),
             "second_eigenvalue": float(lam[i, 1]) if lam.shape[1] > 1 else None,
             "n_positive": int((evals[i] > 0).sum()), "n_negative": int((evals[i] < 0).sum())}
        for key, s in (("cos_sta", sta), ("cos_sta_centred", sta - xbar)):
            c[key] = _cos(v1[i], s[i])
            c[f"{key}_other_classes_mean"] = float(np.mean([_cos(v1[i], s[j]) for j in range(C) if j != i]))
        per_class.append({**c, "energy_top1": float(lam[i, 0] ** 2 / (lam[i] ** 2).sum())})
    m = copy.deepcopy(model)
    topk = []
    with torch.no_grad():
        m.head.weight.copy_(W.to(m.head.weight.dtype))
        if drop_linear and m.head.linear is not None:
            m.head.linear.zero_()
        full_acc = accuracy(predict(m, Xte), yte)
        for k in ks:
            Vk = V[:, :, :k]
            Wk = (Vk * lam[:, None, :k]) @ Vk.transpose(1, 2)
            m.head.weight.copy_(0.5 * (Wk + Wk.transpose(1, 2)).to(m.head.weight.dtype))
            topk.append({"k": k, "test_acc": accuracy(predict(m, Xte), yte),
                         "energy_fraction_mean": float(((lam[:, :k] ** 2).sum(1) / (lam ** 2).sum(1)).mean())})
    summary = {k.replace("_classes_mean", "") + "_mean": float(np.mean([c[k] for c in per_class]))
               for k in per_class[0] if k.startswith("cos_")}      # cos_sta -> cos_sta_mean, ..._other_mean
    summary.update(full_test_acc=full_acc, smallest_k_within_1pt=next(
        (t["k"] for t in topk if t["test_acc"] >= full_acc - 0.01), topk[-1]["k"]))
    return lam, V, {"per_class": per_class, "topk": topk, "summary": summary}


def _eigen_figure(out: Path, rows: list[tuple], sta, xbar, img: tuple[int, int], ncls: int) -> str:
    """Fig. 2 (left): per class, the leading eigenvector of each matrix in ``rows``
    ((label, V, lam, per_class) each), STA_i and STA_i - mean input."""
    nr = len(rows) + 2
    fig, axes = _subplots(nr, ncls, figsize=(1.55 * ncls + 1.2, 1.8 * nr + 0.5), squeeze=False)
    for i in range(ncls):
        for r, (_, V, lam, pc) in enumerate(rows):
            v = V[i, :, 0] * (1.0 if float(V[i, :, 0] @ sta[i]) >= 0 else -1.0)    # sign: <v, STA_i> >= 0
            a = float(v.abs().max())
            im0 = axes[r, i].imshow(v.reshape(img).numpy(), cmap="RdBu_r", vmin=-a, vmax=a)
            axes[r, i].set_title(f"{pc[i]['class']}: $\\lambda$={float(lam[i, 0]):+.2g}\n"
                                 f"|cos| STA {pc[i]['cos_sta']:.2f}/{pc[i]['cos_sta_centred']:.2f}", fontsize=6)
        im1 = axes[nr - 2, i].imshow(sta[i].reshape(img).numpy(), cmap="gray")
        s2 = sta[i] - xbar
        b = float(s2.abs().max())
        axes[nr - 1, i].imshow(s2.reshape(img).numpy(), cmap="RdBu_r", vmin=-b, vmax=b)
        for r in range(nr):
            axes[r, i].set(xticks=[], yticks=[])
    for r, lab in enumerate([row[0] for row in rows] + ["STA_i\n(softmax-weighted)", "STA_i - mean\ninput"]):
        axes[r, 0].set_ylabel(lab, fontsize=7)
    fig.colorbar(im0, ax=axes[: nr - 2, :].ravel().tolist(), fraction=0.02, pad=0.01, label="entry (red +, blue -)")
    fig.colorbar(im1, ax=axes[nr - 2, :].tolist(), fraction=0.02, pad=0.01, label="pixel value")
    return _save(fig, out, "eigenvectors_sta.png", "Fig. 2: leading eigenvectors (largest |eigenvalue|; "
                 "sign aligned with STA_i) vs each class's spike-triggered average; |cos| with STA / with "
                 "centred STA", fontsize=9, tight=False)


def analysis_eigen(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Fig. 2: eigen-decomposition of every trained W_i; leading eigenvectors vs STA; top-k accuracy.

    * eigenpairs of each symmetric W_i by ``torch.linalg.eigh`` (float64), ordered by |lambda|;
    * STA_i = sum_n p_i(x_n) x_n / sum_n p_i(x_n), p = softmax(f(x_n)), over the training set;
    * |cos(v_i1, STA_i)| and |cos(v_i1, STA_i - mean_n x_n)|; baseline = mean over j != i; the shown
      eigenvector's (arbitrary) sign makes <v_i1, STA_i> >= 0;
    * top-k: W_i^(k) = sum of the k eigenpairs of largest |lambda|, test accuracy of that model;
    * the same for the learned update Delta W_i = W_i - W_i(0) (the initialisation rebuilt from the run's
      seed, checked against the recorded initial ||theta||): W(0)'s own Wigner spectrum hides the learned part.
    """
    cfg_e = plan.spec.get("eigen", {})
    want = cfg_e.get("run", plan.runs[0].label if plan.runs else None)     # never another run than named
    run = next((r for r in plan.runs if r.label == want), None)
    if run is None:
        return {"figures": [], "note": "no run to analyse (its data was skipped)"}
    if not (recs := _finished(live, run)):
        return {"figures": [], "note": "the run did not finish"}
    rec, cfg = recs[0], recs[0]["_config"]
    model = copy.deepcopy(rec["_model"]).to("cpu").eval()
    if not isinstance(model.head, QuadraticHead):
        raise ConfigError(f"eigen analysis needs a full quadratic head, got {type(model.head).__name__}")
    ds = load_data_for(cfg, torch.device("cpu"))
    with torch.no_grad():
        feats = model.features(ds.X_train).flatten(1).to(torch.float64)
        p = torch.softmax(predict(model, ds.X_train).to(torch.float64), dim=1)          # (N, C)
    W = model.head.weight.detach().to(torch.float64)
    C, d, _ = W.shape
    sta = (p.T @ feats) / p.sum(0).unsqueeze(1)                                  # (C, d)
    xbar = feats.mean(0)
    ks = sorted({int(k) for k in cfg_e.get("ks", [1, 2, 4, 8, 16, 32]) if 1 <= int(k) <= d} | {d})
    lam, V, trained = _eigen_report(model, W, sta, xbar, ds.classes, ks, ds.X_test, ds.y_test)
    rows = [("leading eigenvector\nof trained $W_i$", V, lam, trained["per_class"])]
    with torch.random.fork_rng(devices=[]):            # the learned update Delta W = W - W(0)
        torch.manual_seed(cfg.seed)
        m0 = build_model_for(cfg, ds)
    W0 = m0.head.weight.detach().to(torch.float64)
    init_norm = float(param_norm(m0.parameters() if rec.get("normalisation") == "full"
                                 else m0.head.parameters()).detach())
    recorded = rec["history"][0].get("theta_norm")
    if isinstance(recorded, (int, float)) and abs(init_norm - recorded) <= 1e-5 * max(recorded, 1e-12):
        dlam, dV, delta = _eigen_report(model, W - W0, sta, xbar, ds.classes, ks, ds.X_test, ds.y_test,
                                        drop_linear=True)
        delta.update({"norm_ratio_update_to_init": float((W - W0).norm() / W0.norm()),
                      "note": "Delta W_i = W_i - W_i(0): the initialisation rebuilt from the run's seed "
                              f"(||theta(0)|| = {init_norm:.6g} equals the recorded initial ||theta||); the model "
                              "x -> x^T Delta W_i x alone (any linear term zeroed) is evaluated for the top-k "
                              "accuracies"})
        rows.append(("leading eigenvector\nof $\\Delta W_i = W_i - W_i(0)$", dV, dlam, delta["per_class"]))
    else:
        delta = {"note": f"initialisation not reproducible here (rebuilt ||theta(0)|| {init_norm:.6g} vs recorded "
                         f"{recorded}); Delta W analysis skipped"}
    figs = []
    shape = tuple(int(s) for s in model.input_shape)
    if len(shape) == 3 and shape[0] == 1 and shape[1] * shape[2] == d:
        figs.append(_eigen_figure(out, rows, sta, xbar, shape[1:], min(C, int(cfg_e.get("show_classes", C)))))
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12, 4.3))
    for topk, mk, lab in ((trained["topk"], "o", "top-k eigenpairs of trained $W_i$"),
                          (delta.get("topk"), "s", "top-k eigenpairs of $\\Delta W_i$ only (init removed)")):
        if topk:
            ax1.plot([t["k"] for t in topk], [100 * t["test_acc"] for t in topk], marker=mk, label=lab)
    full_acc = trained["summary"]["full_test_acc"]
    ax1.axhline(100 * full_acc, ls="--", color="k", lw=1, label=f"full trained model ({100 * full_acc:.2f}%)")
    ax1.set_xscale("log", base=2)
    _dress(ax1, "k (eigenpairs of largest |eigenvalue| kept in every $W_i$)", "test accuracy (%)",
           "test accuracy of the truncated DIQNN", legend=None)
    ax1.legend(fontsize=8)
    idx = np.arange(1, d + 1)
    spectra = [(lam, "-", 1.5, "trained $W_i$")]
    if "topk" in delta:
        spectra += [(dlam, "--", 1.5, "$\\Delta W_i = W_i - W_i(0)$"),
                    (_sorted_eigen(W0)[0], ":", 1, "initial $W_i(0)$")]
    for ev, ls, lw, lab in spectra:
        ax2.plot(idx, ev.abs().mean(0).numpy(), ls=ls, lw=lw, label=f"{lab} (mean over classes)")
    top = float(lam.abs().max())
    ax2.set(xscale="log", yscale="log", ylim=(1e-6 * top, 2 * top),      # the update has ~0 eigenvalues along
            xlabel="index (sorted by |eigenvalue|)", ylabel="|eigenvalue|", title="spectra")   # never-lit pixels
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    figs.append(_save(fig, out, "eigen_topk.png", f"Fig. 2 (right): low-rank structure of the trained DIQNN "
                      f"({plan.scale} scale, {results['parts'][run.part]['dataset']})"))
    return {"run": run.label, "seed": rec["seed"], "sta_definition":
            "STA_i = sum_n p_i(x_n) x_n / sum_n p_i(x_n), p = softmax(f(x_n)), training set; "
            "|cos| with the leading eigenvector (largest |eigenvalue|); baseline = mean |cos| with the other "
            "classes' STA",
            **trained, "delta": delta, "paper_claims": cfg_e.get("paper_claims", []), "figures": figs}


def _spearman(v: np.ndarray, ta: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Spearman (rho, p) of ``v`` against test accuracy over the epochs where both are finite (NaN for
    fewer than 3 epochs or a constant trajectory, where it is undefined), and that mask."""
    from scipy.stats import spearmanr      # (scipy.stats takes seconds to import)

    ok = np.isfinite(v) & np.isfinite(ta)
    if ok.sum() >= 3 and np.ptp(v[ok]) > 0 and np.ptp(ta[ok]) > 0:
        rho, pval = spearmanr(v[ok], ta[ok])
        return float(rho), float(pval), ok
    return float("nan"), float("nan"), ok


#: the Theorem 2 monitor flags listed per epoch in Fig. 5's results (key -> predicate on a monitor line)
_MONITOR_EPOCHS = {"theorem_applies_epochs": lambda m: m.get("theorem_applies"),
                   "velocity_positive_epochs": lambda m: (m.get("velocity") or 0) > 0,
                   "A1_epochs": lambda m: m.get("A1"), "A3_epochs": lambda m: m.get("A3")}
_MARGIN_LABELS = {"gamma_bar": r"$\bar\gamma$ (q/$\|\theta\|^L$, mean)", "gamma_min": r"$\gamma_{\min}$",
                  "gamma_output": "output-normalised (authors)", "gamma_smoothed": "smoothed (Lyu & Li)"}


def _floats(v) -> np.ndarray:
    """Numbers (None: NaN) as a float array."""
    return np.array([np.nan if x is None else x for x in v], float)


def _minmax(v) -> np.ndarray:
    v = _floats(v)
    lo, hi = np.nanmin(v), np.nanmax(v)
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def _margin_seed(rec: dict) -> dict:
    """Fig. 5 for one seed: every margin definition against test accuracy (Spearman), the Theorem 2 monitors."""
    h = rec["history"]
    ta = _floats(r["test_acc"] for r in h)
    curves = {key: [r.get(key) for r in h] for key in MARGIN_DEFINITIONS}
    per_def, pvals = {}, {}
    for key in MARGIN_DEFINITIONS:
        v = _floats(curves[key])
        rho, pvals[key], ok = _spearman(v, ta)
        dv = np.diff(v[ok])
        per_def[key] = {"spearman_rho": rho, "initial": float(v[ok][0]) if ok.any() else None,
                        "final": float(v[ok][-1]) if ok.any() else None,
                        "fraction_epochs_rose": float((dv > 0).mean()) if dv.size else None}
    gb = _floats(curves["gamma_bar"])
    inc = np.diff(gb) > 0
    mons = [{"epoch": r["epoch"], **r["theorem2"]} for r in h if r.get("theorem2")]
    return {
        "seed": rec["seed"], "epochs": [float(r["epoch"]) for r in h], "gamma_bar": gb.tolist(),
        "test_acc": ta.tolist(), "spearman_rho": per_def["gamma_bar"]["spearman_rho"],
        "spearman_p": pvals["gamma_bar"], "definitions": per_def, "curves": curves,
        "fraction_epochs_gamma_bar_rose": float(inc.mean()) if inc.size else None,
        "gamma_bar_initial": float(gb[0]), "gamma_bar_final": float(gb[-1]),
        "normalisation": rec.get("normalisation"), "degree": rec.get("degree"),
        "monitors": mons, "monitor_epochs": len(mons),
        **{k: [m["epoch"] for m in mons if pred(m)] for k, pred in _MONITOR_EPOCHS.items()},
        "final_monitor": ({k: mons[-1].get(k) for k in ("epoch", "rho", "cv", "eps", "delta_min", "kappa",
                                                         "velocity", "lower_bound")} if mons else None),
    }


def _margin_column(axes, title: str, s0: dict) -> None:
    """Fig. 5's three panels of one run (its first seed): gamma_bar and test accuracy, the Theorem 2
    monitors, every margin definition min-max scaled beside test accuracy."""
    ax = axes[0]
    l1 = ax.plot(s0["epochs"], s0["gamma_bar"], color="tab:green", marker="o", ms=3,
                 label=r"$\bar\gamma$ (training set)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"average margin $\bar\gamma = $ mean $q_n/\|\theta\|^L$" + f" (L={s0['degree']}, "
                  f"{s0['normalisation']})", fontsize=8)
    ax2 = ax.twinx()
    l2 = ax2.plot(s0["epochs"], [100 * a for a in s0["test_acc"]], color="tab:blue", marker="s", ms=3,
                  label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    ax.legend(l1 + l2, [x.get_label() for x in l1 + l2], fontsize=8, loc="lower right")
    ax.set_title(f"{title}\nSpearman rho = {s0['spearman_rho']:.3f} (seed {s0['seed']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[1]
    if mons := s0["monitors"]:
        me = [m["epoch"] for m in mons]
        for key, mk, lab in (("rho", "o", r"$\rho$ (alignment)"), ("cv", "s", r"$cv$ (spread of runner-up weights)"),
                             ("eps", "^", r"$\varepsilon$ (other classes)")):
            ax.plot(me, _floats(m[key] for m in mons), marker=mk, label=lab)
        for m in mons:
            ax.annotate("A1-3" if m.get("theorem_applies") else "no claim", (m["epoch"], 0.02), fontsize=6,
                        rotation=90, color="tab:green" if m.get("theorem_applies") else "tab:gray",
                        xycoords=("data", "axes fraction"))
        ax.set_yscale("symlog", linthresh=1e-2)
    else:
        ax.text(0.5, 0.5, "no Theorem 2 monitors in this run", ha="center", transform=ax.transAxes)
    _dress(ax, "epoch", "Theorem 2 quantities (subset)",
           r"Theorem 2 monitors: (A3) needs $\rho > cv + \varepsilon$", legend=None, fontsize=9)
    if mons:
        ax.legend(fontsize=8)
    ax = axes[2]
    for key in MARGIN_DEFINITIONS:
        ax.plot(s0["epochs"], _minmax(s0["curves"][key]), marker=".",
                label=f"{_MARGIN_LABELS.get(key, key)}: rho {s0['definitions'][key]['spearman_rho']:+.2f}")
    ax.plot(s0["epochs"], _minmax(s0["test_acc"]), color="black", ls="--", lw=1.5, label="test accuracy")
    _dress(ax, "epoch", "min-max scaled over the run", "every margin definition vs test accuracy "
           "(Spearman rho with test acc.)", legend=7, fontsize=9)


def analysis_margin(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Fig. 5: gamma_bar and test accuracy per epoch; Spearman correlation; Theorem 2 verdicts."""
    res: dict[str, Any] = {"runs": [], "figures": []}
    runs = [r for r in plan.runs if live.get((r.part, r.label))]
    if not runs:
        return res
    fig, axes = _subplots(3, len(runs), figsize=(5.6 * len(runs), 11.0), squeeze=False)
    for col, run in enumerate(runs):
        seeds_info = [_margin_seed(rec) for rec in _finished(live, run)]
        res["runs"].append({"label": run.label, "part": run.part, "seeds": seeds_info,
                            "spearman_rho_mean": _mean_std([s["spearman_rho"] for s in seeds_info])[0]})
        if seeds_info:
            _margin_column(axes[:, col], f"{run.part}: {run.label}", seeds_info[0])
    res["figures"].append(_save(fig, out, "margin_vs_accuracy.png", "Fig. 5: average margin vs test accuracy over "
                                f"SGD training ({plan.scale} scale)"))
    res["paper_claims"] = plan.spec.get("margin", {}).get("paper_claims", [])
    return res


def _reach_checks(rows: list[dict]) -> dict:
    """Each lambda > 0 against lambda = 0: reached each target sooner, and the accuracy after epoch 1."""
    base = next((r for r in rows if not r["margin_reg"]), None)
    checks = {}
    for r in [r for r in rows if r["margin_reg"]] if base is not None else []:
        for k, x in r["reach_epoch_mean"].items():
            b = base["reach_epoch_mean"][k]
            verdict = ("n/a" if x is None and b is None else "sooner" if x is not None and (b is None or x < b)
                       else "same epoch" if x == b else "later")
            checks[f"{r['label']} vs {base['label']}, target {100 * float(k):g}%"] = verdict
        e1b, e1x = base["test_acc_epoch1_mean"], r["test_acc_epoch1_mean"]
        if e1b is not None and e1x is not None:
            checks[f"{r['label']} vs {base['label']}, test accuracy after epoch 1"] = (
                f"{100 * e1x:.2f}% vs {100 * e1b:.2f}% ({'higher' if e1x > e1b else 'not higher'})")
    return checks


def analysis_reach(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Fig. 6, per lambda: the reach epoch of each of the part's targets (the first evaluated epoch whose test
    accuracy is >= the target, None if never), the test accuracy after epoch 1 (early speed) and at the end."""
    res: dict[str, Any] = {"parts": {}, "figures": []}
    parts, fig, axes = _part_axes(plan)
    if fig is None:
        return res
    for ax, p in zip(axes, parts):
        t = plan.parts[p].get("target")
        targets = [float(x) for x in (t if isinstance(t, list) else [] if t is None else [t])]
        rows = []
        for run in plan.part_runs(p):
            recs = _finished(live, run)
            reach = {f"{tg:g}": [next((h["epoch"] for h in rec["history"] if h["test_acc"] >= tg), None)
                                 for rec in recs] for tg in targets}
            if (c := _curves(recs)) is not None:
                ax.plot(c[0], 100 * np.nanmean(c[1], 0), marker="o", ms=3, label=run.label)
            first = [rec["history"][1]["test_acc"] for rec in recs if len(rec["history"]) > 1]
            rows.append({"label": run.label, "margin_reg": run.settings.get("margin_reg", 0.0), "reach_epochs": reach,
                         "reach_epoch_mean": {k: (float(np.mean(v)) if v and None not in v else None)
                                              for k, v in reach.items()},
                         "test_acc_epoch1_mean": _mean_std(first)[0],
                         "final_test_acc_mean": _mean_std([r["test_acc"] for r in recs])[0],
                         "final_gamma_bar_mean": _mean_std([r["gamma_bar"] for r in recs])[0]})
        for i, tg in enumerate(targets):
            ax.axhline(100 * tg, ls="--", color="k", lw=0.8, alpha=0.6, label="targets" if i == 0 else None)
        _dress(ax, "epoch", "test accuracy (%)", _part_title(results, p), legend=7)
        res["parts"][p] = {"targets": targets, "runs": rows, "checks": _reach_checks(rows)}
    res["figures"].append(_save(fig, out, "margin_regularisation.png", "Fig. 6: test accuracy with margin "
                                f"regularisation,\nloss = CE - lambda * gamma_bar ({plan.scale} scale; dashed: the "
                                "reach targets)"))
    res["paper_claims"] = plan.spec.get("reach", {}).get("paper_claims", [])
    return res


def _table_cfg(plan: Plan, section: str) -> dict:
    """The definition's ``[section]`` updated by ``[scales.<scale>.section]``."""
    return {**plan.spec.get(section, {}), **plan.spec.get("scales", {}).get(plan.scale, {}).get(section, {})}


def analysis_xor(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Theorem 1 / Fig. 4: gradient flow from ``seeds`` random starts (and gradient descent from the first)."""
    from .xor_flow import plot_result, random_init, solve_xor_flow      # (scipy: seconds to import)

    cx = _table_cfg(plan, "xor")
    t_max, points, rtol = float(cx.get("t_max", 1e6)), int(cx.get("points", 400)), float(cx.get("rtol", 1e-10))
    starts, sols = [], []
    t0 = time.perf_counter()
    for seed in plan.seeds:
        th0 = random_init(seed)
        sols.append(r := solve_xor_flow(th0, t_max=t_max, points=points, rtol=rtol))
        a, _, _, e = r.reduced[-1]
        starts.append({
            "seed": seed, "theta0": th0.tolist(), "theorem1_hypothesis": r.theorem1_hypothesis,
            "gamma_bar_initial": float(r.gamma_bar[0]), "gamma_bar_final": r.final_gamma_bar,
            "gamma_min_final": r.final_gamma_min, "monotone": r.monotone, "gamma_bar_min_step": r.gamma_bar_min_step,
            "loss_final": float(r.loss[-1]), "theta_norm_final": float(r.theta_norm[-1]),
            "boundary_angle_deg_final": r.final_boundary_angle_deg,
            "a2_over_e2_final": float(a * a / (e * e)) if e != 0 else None,
            "invariant_drift": r.invariant_drift.tolist(), "reduced_deviation": r.reduced_deviation,
            "one_minus_gamma_times_log2t": float((1.0 - r.final_gamma_bar) * math.log(t_max) ** 2),
            "limit_constant": r.limit_constant, "success": r.success, "solve_seconds": r.solve_seconds,
        })
    plot_result(sols[0], out / "xor_flow_seed0.png")
    figs, gd = ["xor_flow_seed0.png"], None
    if cx.get("gd_t_max"):
        g = solve_xor_flow(random_init(plan.seeds[0]), t_max=float(cx["gd_t_max"]), method="gd",
                           lr=float(cx.get("gd_lr", 0.1)), points=points)
        plot_result(g, out / "xor_gd_seed0.png")
        figs.append("xor_gd_seed0.png")
        gd = {"seed": plan.seeds[0], "lr": g.lr, "t_max": g.t_max, "steps": g.extra.get("steps"),
              "monotone": g.monotone, "gamma_bar_final": g.final_gamma_bar, "loss_final": float(g.loss[-1]),
              "boundary_angle_deg_final": g.final_boundary_angle_deg}
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12, 4.4))
    for s, r in zip(starts, sols):
        ax1.plot(r.t[1:], r.gamma_bar[1:], lw=1.2, label=f"start {s['seed']} (final {s['gamma_bar_final']:.4f})")
        ok = r.t > 1
        ax2.plot(r.t[ok], 1 - r.gamma_bar[ok], lw=1.2)
        late = r.t >= 10
        if s["limit_constant"] > 0 and late.any():
            ax2.plot(r.t[late], s["limit_constant"] / np.log(r.t[late]) ** 2, ls=":", lw=1,
                     color=ax2.lines[-1].get_color())
    ax1.axhline(1, ls="--", color="k", lw=1, label="maximum 1")
    ax1.set(xscale="log", xlabel="time t (log scale)", ylabel=r"$\bar\gamma = $ mean $q_n/\|\theta\|^2$",
            title=r"$\bar\gamma(t)$ from random starts (gradient flow)")
    ax1.legend(fontsize=6)
    ax2.set(xscale="log", yscale="log", xlabel="time t (log scale)", ylabel=r"$1 - \bar\gamma$",
            title=r"$1-\bar\gamma$ (solid) vs the asymptote $((ac)^2+(be)^2)/\log^2 t$ (dotted, t >= 10)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    figs.append(_save(fig, out, "xor_margins.png", f"Theorem 1: XOR, rank-1 Low-Rank DIQNN, t in [0, {t_max:g}] "
                      f"({plan.scale} scale)"))
    finals = [s["gamma_bar_final"] for s in starts]
    return {"t_max": t_max, "rtol": rtol, "points": points, "starts": starts, "gd": gd,
            "all_monotone": all(s["monotone"] for s in starts), "gamma_bar_final_range": [min(finals), max(finals)],
            "seconds": time.perf_counter() - t0, "paper_claims": cx.get("paper_claims", []), "figures": figs}


def analysis_maxmargin(plan: Plan, results: dict, live: dict, out: Path) -> dict:
    """Beyond the paper: full-batch GD of each head against the solver's max-margin optimum
    (:func:`margin_theory.maxmargin.run_experiment_cases`; cases in ``[maxmargin]``)."""
    return run_experiment_cases(_table_cfg(plan, "maxmargin"), plan.scale, out, seed=plan.seeds[0],
                                data_dir=plan.data_dir, quiet=plan.quiet)


_ANALYSES = {"accuracy": analysis_accuracy, "ranks": analysis_ranks, "eigen": analysis_eigen,
             "margin": analysis_margin, "reach": analysis_reach, "xor": analysis_xor,
             "maxmargin": analysis_maxmargin}


# --- Markdown ---
def _pct(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{nd}f}"


def _fmt_acc(mean, std) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f} +- {100 * std:.2f}" if std is not None else f"{100 * mean:.2f} (1 seed)"


def _yn(b: Any, no: str = "no") -> str:
    return "yes" if b else no


def _table(header: list, align: str, rows) -> list[str]:
    """A markdown table (``|`` inside a cell escaped); ``align``: a letter per column, ``r`` right-aligned,
    else (or missing) left."""
    lines = ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in [header, *rows]]
    rule = "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header), "l"))
    return [lines[0], "|" + rule, *lines[1:]]


def _epochs(xs: list, n: int) -> str:
    return "no monitors" if n == 0 else f"{', '.join(map(str, xs)) or 'none'} ({len(xs)}/{n})"


def _topk_table(topk: list[dict]) -> list[str]:
    """The top-k table of Fig. 2: test accuracy and energy fraction per k."""
    return _table(["k", *(t["k"] for t in topk)], "l" + "r" * len(topk),
                  [["test acc (%)", *(_pct(t["test_acc"]) for t in topk)],
                   ["mean energy fraction", *(f"{t['energy_fraction_mean']:.3f}" for t in topk)]]) + [""]


def _cos_summary(s: dict) -> str:
    return (f"{s['cos_sta_mean']:.3f} (other classes: {s['cos_sta_other_mean']:.3f}); centred: "
            f"{s['cos_sta_centred_mean']:.3f} (other classes: {s['cos_sta_centred_other_mean']:.3f})")


def _md_ranks(an: dict) -> list[str]:
    L = ["## Fig. 3 claims", ""]
    for p, info in an.get("parts", {}).items():
        for name, chk in info.get("checks", {}).items():
            if "holds" in chk:
                L.append(f"- {p}: {name}: **{_yn(chk['holds'])}** ({chk['difference_pct_points']:+.2f} points)")
            else:
                gains = ", ".join(f"{k}: {v:+.2f}" for k, v in chk["gains_pct_points"].items())
                L.append(f"- {p}: {name}: non-decreasing **{_yn(chk['non_decreasing'])}**, saturates "
                         f"**{_yn(chk['saturates'])}**, best rank {chk['best_rank']} (gains in points: {gains})")
    return L + [""]


def _md_eigen(e: dict) -> list[str]:
    if not e.get("per_class"):
        return []
    s = e["summary"]
    cols = ("cos_sta", "cos_sta_other_classes_mean", "cos_sta_centred", "cos_sta_centred_other_classes_mean",
            "energy_top1")
    L = ["## Fig. 2: eigenvectors vs spike-triggered averages", "", f"Definition: {e['sta_definition']}.", "",
         f"Mean |cos(v_1, STA_i)| = {_cos_summary(s)}.", ""]
    L += _table(["class", "leading eigenvalue", "#pos / #neg eigenvalues", "|cos| with STA", "other classes",
                 "|cos| centred", "other classes", "energy of top-1"], "lrlrrrrr",
                [[c["class"], f"{c['leading_eigenvalue']:+.4g}", f"{c['n_positive']} / {c['n_negative']}",
                  *(f"{c[k]:.3f}" for k in cols)] for c in e["per_class"]])
    L += ["", "Test accuracy keeping the top-k eigenpairs (by |eigenvalue|) of every W_i "
          f"(full model: {_pct(s['full_test_acc'])}%; within 1 point from k = {s['smallest_k_within_1pt']}):", ""]
    L += _topk_table(e["topk"])
    dl = e.get("delta") or {}
    if dl.get("per_class"):
        L += ["### The learned update Delta W_i = W_i - W_i(0)", "",
              f"{dl['note']}. ||Delta W|| / ||W(0)|| = {dl['norm_ratio_update_to_init']:.3g}.", "",
              f"Mean |cos(leading eigenvector of Delta W_i, STA_i)| = {_cos_summary(dl['summary'])}. Per class "
              "(|cos| with STA_i / centred): "
              + ", ".join(f"{c['class']}: {c['cos_sta']:.2f}/{c['cos_sta_centred']:.2f}" for c in dl["per_class"])
              + ".",
              "", f"Test accuracy of x -> x^T Delta W_i x alone: {_pct(dl['summary']['full_test_acc'])}%; keeping its "
              "top-k eigenpairs:", ""]
        L += _topk_table(dl["topk"])
    elif dl.get("note"):
        L += [f"Delta W analysis: {dl['note']}.", ""]
    return L


def _md_margin(an: dict) -> list[str]:
    if not an.get("runs"):
        return []
    seeds = [(r, s) for r in an["runs"] for s in r["seeds"]]
    L = ["## Fig. 5: margin vs test accuracy", ""]
    L += _table(["part", "run", "seed", "normalisation", "gamma_bar start -> end", "epochs gamma_bar rose",
                 "Spearman rho (p)", "Theorem 2 applies (A1-A3) at epochs", "A1 / A3 hold",
                 "last monitor: rho, cv, eps", "Lemma-2 velocity > 0 at epochs"], "llrllr", [[
        r["part"], r["label"], s["seed"], f"{s['normalisation']}, L={s['degree']}",
        f"{_f(s['gamma_bar_initial'], '+.4g')} -> {_f(s['gamma_bar_final'], '+.4g')}",
        "n/a" if (fr := s["fraction_epochs_gamma_bar_rose"]) is None else f"{100 * fr:.0f}%",
        f"{_f(s['spearman_rho'], '.3f')} ({_f(s['spearman_p'], '.2g')})",
        _epochs(s["theorem_applies_epochs"], s["monitor_epochs"]),
        f"{len(s['A1_epochs'])} / {len(s['A3_epochs'])} of {s['monitor_epochs']}",
        ", ".join(_f(s["final_monitor"][k], ".3g") for k in ("rho", "cv", "eps")) if s.get("final_monitor") else "n/a",
        _epochs(s["velocity_positive_epochs"], s["monitor_epochs"])] for r, s in seeds])
    L += ["", "Theorem 2's conditions are sufficient, not necessary: where they fail it says nothing, and the "
          "margin may still grow. Monitors use a seeded training subset (trainer monitor_subset).", "",
          "### Every margin definition against test accuracy (SPEC §2)", "",
          "; ".join(f"{k}: {v}" for k, v in MARGIN_DEFINITIONS.items())
          + " (gamma_smoothed is meaningful once the summed loss S < log 2). Cells: start -> end, Spearman rho "
          "with test accuracy.", ""]
    L += _table(["part", "run", "seed", *MARGIN_DEFINITIONS], "llr", [[r["part"], r["label"], s["seed"], *(
        f"{_f(d['initial'], '+.3g')} -> {_f(d['final'], '+.3g')}, rho {_f(d['spearman_rho'], '.2f')}"
        for d in s["definitions"].values())] for r, s in seeds])
    return L + [""]


def _md_reach(an: dict) -> list[str]:
    if not an.get("parts"):
        return []
    L = ["## Fig. 6: epoch at which the test accuracy first reaches each target", "",
         "The trainer evaluates once per epoch, so reach epochs are integers (0 = initialisation).", ""]
    L += _table(["part", "run", "lambda", "reach epoch per target (per seed)", "test acc after epoch 1 (%)",
                 "final test acc (%)", "final gamma_bar"], "llrlrrr", [[
        p, r["label"], f"{r['margin_reg']:g}",
        "; ".join(f"{100 * float(k):g}%: " + ", ".join("never" if e is None else str(e) for e in v)
                  for k, v in r["reach_epochs"].items()) or "no target",
        _pct(r["test_acc_epoch1_mean"]), _pct(r["final_test_acc_mean"]), _f(r["final_gamma_bar_mean"], "+.4g")]
        for p, info in an["parts"].items() for r in info["runs"]])
    return L + [""] + [f"- {p}: {name}: **{verdict}**" for p, info in an["parts"].items()
                       for name, verdict in info["checks"].items()] + [""]


def _md_xor(x: dict) -> list[str]:
    lo, hi = x["gamma_bar_final_range"]
    L = ["## Theorem 1 (XOR, gradient flow)", "",
         f"t_max = {x['t_max']:g}, rtol = {x['rtol']:g}; paper: gamma_bar non-decreasing, limit 1 (Theorem 1; "
         f"the paper states no number). All starts monotone: **{_yn(x['all_monotone'])}**; final gamma_bar in "
         f"[{lo:.4f}, {hi:.4f}].", ""]
    L += _table(["start", "theta(0)", "hypothesis a(0)e(0) != 0", "gamma_bar start -> end", "monotone", "loss end",
                 "boundary angle (deg)", "a^2/e^2", "(1-gamma_bar) log^2 t", "(ac)^2+(be)^2", "invariant drift"],
                "rllllrrrrrl", [[
        s["seed"], "(" + ", ".join(f"{v:+.2f}" for v in s["theta0"]) + ")", _yn(s["theorem1_hypothesis"]),
        f"{_f(s['gamma_bar_initial'], '+.4f')} -> {_f(s['gamma_bar_final'], '.5f')}", _yn(s["monotone"], "NO"),
        _f(s["loss_final"], ".3g"), _f(s["boundary_angle_deg_final"], ".3g"), _f(s["a2_over_e2_final"], ".4f"),
        _f(s["one_minus_gamma_times_log2t"], ".4g"), _f(s["limit_constant"], ".4g"),
        _f(max(v for v in s["invariant_drift"] if v is not None), ".1e")] for s in x["starts"]])
    if g := x.get("gd"):
        L += ["", f"Gradient descent (paper Fig. 4), start {g['seed']}, lr {g['lr']:g}, {g['steps']} steps: "
              f"monotone **{_yn(g['monotone'])}**, final gamma_bar {g['gamma_bar_final']:.5f}, "
              f"loss {_f(g['loss_final'], '.3g')}, boundary angle {_f(g['boundary_angle_deg_final'], '.3g')} deg."]
    return L + [""]


def render_markdown(res: dict) -> str:
    """results.md: header (scale, data, seeds, wall time), the results table, analyses, skips."""
    parts = ", ".join(f"{p} = {d['dataset']} ({d.get('n_train')} train / {d.get('n_test')} test)"
                      + (f" [{d['note']}]" if d.get("note") else "") for p, d in res["parts"].items())
    one_seed = len(res["seeds"]) == 1 and res["runs"]
    L = [f"# {res['experiment']}: {res['title']}", "",
         f"Reproduces: {res['reproduces']}.", f"Paper's numbers: {res['paper_source']}.", "",
         f"- scale: **{res['scale']}**; data: {parts or 'none'}",
         f"- protocol: **{res.get('protocol', 'paper')}** (margin_theory.protocols; `--protocol both` runs "
         "paper and authors side by side)",
         f"- seeds: {len(res['seeds'])} ({', '.join(map(str, res['seeds']))})"
         + ("; a single seed gives no +- (the paper's +- needs several seeds)" if one_seed else ""),
         f"- device: {res['device']}; wall time of this invocation: {res['wall_time_s']:.1f} s; training time "
         f"(sum of the trainer's run times, cached runs included): "
         f"{sum(r.get('train_s', 0.0) for r in res['runs']):.1f} s; finished {res.get('finished')}",
         f"- definition: `{Path(res['definition']).name}`"
         + (f"; command: `{res['command']}`" if res.get("command") else "")]
    L += [f"- note: {n}" for n in res.get("notes", [])] + [""]
    if res["runs"]:
        L += ["## Results (test accuracy, %)", ""]
        L += _table(["part", "run", "params", "epochs", "seeds", "paper", "ours (mean +- std)", "best during training",
                     "per seed", "margin norm.", "train s"], "llrrrlllllr", [[
            r["part"], r["label"], f"{r['parameters']:,}" if r.get("parameters") else "n/a", r["epochs"],
            f"{r['n_ok']}/{r['n_seeds']}", r["paper"], _fmt_acc(r["test_acc_mean"], r["test_acc_std"]),
            _fmt_acc(r.get("best_test_acc_mean"), r.get("best_test_acc_std")),
            ", ".join(_pct(s.get("test_acc")) if s["status"] == "ok" else s["status"] for s in r["per_seed"]),
            f"{r['normalisation']}, L={r['degree']}" if r.get("normalisation") else "n/a",
            f"{r.get('train_s', r['wall_s']):.1f}"
            + (" (cached)" if all(x.get("cached") for x in r["per_seed"]) else "")]
            for r in res["runs"]])
        if cached := sum(1 for r in res["runs"] for s in r["per_seed"] if s.get("cached")):
            L += ["", f"{cached} run(s) were loaded from the model cache (`{res.get('cache_dir')}`), trained by an "
                  "earlier invocation with the same configuration; 'train s' is the trainer's time for them then."]
        L.append("")
    md = {"ranks": _md_ranks, "eigen": _md_eigen, "margin": _md_margin, "reach": _md_reach, "xor": _md_xor,
          "maxmargin": _md_maxmargin}
    for a, fn in md.items():
        if a in res.get("analysis", {}):
            L += fn(res["analysis"][a])
    if res.get("skipped"):
        L += ["## Skipped", ""] + [f"- {s['part']}: {s['reason']}" for s in res["skipped"]] + [""]
    if res.get("figures"):
        L += ["## Figures", ""] + [f"- `{f}`" for f in res["figures"]] + [""]
    return "\n".join(L)


# --- Protocols side by side ---
def _verdict(holds: dict[str, bool | None]) -> str:
    known = {p: h for p, h in holds.items() if h is not None}
    if not known:
        return "undecided (no data)"
    if all(known.values()):
        return "supported"
    if not any(known.values()):
        return "not supported"
    return "depends on protocol (holds under " + ", ".join(p for p, h in known.items() if h) + ")"


def _claims(res: dict):
    """(claim, holds or None for no data, Spearman rho or None) of one protocol's results: each run's accuracy
    (final and best) beside the paper's number, the ordering claims, Fig. 6's reach and Fig. 3's checks, and
    Fig. 5's "margin rises with accuracy" per margin definition (Spearman rho > 0, mean over seeds)."""
    for r in res["runs"]:                   # the paper's "M +- S": agreement within 2 combined std
        if m := re.fullmatch(r"\s*([\d.]+)\s*\+-\s*([\d.]+)\s*", str(r.get("paper", ""))):
            M, S = float(m.group(1)) / 100, float(m.group(2)) / 100
            for which, key in (("final", "test_acc"), ("best", "best_test_acc")):
                v = r.get(f"{key}_mean")
                yield (f"{r['part']} {r['label']}: {which} accuracy agrees with the paper's {m.group(1)} +- "
                       f"{m.group(2)} (within 2 combined std)",
                       None if v is None else abs(v - M) <= 2 * math.hypot(S, r.get(f"{key}_std") or 0.0), None)
    acc = {(r["part"], r["label"]): r.get("test_acc_mean") for r in res["runs"]}
    for c in res.get("claims", []):          # the definition's ordering claims, e.g. quadratic > relu2 > linear
        vals = [acc.get((c["part"], lab)) for lab in c["order"]]
        yield (f"{c['part']}: " + " > ".join(c["order"]) + " (final accuracy)",
               None if None in vals else all(a > b for a, b in zip(vals, vals[1:])), None)
    an = res["analysis"]
    for part, info in (an.get("reach") or {}).get("parts", {}).items():
        for name, reached in info.get("checks", {}).items():
            if "target" in name:
                yield f"Fig. 6 {part}: {name}: reached sooner", None if reached == "n/a" else reached == "sooner", None
    for part, info in (an.get("ranks") or {}).get("parts", {}).items():
        for name, chk in info.get("checks", {}).items():
            yield f"Fig. 3 {part}: {name}", chk.get("holds", chk.get("non_decreasing")), None
    for r in (an.get("margin") or {}).get("runs", []):
        for key in MARGIN_DEFINITIONS:
            rho = _mean_std([s["definitions"][key]["spearman_rho"] for s in r["seeds"] if s.get("definitions")])[0]
            yield (f"Fig. 5 {r['part']} {r['label']}: {key} rises with test accuracy (Spearman rho > 0)",
                   None if rho is None else rho > 0, rho)


def compare_protocols(per_protocol: dict[str, dict]) -> dict:
    """Side by side, per claim (:func:`_claims`), the results of one experiment under each protocol, with a
    verdict: ``supported`` (holds under every protocol), ``not supported`` (under none), ``depends on
    protocol`` (naming where it holds)."""
    names = list(per_protocol)
    any_res = next(iter(per_protocol.values()))
    out: dict[str, Any] = {"experiment": any_res["experiment"], "scale": any_res["scale"], "protocols": names,
                           "runs": [], "claims": [], "decided_by": []}
    keyed = {p: {(r["part"], r["label"]): r for r in res["runs"]} for p, res in per_protocol.items()}
    for (part, label), r0 in keyed[names[0]].items():
        out["runs"].append({"part": part, "label": label, "paper_number": r0["paper"], "protocols": {
            p: {k: keyed[p].get((part, label), {}).get(key) for k, key in (
                ("final", "test_acc_mean"), ("final_std", "test_acc_std"), ("best", "best_test_acc_mean"),
                ("best_std", "best_test_acc_std"))} for p in names}})
    holds: dict[str, dict] = {}                 # claim -> {protocol: holds (None: no data)}
    rhos: dict[str, dict] = {}
    for p, res in per_protocol.items():
        for text, h, rho in _claims(res):
            holds.setdefault(text, {})[p] = None if h is None else bool(h)
            if rho is not None:
                rhos.setdefault(text, {})[p] = rho
    out["claims"] = [{"claim": text, "holds": h, "verdict": _verdict(h),
                      **({"spearman_rho_mean": rhos[text]} if text in rhos else {})} for text, h in holds.items()]
    # what decides a claim besides the protocol: the reported accuracy (final vs best) or the
    # margin definition - claims that differ only in that word but get different verdicts
    for words, what in ((("final", "best"), "the reported accuracy (final vs best)"),
                        (MARGIN_DEFINITIONS, "the margin definition")):
        groups: dict[str, list[dict]] = {}
        for c in out["claims"]:
            for w in words:
                if f" {w} " in f" {c['claim']} ":
                    groups.setdefault(f" {c['claim']} ".replace(f" {w} ", " * ", 1).strip(), []).append(c)
        out["decided_by"] += [{"claim": stem, "decided_by": what, "verdicts": {c["claim"]: c["verdict"] for c in cs}}
                              for stem, cs in groups.items() if len({c["verdict"] for c in cs}) > 1]
    return out


def render_comparison(cmp: dict) -> str:
    """comparison.md: the paper's number beside ours under each protocol, and the verdicts."""
    names = cmp["protocols"]
    L = [f"# {cmp['experiment']}: the paper's claims under each protocol ({cmp['scale']} scale)", "",
         "Protocols (margin_theory.protocols): `paper` = the paper's text as restated in SPEC.md; `authors` = "
         "the authors' public code (their inits, the full head's linear term and 1/2, the best test accuracy "
         "over evaluations every 20 steps). Per-protocol details: " + ", ".join(f"`{p}/results.md`" for p in names)
         + ".", "", "## Test accuracy (%): final, and best during training", ""]
    L += _table(["part", "run", "paper", *(f"{p}: {w}" for p in names for w in ("final", "best"))], "", [
        [r["part"], r["label"], r["paper_number"], *(_fmt_acc(r["protocols"][p][w], r["protocols"][p][f"{w}_std"])
                                                   for p in names for w in ("final", "best"))] for r in cmp["runs"]])
    if cmp["claims"]:
        L += ["", "## Verdicts", ""]
        L += _table(["claim", *names, "verdict"], "", [[c["claim"], *(
            ("n/a" if c["holds"].get(p) is None else _yn(c["holds"][p]))
            + (f" (rho {c['spearman_rho_mean'][p]:+.2f})" if (c.get("spearman_rho_mean") or {}).get(p) is not None
               else "") for p in names), c["verdict"]] for c in cmp["claims"]])
    if cmp.get("decided_by"):
        L += ["", "## What decides it", ""] + [
            f"- `{d['claim']}`: decided by {d['decided_by']}: "
            + "; ".join(f"{k} -> {v}" for k, v in d["verdicts"].items())
            for d in cmp["decided_by"]]
    return "\n".join(L + [""])


# --- CLI ---
def _parts_arg(s: str) -> list[str]:
    parts = [p.strip() for p in s.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated part names, e.g. mnist,fmnist")
    return parts


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=(
        "Reproduce a table or figure of the paper from its definition in experiments/ (SPEC §7). "
        "Writes results.json, results.md and PNG figures into --out."))
    p.add_argument("name", nargs="?", help="experiment name (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="smoke (CPU minutes, bundled/subset data), paper (the paper's protocol; needs the data), "
                        "tiny (seconds; for tests)")
    p.add_argument("--data-dir", default=None, help="folder with MNIST/FashionMNIST/CIFAR files "
                   "(default $MARGIN_THEORY_DATA_DIR or ./data)")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (0..K-1); default per scale")
    p.add_argument("--parts", type=_parts_arg, default=None, metavar="P[,P]",
                   help="run only these parts (data groups, e.g. mnist,fmnist); see --list")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--protocol", choices=(*protocol_names(), "both"), default=None,
                   help="run every model under this protocol (margin_theory.protocols; default: the "
                        "definition's, else paper); 'both' runs paper and authors into OUT/paper and "
                        "OUT/authors and writes OUT/comparison.md with a verdict per claim")
    p.add_argument("--out", default=None, help="output folder (default results/<scale>/<name>; for 'all', "
                   "the parent folder, default results/<scale>)")
    p.add_argument("--cache-dir", default=None,
                   help="keep/reuse trained models here, keyed by their full training config")
    p.add_argument("--experiments-dir", default=None, help="folder of the TOML definitions (default: experiments/ "
                   "beside the package)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-run lines on stderr")
    p.add_argument("--verbose", action="store_true", help="per-epoch lines of every run on stderr")
    return p


@cli_entry(PROG)
def main(argv=None) -> int:
    """Run an experiment (see the module docstring); exit 0 ok, 2 bad input."""
    args = build_parser().parse_args(argv)
    if args.list:
        exps = list_experiments(args.experiments_dir)
        if args.json:
            print_json({"experiments": exps})
        else:
            for e in exps:
                print(f"{e['name']:<16} {e['title']}")
                print(f"{'':<16} parts: {', '.join(e['parts']) or '-'}; analysis: {', '.join(e['analysis'])}")
        return 0
    if not args.name:
        raise ConfigError("name an experiment (see --list) or 'all'")
    if args.scale is None:
        raise ConfigError("--scale is required: smoke, paper or tiny")
    select_device(args.device)                  # one-line errors for an unknown or absent device
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such folder")
    root = Path("results") / args.scale        # (run_experiment checks --out and --cache-dir before training)
    command = "python -m margin_theory.experiment " + " ".join(sys.argv[1:] if argv is None else argv)
    names = [e["name"] for e in list_experiments(args.experiments_dir)] if args.name == "all" else [args.name]
    if args.name == "all" and args.parts:
        raise ConfigError("--parts applies to one experiment, not 'all'")
    for n in names:                                                   # fail fast on bad input
        plan_experiment(load_definition(n, args.experiments_dir), args.scale, data_dir=args.data_dir,
                        seeds=args.seeds, parts=args.parts, protocol=None if args.protocol == "both" else args.protocol)
    kw = dict(data_dir=args.data_dir, seeds=args.seeds, parts=args.parts, device=args.device, cache_dir=args.cache_dir,
              experiments_dir=args.experiments_dir, quiet=args.quiet, verbose=args.verbose, command=command)
    outs = []
    for n in names:
        out = Path(args.out) / n if args.out and args.name == "all" else Path(args.out or root / n)
        if args.protocol != "both":
            outs.append(res := run_experiment(n, args.scale, out=out, protocol=args.protocol, **kw))
            if not args.json:
                print(render_markdown(res) + f"\nwritten: {Path(res['out']) / 'results.md'}, results.json"
                      + (f", {len(res['figures'])} figure(s)" if res.get("figures") else ""))
            continue
        per = {p: run_experiment(n, args.scale, out=out / p, protocol=p, **kw) for p in protocol_names()}
        cmp = compare_protocols(per)
        atomic_write_json(out / "comparison.json", cmp)
        atomic_write_text(out / "comparison.md", render_comparison(cmp))
        outs.append({"comparison": cmp, "per_protocol": per})
        if not args.json:
            print(render_comparison(cmp) + f"\nwritten: {out / 'comparison.md'}, comparison.json, "
                  + ", ".join(f"{out / p}/results.md" for p in per))
    if args.json:
        print_json(outs[0] if len(outs) == 1 else {"experiments": outs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
