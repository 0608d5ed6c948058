"""The benchmark is not a test: here we only check that --quick runs and prints the documented structure."""
import json
import subprocess
import sys

import pytest

from margin_theory import bench
from margin_theory.bench import PlainLowRank, PlainQuadratic, ReferenceLowRank, ReferenceQuadratic, main
from margin_theory.models import LowRankHead, QuadraticHead
import torch

CASE_KEYS = {"name", "ours", "reference", "unit", "ratio", "spread", "reps", "target", "met", "note"}


def test_references_compute_the_same_functions():
    torch.manual_seed(0)
    x = torch.rand(5, 12, dtype=torch.float64)
    ref = ReferenceLowRank(12, 3, 4).double()
    ours = LowRankHead(12, 3, 4).double()
    with torch.no_grad():
        ours.weight.copy_(torch.stack([lin.weight for lin in ref.a], dim=1))
    torch.testing.assert_close(ours(x), ref(x))
    refq = ReferenceQuadratic(12, 3).double()
    q = QuadraticHead(12, 3).double()
    with torch.no_grad():
        q.weight.copy_(refq.W)
    torch.testing.assert_close(q(x), refq(x))
    # the plain baselines compute the same functions
    plain = PlainLowRank(12, 3, 4).double()
    with torch.no_grad():
        plain.lin.weight.copy_(ours.weight.reshape(12, 12))
    torch.testing.assert_close(plain(x), ours(x))
    pq = PlainQuadratic(12, 3).double()
    with torch.no_grad():
        pq.W.copy_(q.W)
    torch.testing.assert_close(pq(x), q(x))


def test_spread_is_the_paired_ratio_quantiles():
    np = pytest.importorskip("numpy")
    t_ref, t_ours = [3.0, 2.0, 9.0, 4.0, 5.5], [1.0, 1.0, 2.0, 2.0, 1.1]
    med, lo, hi = bench._ratio_spread(t_ref, t_ours)
    r = np.array(t_ref) / np.array(t_ours)
    assert med == pytest.approx(np.median(r))
    assert (lo, hi) == pytest.approx((np.percentile(r, 5), np.percentile(r, 95)))


def test_training_cases_report_baselines_and_missing_compiler(monkeypatch):
    monkeypatch.setattr(bench, "compile_support", lambda device="cpu": "RuntimeError: no C++ compiler")
    X, Y = bench._mnist_shapes(200, torch.device("cpu"))
    cases = bench.bench_training(X, Y, torch.device("cpu"), batches=(100,), ranks=(8,), reps=2, quiet=True,
                                 min_time=0.0, compile_cases={("lowrank", 8, 100)})
    by = {c["name"]: c for c in cases}
    for vs in ("authors' loop", "plain loop"):
        c = by[f"train lowrank r=8 batch 100 vs {vs}"]
        assert c["reps"] == 2 and c["spread"][0] <= c["ratio"] <= c["spread"][1]
        assert c["ours"] > 0 and c["reference"] > 0
    c = by["train lowrank r=8 batch 100 vs compiled plain loop"]
    assert c["ratio"] is None and c["met"] is None and "no C++ compiler" in c["note"]
    assert by["train lowrank r=8 batch 100 vs plain loop"]["target"] == ">= 1.5"
    assert any(n.startswith("ceiling: plain loop / bare GEMMs") for n in by)


@pytest.mark.slow
def test_quick_json_structure():
    proc = subprocess.run([sys.executable, "-m", "margin_theory.bench", "--quick", "--no-compile", "--json"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"cases", "machine"}
    names = [c["name"] for c in doc["cases"]]
    for c in doc["cases"]:
        assert set(c) == CASE_KEYS
        assert c["unit"] in {"samples/s", "GFLOP/s", "s"}
        assert c["ours"] is None or c["ours"] > 0
    for prefix in ("train lowrank r=8 batch 100 vs authors' loop", "train lowrank r=8 batch 100 vs plain loop",
                   "train quadratic batch 100", "GEMM FLOP rate, lowrank r=1 batch 1024",
                   "GEMM FLOP rate, quadratic batch 1024",
                   "margins over", "Theorem 2 monitors", "XOR flow", "margins scaling", "monitors scaling"):
        assert any(n.startswith(prefix) for n in names), prefix
    targeted = [c for c in doc["cases"] if c["target"] is not None]
    assert targeted and all(isinstance(c["met"], bool) for c in targeted)
    assert {"torch", "cpu_count", "device"} <= set(doc["machine"])
    assert not any("compiled" in n for n in names)          # --no-compile


def test_bad_device_is_one_line_exit_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0]
