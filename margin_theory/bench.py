r"""Benchmark: the trainer and the theory tools against references and the machine's limit.

``python -m margin_theory.bench [--quick] [--device auto|cpu|cuda] [--json]``

Everything is measured in one run, side by side, several repetitions each (medians):

1. **Training throughput** (samples/s) on MNIST shapes (``mnist-5k``; batch 100 as the paper,
   and 1024), lowrank ranks 1, 8, 32 and quadratic: :func:`margin_theory.train.train_epoch`
   against the authors' way (a ``DataLoader``; a Python loop over ranks of
   ``F.linear(x, a_k) ** 2``, or ``F.bilinear``) and a competent plain loop. Same SGD, same samples.
2. **Margin evaluation** over the training set (``margins.compute_margins``) against one inference pass.
3. **Theorem 2 monitors** on 512 samples (lowrank rank 8) against a loop of per-sample backward
   passes (:func:`margin_theory.assumptions.bench_monitors`).
4. **The limit**: the FLOP rate of the training step's GEMMs against a bare ``torch.matmul`` of them.
5. **XOR flow** solve time to t = 1e6 against a plain RK45 solve in t.
6. **Scaling**: margin evaluation and monitor time as N and the rank double.

A ratio is ``ours / reference`` for a rate and ``reference / ours`` for a time (bigger is better);
FLOP fractions are ``ours / bare matmul``. The tests only check that ``--quick`` runs.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import ArgumentParser, cli_entry, one_line, print_json, progress, sync

__all__ = ["run_benchmarks", "ReferenceLowRank", "ReferenceQuadratic", "PlainLowRank", "PlainQuadratic",
           "reference_epoch", "plain_epoch", "compile_support", "main"]

PROG = "python -m margin_theory.bench"
D, C = 784, 10
MNIST = (1, 28, 28)
CPU = torch.device("cpu")


# --- References, written the way the paper's authors wrote theirs ---
class ReferenceLowRank(nn.Module):
    """Low-Rank DIQNN as a Python loop over ranks: ``sum_k F.linear(x, a_k) ** 2``."""

    def __init__(self, d: int, c: int, rank: int):
        super().__init__()
        self.a = nn.ModuleList(nn.Linear(d, c, bias=False) for _ in range(rank))

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        out = 0
        for lin in self.a:
            out = out + F.linear(x, lin.weight) ** 2
        return out


class ReferenceQuadratic(nn.Module):
    """Full quadratic classifier through ``F.bilinear(x, x, W)``."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(c, d, d) / d)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        return F.bilinear(x, x, self.W)


class PlainLowRank(nn.Module):
    """The strongest plain baseline a competent user writes: one ``nn.Linear(d, C r)``,
    square, sum over the r outputs of each class (the same function as ``LowRankHead``)."""

    def __init__(self, d: int, c: int, rank: int):
        super().__init__()
        self.c, self.r = c, rank
        self.lin = nn.Linear(d, c * rank, bias=False)

    def forward(self, x):
        return self.lin(x.flatten(1)).view(x.shape[0], self.c, self.r).square().sum(-1)


class PlainQuadratic(ReferenceQuadratic):
    """Plain full quadratic classifier: ``einsum("bi,cij,bj->bc", x, W, x)``."""

    def forward(self, x):
        x = x.flatten(1)
        return torch.einsum("bi,cij,bj->bc", x, self.W, x)


def plain_epoch(model: nn.Module, opt, X: torch.Tensor, Y: torch.Tensor, batch_size: int,
                generator: torch.Generator | None = None) -> int:
    """A competent user's own loop: index batches of a ``randperm`` of device-resident data
    (``X[idx]``), ``F.cross_entropy``, ``torch.optim.SGD``. Returns the samples seen."""
    model.train()
    for idx in torch.randperm(X.shape[0], generator=generator, device=X.device).split(batch_size):
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), Y[idx]).backward()
        opt.step()
    return X.shape[0]


def reference_epoch(model: nn.Module, loader, opt) -> int:
    """The authors' training loop over a DataLoader; returns the number of samples seen."""
    model.train()
    seen, dev = 0, next(model.parameters()).device
    for xb, yb in loader:
        xb, yb = xb.to(dev), yb.to(dev)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        seen += xb.shape[0]
    return seen


# --- Timing ---
def _median_seconds(fn: Callable[[], object], reps: int, device: torch.device = CPU, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _ratio_spread(t_ref, t_ours) -> tuple[float, float, float]:
    """Paired ratios ``t_ref[i] / t_ours[i]``: (median, 5% quantile, 95% quantile), linear interpolation."""
    rs = [a / b for a, b in zip(t_ref, t_ours)]
    lo, hi = np.percentile(rs, [5, 95])
    return statistics.median(rs), float(lo), float(hi)


def _paired_times(fns: dict, reps: int, device: torch.device, min_time: float = 0.2) -> dict:
    """name -> ``reps`` seconds per call of each of ``fns``, each measurement repeating the call for
    ``min_time`` after a warm-up; round i runs them in an order rotated by i (paired ratios)."""
    names = list(fns)
    # calls per measurement, from one timed call after a warm-up (compiles, recompiles for the last batch)
    k = {name: max(1, math.ceil(min_time / max(_median_seconds(fn, 1, device), 1e-9))) for name, fn in fns.items()}
    out = {name: [] for name in names}
    for i in range(reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            for _ in range(k[name]):
                fns[name]()
            sync(device)
            out[name].append((time.perf_counter() - t) / k[name])
    return out


def _case(name, ours, reference, unit, ratio, target=None, comparison=">=", note="", spread=None, reps=None):
    met = None if target is None or ratio is None else bool(ratio >= target if comparison == ">=" else ratio <= target)
    return {"name": name, "ours": ours, "reference": reference, "unit": unit, "ratio": ratio,
            "spread": None if spread is None else [float(spread[0]), float(spread[1])], "reps": reps,
            "target": None if target is None else f"{comparison} {target:g}", "met": met, "note": note}


def _paired_case(name, ours, reference, unit, t_num, t_den, target=None, comparison=">=", note=""):
    """A case whose ratio is the median of the paired ``t_num[i] / t_den[i]``, with its 90% interval."""
    med, lo, hi = _ratio_spread(t_num, t_den)
    return _case(name, ours, reference, unit, med, target, comparison, note, spread=(lo, hi), reps=len(t_num))


def _growth_cases(name: str, xs, ts, note: str) -> list[dict]:
    """The time ratios ``ts[i+1] / ts[i]``, named ``name.format(xs[i], xs[i+1])``."""
    return [_case(name.format(a, b), tb, ta, "s", tb / ta, note=note) for a, b, ta, tb in zip(xs, xs[1:], ts, ts[1:])]


def _mnist_shapes(n: int, device: torch.device):
    """mnist-5k training images (MNIST shapes, 28x28) on the device, tiled up to ``n``."""
    from .data import load_dataset
    ds = load_dataset("mnist-5k", seed=0)
    reps = -(-n // ds.X_train.shape[0])
    X, y = ds.X_train.repeat(reps, 1, 1, 1)[:n], ds.y_train.repeat(reps)[:n]
    return X.to(device).contiguous(), y.to(device)


def _model(kind: str, rank: int = 8, device=CPU):
    """The toolkit's ``lowrank`` (rank ``rank``) or ``quadratic`` model for MNIST shapes, seeded."""
    from .models import build_model
    torch.manual_seed(0)
    return build_model(kind, MNIST, C, **({"rank": rank} if kind == "lowrank" else {})).to(device)


def _reference(kind: str, rank: int, device):
    return (ReferenceQuadratic(D, C) if kind == "quadratic" else ReferenceLowRank(D, C, rank)).to(device)


def _plain(kind: str, rank: int, device):
    return (PlainQuadratic(D, C) if kind == "quadratic" else PlainLowRank(D, C, rank)).to(device)


# --- Cases ---
def compile_support(device: str | torch.device = "cpu") -> str | None:
    """``None`` when ``torch.compile`` works on ``device`` (a tiny function compiles and runs), else why not."""
    try:
        torch.compile(lambda t: (t * 2).sum())(torch.ones(3, device=device))
        return None
    except Exception as exc:  # no C++ compiler, unsupported Python, ...: report, never crash
        return f"{type(exc).__name__}: {one_line(exc)[:160]}"


def _bare_epoch_fn(kind: str, r: int, N: int, bs: int, device):
    """The step's two GEMMs alone (forward, weight gradient) for every batch of an epoch."""
    sizes = [min(bs, N - k) for k in range(0, N, bs)]
    x = torch.rand(bs, D, device=device)
    if kind == "lowrank":
        A = torch.randn(C * r, D, device=device)
        gz = torch.randn(bs, C * r, device=device)

        def run():
            for b in sizes:
                x[:b] @ A.T
                gz[:b].T @ x[:b]
        return run, sum(2 * (2 * b * D * C * r) for b in sizes)
    W = torch.randn(C, D, D, device=device)
    gw = torch.randn(C, bs, D, device=device)

    def run():
        for b in sizes:
            torch.matmul(x[:b].unsqueeze(0), W)
            torch.matmul(x[:b].T.unsqueeze(0), gw[:, :b])
    return run, sum(2 * (2 * b * C * D * D) for b in sizes)


def _epoch_fn(model, X, Y, bs: int, device, ours: bool = False):
    """An epoch of ``model``: ``train.train_epoch`` and its SGD (``ours``) or :func:`plain_epoch` and
    ``torch.optim.SGD``, with its own optimizer and seeded generator."""
    from .train import SGD, train_epoch
    g = torch.Generator(device=device).manual_seed(0)
    opt = (SGD if ours else torch.optim.SGD)(model.parameters(), lr=0.01)
    epoch = train_epoch if ours else plain_epoch
    return lambda: epoch(model, opt, X, Y, bs, g)


def bench_training(X, Y, device, batches=(100, 1024), ranks=(1, 8, 32), reps=3, quiet=False,
                   min_time: float = 0.2, compile_cases=None):
    """Cases 1 and 4: throughput against the baselines and the bare GEMMs' FLOP rate (paired rounds);
    ``compile_cases``: ``(kind, rank, batch)`` triples that also get the ``torch.compile``'d plain loop."""
    from torch.utils.data import DataLoader, TensorDataset
    N = X.shape[0]
    cases = []
    no_compile = compile_support(device) if compile_cases else None
    plan = [(b, "lowrank", r) for b in batches for r in ranks] + [(b, "quadratic", 0) for b in batches]
    for bs, kind, r in progress(plan, desc="training throughput", quiet=quiet):
        ours_m, ref_m, plain_m = _model(kind, r, device), _reference(kind, r, device), _plain(kind, r, device)
        loader = DataLoader(TensorDataset(X.cpu(), Y.cpu()), batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        opt_r = torch.optim.SGD(ref_m.parameters(), lr=0.01)
        fns = {"ours": _epoch_fn(ours_m, X, Y, bs, device, ours=True),
               "authors": lambda: reference_epoch(ref_m, loader, opt_r), "plain": _epoch_fn(plain_m, X, Y, bs, device)}
        want_compiled = compile_cases is not None and (kind, r, bs) in compile_cases
        if want_compiled and no_compile is None:     # a fresh plain baseline, compiled
            fns["compiled"] = _epoch_fn(torch.compile(_plain(kind, r, device)), X, Y, bs, device)
        headline = kind == "lowrank" and r == 8 and bs == 100
        limit = (bs == 1024) or (kind == "quadratic" and bs == 100) or headline
        if limit:
            fns["bare"], flops = _bare_epoch_fn(kind, r, N, bs, device)
        times = _paired_times(fns, reps, device, min_time)
        label = f"lowrank r={r}" if kind == "lowrank" else "quadratic"
        rate = N / statistics.median(times["ours"])
        against = {
            "authors": ("authors' loop", 3.0, "ours: train_epoch on device-resident data; reference: DataLoader + "
                        + ("loop over ranks of F.linear(x, a_k)**2" if kind == "lowrank" else "F.bilinear")),
            "plain": ("plain loop", 1.5, "reference: X[randperm batch], " + (
                "nn.Linear(d, C r) + square + sum per class" if kind == "lowrank" else "einsum x^T W_c x")
                + ", F.cross_entropy, torch.optim.SGD"),
            "compiled": ("compiled plain loop", None, "reference: the plain loop with torch.compile(model) (compile "
                         "time excluded: warm-up epochs first)")}
        for ref, (what, target, note) in against.items():
            name = f"train {label} batch {bs} vs {what}"
            if ref in times:
                cases.append(_paired_case(name, rate, N / statistics.median(times[ref]), "samples/s", times[ref],
                                          times["ours"], target if headline else None, note=note))
            elif ref == "compiled" and want_compiled:
                cases.append(_case(name, rate, None, "samples/s", None,
                                   note=f"torch.compile is not available here: {no_compile}"))
        if limit:
            cases.append(_paired_case(
                f"GEMM FLOP rate, {label} batch {bs}", statistics.median([flops / t / 1e9 for t in times["ours"]]),
                flops / statistics.median(times["bare"]) / 1e9, "GFLOP/s", times["bare"], times["ours"],
                0.6 if bs == 1024 else (0.7 if kind == "quadratic" else None),
                note="whole training step (gather, forward, loss, backward, SGD) vs the step's two "
                     "GEMMs alone (forward, weight gradient; no input gradient is needed)"))
        if headline:
            cases.append(_paired_case(
                f"ceiling: plain loop / bare GEMMs, {label} batch {bs}", N / statistics.median(times["bare"]),
                N / statistics.median(times["plain"]), "samples/s", times["plain"], times["bare"],
                note="the most any trainer can gain over the plain loop: both run these two "
                     "GEMMs, only the rest of the step differs"))
    return cases


def bench_margins(X, Y, device, reps=5):
    """Case 2: margins over the training set against one plain inference pass."""
    from .margins import compute_margins, predict
    cases = []
    for kind, label in (("lowrank", "lowrank r=8"), ("quadratic", "quadratic")):
        m = _model(kind, 8, device)
        times = _paired_times({"margins": lambda: compute_margins(m, X, Y), "inference": lambda: predict(m, X)},
                              3 * reps, device, min_time=0.05)
        cases.append(_paired_case(f"margins over {X.shape[0]} samples, {label}", statistics.median(times["margins"]),
                                  statistics.median(times["inference"]), "s", times["margins"], times["inference"],
                                  1.3, "<=", note="ratio = margin evaluation time / one inference pass "
                                                  "(lower is better)"))
    return cases


def bench_monitors_case(n: int):
    """Case 3: Theorem 2 monitors against a loop of per-sample backward passes."""
    from .assumptions import bench_monitors
    r = bench_monitors(n=n, rank=8, data="mnist-5k", loop=True)
    return [_case(f"Theorem 2 monitors, {n} samples, lowrank r=8", r["seconds_closed"], r["seconds_loop"], "s",
                  r["seconds_loop"] / r["seconds_closed"], 10.0,
                  note=f"reference: Python loop of per-sample backward passes; torch.func path "
                       f"{r['seconds_func']:.3g} s; results agree to {max(r['max_rel_diff'].values()):.1e}")]


def bench_xor(reps=3, t_max=1e6):
    """Case 5: XOR flow to t = 1e6, ours against a plain RK45 solve of the same ODE in t."""
    from scipy.integrate import solve_ivp
    from .xor_flow import loss_and_grad, random_init, solve_xor_flow
    theta0 = random_init(0)
    t_ours = _median_seconds(lambda: solve_xor_flow(theta0, t_max=t_max), reps)
    t_ref = _median_seconds(lambda: solve_ivp(lambda t, th: -loss_and_grad(th)[1], (0.0, t_max),
                                              np.asarray(theta0, float), method="RK45", rtol=1e-10, atol=1e-12),
                            1, warmup=0)
    return [_case(f"XOR flow to t={t_max:g} (rtol 1e-10)", t_ours, t_ref, "s", t_ref / t_ours,
                  note="reference: scipy RK45 on d theta/dt = -grad loss in t (ratio = speed-up)")]


def bench_scaling(device, quick: bool, reps=3):
    """Case 6: does the cost grow as it should when N and the rank double?"""
    from .assumptions import theorem2_report
    from .margins import compute_margins
    m = _model("lowrank", 8, device)
    n0 = 2000 if quick else 16000
    times = []
    for n in (n0, 2 * n0, 4 * n0):
        X, Y = _mnist_shapes(n, device)
        times.append(_median_seconds(lambda: compute_margins(m, X, Y), reps, device))
    cases = _growth_cases("margins scaling N {} -> {}", (n0, 2 * n0, 4 * n0), times,
                          "time ratio when N doubles; linear cost gives 2")
    ns = (32, 64, 128) if quick else (128, 256, 512)
    X, Y = _mnist_shapes(ns[-1], CPU)
    mt = [_median_seconds(lambda n=n: theorem2_report(m.cpu(), X[:n], Y[:n], subset=n), reps) for n in ns]
    cases += _growth_cases("monitors scaling N {} -> {}", ns, mt, "time ratio when N doubles: per-sample gradients "
                           "grow like N, the N x N Gram matrix like N^2 (so between 2 and 4)")
    n = ns[1]
    rt = [_median_seconds(lambda: theorem2_report(mr, X[:n], Y[:n], subset=n), reps)
          for mr in (_model("lowrank", r) for r in (4, 8, 16))]
    return cases + _growth_cases(f"monitors scaling rank {{}} -> {{}} (N={n})", (4, 8, 16), rt,
                                 "time ratio when the rank doubles: P = C r d grows like r, so at most 2")


def profile_training(kind: str = "lowrank", rank: int = 8, batch_size: int = 100, n: int = 2000,
                     device: str | torch.device = "cpu", top: int = 8) -> dict:
    """``torch.profiler`` self-CPU time per operator and epoch (3 after a warm-up), ours, plain loop and bare
    GEMMs: ``{"case", "per_epoch": {contender: {"total_ms", "gemm_share", "ops": [[name, ms, calls]]}}}``."""
    from torch.profiler import ProfilerActivity, profile
    dev = torch.device(device)
    X, Y = _mnist_shapes(n, dev)
    fns = {"ours": _epoch_fn(_model(kind, rank, dev), X, Y, batch_size, dev, ours=True),
           "plain": _epoch_fn(_plain(kind, rank, dev), X, Y, batch_size, dev),
           "bare GEMMs": _bare_epoch_fn(kind, rank, n, batch_size, dev)[0]}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    out = {}
    for name, fn in fns.items():
        fn()
        sync(dev)
        with profile(activities=acts) as prof:
            for _ in range(3):
                fn()
            sync(dev)
        rows = sorted(((e.key, e.self_cpu_time_total / 1e3 / 3, e.count // 3) for e in prof.key_averages()),
                      key=lambda r: -r[1])
        total = sum(r[1] for r in rows)
        gemm = sum(r[1] for r in rows if r[0] in ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul"))
        out[name] = {"total_ms": total, "gemm_share": gemm / total if total else None,
                     "ops": [[k, ms, c] for k, ms, c in rows[:top]]}
    return {"case": f"{kind}{f' r={rank}' if kind == 'lowrank' else ''} batch {batch_size}, {n} samples",
            "per_epoch": out}


def format_profile(p: dict) -> str:
    lines = [f"profile (self CPU time per epoch, torch.profiler): {p['case']}"]
    for name, d in p["per_epoch"].items():
        lines.append(f"  {name}: {d['total_ms']:.1f} ms, GEMMs {100 * (d['gemm_share'] or 0):.0f}%")
        lines += [f"      {k:<42} {ms:8.2f} ms  {c:>5} calls" for k, ms, c in d["ops"]]
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as fh:
        info["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmarks(quick: bool = False, device: str = "auto", progress_bar: bool = True,
                   compile: bool = True) -> dict:
    """Every case: ``{"cases": [...], "machine": {...}, "quick": bool, "seconds": float}``. ``quick``: 2,000
    samples, 5 rounds of >= 0.1 s, compiled baseline for lowrank r=8 batch 100; else 4,000, 7 of >= 0.3 s."""
    from .train import select_device
    dev = select_device(device)
    t0 = time.perf_counter()
    X, Y = _mnist_shapes(2000 if quick else 4000, dev)
    ccases = None
    if compile:
        ccases = {("lowrank", 8, 100)} if quick else {("lowrank", 8, 100), ("lowrank", 8, 1024), ("quadratic", 0, 100)}
    cases = bench_training(X, Y, dev, ranks=(1, 8, 32), reps=5 if quick else 7, quiet=not progress_bar,
                           min_time=0.1 if quick else 0.3, compile_cases=ccases)
    cases += bench_margins(X, Y, dev, reps=1 if quick else 5)
    cases += bench_monitors_case(48 if quick else 512)
    cases += bench_xor(reps=3)
    cases += bench_scaling(dev, quick, reps=1 if quick else 3)
    return {"cases": cases, "machine": machine_info(dev), "quick": quick, "seconds": time.perf_counter() - t0}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def format_table(result: dict) -> str:
    rows = [("case", "ours", "reference", "unit", "ratio", "90% interval", "target", "met")]
    for c in result["cases"]:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "NO")
        spread = f"{_fmt(c['spread'][0])}-{_fmt(c['spread'][1])} ({c['reps']})" if c.get("spread") else "-"
        rows.append((c["name"], _fmt(c["ours"]), _fmt(c["reference"]), c["unit"], _fmt(c["ratio"]), spread,
                     c["target"] or "-", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = result["machine"]
    lines += ["", f"machine: {m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, torch {m['torch']} "
              f"({m['torch_threads']} threads), device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else ""),
              f"ratio: ours/reference for rates, reference/ours for times (bigger is better), except margins "
              f"(time ratio, lower is better) and scaling (growth factor); training and margin ratios are the "
              f"median over paired rounds (count in brackets) with the 5%-95% interval. Total "
              f"{result['seconds']:.0f} s."]
    lines += [f"note: {c['name']}: {c['note']}" for c in result["cases"] if c["ratio"] is None and c["note"]]
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and repetitions (a few minutes)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile'd baseline (compiling takes about a minute per model on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--profile", action="store_true",
                   help="also profile lowrank r=8 batch 100 and batch 1024 (ours, plain loop, bare GEMMs)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


@cli_entry(PROG)
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = run_benchmarks(quick=args.quick, device=args.device, progress_bar=not args.json, compile=args.compile)
    if args.profile:
        dev = result["machine"]["device"]
        result["profile"] = [profile_training("lowrank", r, bs, device=dev)
                             for r, bs in ((8, 100), (1, 1024), (8, 1024))]
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
        for p in result.get("profile", []):
            print()
            print(format_profile(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
