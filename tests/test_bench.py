"""The benchmark is not a test: here we only check that --quick runs and prints the documented structure."""
import json
import subprocess
import sys

import pytest

from margin_theory.bench import ReferenceLowRank, ReferenceQuadratic, main
from margin_theory.models import LowRankHead, QuadraticHead
import torch

CASE_KEYS = {"name", "ours", "reference", "unit", "ratio", "target", "met", "note"}


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


@pytest.mark.slow
def test_quick_json_structure():
    proc = subprocess.run([sys.executable, "-m", "margin_theory.bench", "--quick", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"cases", "machine"}
    names = [c["name"] for c in doc["cases"]]
    for c in doc["cases"]:
        assert set(c) == CASE_KEYS
        assert c["unit"] in {"samples/s", "GFLOP/s", "s"}
        assert c["ours"] is None or c["ours"] > 0
    for prefix in ("train lowrank r=8 batch 100", "train quadratic batch 100", "GEMM FLOP rate",
                   "margins over", "Theorem 2 monitors", "XOR flow", "margins scaling", "monitors scaling"):
        assert any(n.startswith(prefix) for n in names), prefix
    targeted = [c for c in doc["cases"] if c["target"] is not None]
    assert targeted and all(isinstance(c["met"], bool) for c in targeted)
    assert {"torch", "cpu_count", "device"} <= set(doc["machine"])


def test_bad_device_is_one_line_exit_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0]
