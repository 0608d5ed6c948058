r"""Benchmark: the trainer and the theory tools against references and the machine's limit.

``python -m margin_theory.bench [--quick] [--device auto|cpu|cuda] [--json]``

Everything is measured in one run, side by side, several repetitions each (medians):

1. **Training throughput** (samples/s) on MNIST shapes (``mnist-5k``; batch 100 as the
   paper, and 1024) for lowrank ranks 1, 8, 32 and quadratic: ours is
   :func:`margin_theory.train.train_epoch`, the trainer's own hot loop; the reference is
   written the way the paper's authors wrote theirs: a ``DataLoader`` over a
   ``TensorDataset``, and for the low-rank head a Python loop over ranks summing
   ``F.linear(x, a_k) ** 2``, for the full head ``F.bilinear``. Same sizes, same SGD,
   same samples.
2. **Margin evaluation** over the whole training set
   (:func:`margin_theory.margins.compute_margins`) against one plain inference pass.
3. **Theorem 2 monitors** on 512 samples (lowrank rank 8, MNIST shapes) against a loop of
   per-sample backward passes (:func:`margin_theory.assumptions.bench_monitors`).
4. **The limit**: the achieved FLOP rate of the training step's GEMMs against a bare
   ``torch.matmul`` of the same shapes (lowrank at batch 1024; quadratic at batch 100).
5. **XOR flow** solve time to t = 1e6 against a plain RK45 solve in t.
6. **Scaling**: margin evaluation and monitor time as N and the rank double.

A ratio is always ``ours / reference`` for a rate and ``reference / ours`` for a time, so
bigger is better; the FLOP fractions are ``ours / bare matmul``. The benchmark is not a
test: the test suite only checks that ``--quick`` runs and prints this structure.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import ArgumentParser, cli_entry, print_json, progress

__all__ = ["run_benchmarks", "ReferenceLowRank", "ReferenceQuadratic", "reference_epoch", "main"]

D, C = 784, 10


# ---------------------------------------------------------------------------
# References, written the way the paper's authors wrote theirs
# ---------------------------------------------------------------------------
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


def reference_epoch(model: nn.Module, loader, opt) -> int:
    """The authors' training loop over a DataLoader; returns the number of samples seen."""
    model.train()
    seen = 0
    for xb, yb in loader:
        xb, yb = xb.to(next(model.parameters()).device), yb.to(next(model.parameters()).device)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        seen += xb.shape[0]
    return seen


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _paired_median_seconds(fn_a, fn_b, reps: int, device: torch.device) -> tuple[float, float]:
    """Median times of ``fn_a`` and ``fn_b``, run alternately (a, b, a, b, ...) so that
    drift in the machine's load hits both alike; one warm-up call each."""
    ta, tb = [], []
    for fn, _ in ((fn_a, ta), (fn_b, tb)):
        fn()
    _sync(device)
    for _ in range(reps):
        for fn, acc in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _case(name, ours, reference, unit, ratio, target=None, comparison=">=", note=""):
    met = None
    if target is not None and ratio is not None:
        met = bool(ratio >= target) if comparison == ">=" else bool(ratio <= target)
    return {"name": name, "ours": ours, "reference": reference, "unit": unit, "ratio": ratio,
            "target": None if target is None else f"{comparison} {target:g}", "met": met, "note": note}


def _mnist_shapes(n: int, device: torch.device):
    """mnist-5k training images (MNIST shapes, 28x28) on the device, tiled up to ``n``."""
    from .data import load_dataset

    ds = load_dataset("mnist-5k", seed=0)
    X, y = ds.X_train, ds.y_train
    reps = -(-n // X.shape[0])
    X, y = X.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]
    return X.to(device).contiguous(), y.to(device)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
def _train_models(kind: str, rank: int, device):
    from .models import build_model

    torch.manual_seed(0)
    if kind == "quadratic":
        ours, ref = build_model("quadratic", (1, 28, 28), C), ReferenceQuadratic(D, C)
    else:
        ours, ref = build_model("lowrank", (1, 28, 28), C, rank=rank), ReferenceLowRank(D, C, rank)
    return ours.to(device), ref.to(device)


def bench_training(X, Y, device, batches=(100, 1024), ranks=(1, 8, 32), reps=3, quiet=False):
    """Case 1 and 4: throughput against the reference, and the GEMMs' FLOP fraction."""
    from torch.utils.data import DataLoader, TensorDataset

    from .train import SGD, train_epoch

    N = X.shape[0]
    cases, steps = [], {}
    plan = [(b, "lowrank", r) for b in batches for r in ranks] + [(b, "quadratic", 0) for b in batches]
    for bs, kind, r in progress(plan, desc="training throughput", quiet=quiet):
        ours_m, ref_m = _train_models(kind, r, device)
        opt_o = SGD(ours_m.parameters(), lr=0.01)
        opt_r = torch.optim.SGD(ref_m.parameters(), lr=0.01)
        g = torch.Generator(device=device).manual_seed(0)
        loader = DataLoader(TensorDataset(X.cpu(), Y.cpu()), batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        t_o, t_r = _paired_median_seconds(lambda: train_epoch(ours_m, opt_o, X, Y, bs, g),
                                          lambda: reference_epoch(ref_m, loader, opt_r), reps, device)
        label = f"lowrank r={r}" if kind == "lowrank" else "quadratic"
        target = 3.0 if (kind == "lowrank" and r == 8 and bs == 100) else (1.0 if kind == "quadratic" else None)
        cases.append(_case(f"train {label} batch {bs}", N / t_o, N / t_r, "samples/s", (N / t_o) / (N / t_r),
                           target, note="ours: train_epoch on device-resident data; reference: DataLoader + "
                           + ("loop over ranks of F.linear(x, a_k)**2" if kind == "lowrank" else "F.bilinear")))
        steps[(kind, r, bs)] = t_o / math.ceil(N / bs)
    return cases, steps


def bench_limit(steps: dict, device, reps=5):
    """Case 4: achieved FLOP/s of the step's GEMMs against bare matmuls of the same shapes."""
    cases = []
    for (kind, r, bs), t_step in steps.items():
        if not ((kind == "lowrank" and bs == 1024 and r in (8, 32)) or (kind == "quadratic" and bs == 100)):
            continue
        x = torch.rand(bs, D, device=device)
        if kind == "lowrank":
            A = torch.randn(C * r, D, device=device)
            gz = torch.randn(bs, C * r, device=device)
            flops = 2 * (2 * bs * D * C * r)                     # forward + grad of A

            def bare():
                x @ A.T
                gz.T @ x
            target, label = 0.5, f"lowrank r={r} batch {bs}"
        else:
            W = torch.randn(C, D, D, device=device)
            gw = torch.randn(C, bs, D, device=device)
            flops = 2 * (2 * bs * C * D * D)                     # forward + grad of W

            def bare():
                torch.matmul(x.unsqueeze(0), W)
                torch.matmul(x.T.unsqueeze(0), gw)
            target, label = 0.7, f"quadratic batch {bs}"
        t_bare = _median_seconds(bare, 3 * reps, device)
        cases.append(_case(f"GEMM FLOP rate, {label}", flops / t_step / 1e9, flops / t_bare / 1e9, "GFLOP/s",
                           t_bare / t_step, target,
                           note="whole training step (gather, forward, loss, backward, SGD) vs the step's two "
                                "GEMMs alone (forward, weight gradient; no input gradient is needed)"))
    return cases


def bench_margins(X, Y, device, reps=5):
    """Case 2: margins over the training set against one plain inference pass."""
    from .margins import compute_margins, predict
    from .models import build_model

    cases = []
    for name, kw in (("lowrank", {"rank": 8}), ("quadratic", {})):
        torch.manual_seed(0)
        m = build_model(name, (1, 28, 28), C, **kw).to(device)
        t_mar, t_inf = _paired_median_seconds(lambda: compute_margins(m, X, Y), lambda: predict(m, X),
                                              3 * reps, device)
        label = f"{name} r=8" if name == "lowrank" else name
        cases.append(_case(f"margins over {X.shape[0]} samples, {label}", t_mar, t_inf, "s", t_mar / t_inf, 1.3,
                           "<=", note="ratio = margin evaluation time / one inference pass (lower is better)"))
    return cases


def bench_monitors_case(n: int, quick: bool):
    """Case 3: Theorem 2 monitors against a loop of per-sample backward passes."""
    from .assumptions import bench_monitors

    r = bench_monitors(n=n, rank=8, data="mnist-5k", loop=True)
    return [_case(f"Theorem 2 monitors, {n} samples, lowrank r=8", r["seconds_closed"], r["seconds_loop"], "s",
                  r["seconds_loop"] / r["seconds_closed"], 10.0,
                  note=f"reference: Python loop of per-sample backward passes; torch.func path "
                       f"{r['seconds_func']:.3g} s; results agree to {max(r['max_rel_diff'].values()):.1e}")]


def _naive_xor_solve(theta0, t_max: float) -> None:
    import numpy as np
    from scipy.integrate import solve_ivp

    from .xor_flow import loss_and_grad

    solve_ivp(lambda t, th: -loss_and_grad(th)[1], (0.0, t_max), np.asarray(theta0, float),
              method="RK45", rtol=1e-10, atol=1e-12)


def bench_xor(reps=3, t_max=1e6):
    """Case 5: XOR flow to t = 1e6, ours against a plain RK45 solve of the same ODE in t."""
    from .xor_flow import random_init, solve_xor_flow

    theta0 = random_init(0)
    t_ours = _median_seconds(lambda: solve_xor_flow(theta0, t_max=t_max), reps, torch.device("cpu"))
    t_ref = _median_seconds(lambda: _naive_xor_solve(theta0, t_max), 1, torch.device("cpu"), warmup=0)
    return [_case(f"XOR flow to t={t_max:g} (rtol 1e-10)", t_ours, t_ref, "s", t_ref / t_ours,
                  note="reference: scipy RK45 on d theta/dt = -grad loss in t (ratio = speed-up)")]


def bench_scaling(device, quick: bool, reps=3):
    """Case 6: does the cost grow as it should when N and the rank double?"""
    from .assumptions import theorem2_report
    from .margins import compute_margins
    from .models import build_model

    cases = []
    torch.manual_seed(0)
    m = build_model("lowrank", (1, 28, 28), C, rank=8).to(device)
    n0 = 2000 if quick else 16000
    times = []
    for n in (n0, 2 * n0, 4 * n0):
        X, Y = _mnist_shapes(n, device)
        times.append(_median_seconds(lambda: compute_margins(m, X, Y), reps, device))
    for (a, ta), (b, tb) in zip(((n0, times[0]), (2 * n0, times[1])), ((2 * n0, times[1]), (4 * n0, times[2]))):
        cases.append(_case(f"margins scaling N {a} -> {b}", tb, ta, "s", tb / ta,
                           note="time ratio when N doubles; linear cost gives 2"))
    ns = (32, 64, 128) if quick else (128, 256, 512)
    X, Y = _mnist_shapes(ns[-1], torch.device("cpu"))
    mt = [_median_seconds(lambda n=n: theorem2_report(m.cpu(), X[:n], Y[:n], subset=n), reps, torch.device("cpu"))
          for n in ns]
    for i in range(len(ns) - 1):
        cases.append(_case(f"monitors scaling N {ns[i]} -> {ns[i + 1]}", mt[i + 1], mt[i], "s", mt[i + 1] / mt[i],
                           note="time ratio when N doubles: per-sample gradients grow like N, the N x N "
                                "Gram matrix like N^2 (so between 2 and 4)"))
    rt = []
    n = ns[1]
    for r in (4, 8, 16):
        torch.manual_seed(0)
        mr = build_model("lowrank", (1, 28, 28), C, rank=r)
        rt.append(_median_seconds(lambda: theorem2_report(mr, X[:n], Y[:n], subset=n), reps, torch.device("cpu")))
    for i, (a, b) in enumerate(((4, 8), (8, 16))):
        cases.append(_case(f"monitors scaling rank {a} -> {b} (N={n})", rt[i + 1], rt[i], "s", rt[i + 1] / rt[i],
                           note="time ratio when the rank doubles: P = C r d grows like r, so at most 2"))
    return cases


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmarks(quick: bool = False, device: str = "auto", progress_bar: bool = True) -> dict:
    """Run every case; returns ``{"cases": [...], "machine": {...}, "quick": bool, "seconds": float}``."""
    from .train import select_device

    dev = select_device(device)
    t0 = time.perf_counter()
    reps = 1 if quick else 5
    quiet = not progress_bar
    n_train = 500 if quick else 4000
    X, Y = _mnist_shapes(n_train, dev)
    cases: list[dict] = []
    tr_cases, steps = bench_training(X, Y, dev, ranks=(1, 8, 32), reps=reps, quiet=quiet)
    cases += tr_cases
    cases += bench_limit(steps, dev, reps=reps)
    cases += bench_margins(X, Y, dev, reps=reps)
    cases += bench_monitors_case(48 if quick else 512, quick)
    cases += bench_xor(reps=max(reps, 3))
    cases += bench_scaling(dev, quick, reps=1 if quick else 3)
    return {"cases": cases, "machine": machine_info(dev), "quick": quick,
            "seconds": time.perf_counter() - t0}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def format_table(result: dict) -> str:
    rows = [("case", "ours", "reference", "unit", "ratio", "target", "met")]
    for c in result["cases"]:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "NO")
        rows.append((c["name"], _fmt(c["ours"]), _fmt(c["reference"]), c["unit"], _fmt(c["ratio"]),
                     c["target"] or "-", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = result["machine"]
    lines.append("")
    lines.append(f"machine: {m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, torch {m['torch']} "
                 f"({m['torch_threads']} threads), device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else ""))
    lines.append(f"ratio: ours/reference for rates, reference/ours for times (bigger is better), except margins "
                 f"(time ratio, lower is better) and scaling (growth factor). Total {result['seconds']:.0f} s.")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m margin_theory.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and repetitions (about a minute)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


@cli_entry("python -m margin_theory.bench")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        from ._util import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available")
    result = run_benchmarks(quick=args.quick, device=args.device, progress_bar=not args.json)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
