"""The machine checks of proofs/lemma1_homogeneity.md (every identity verified by sympy)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "proofs" / "check_lemma1.py"
PROOF = REPO / "proofs" / "lemma1_homogeneity.md"


def _load():
    spec = importlib.util.spec_from_file_location("check_lemma1", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_all_checks_pass():
    results = _load().run_checks()
    assert len(results) >= 20
    failed = [name for name, ok in results if not ok]
    assert not failed, failed


def test_every_referenced_check_exists():
    names = {name.split()[0] for name, _ in _load().CHECKS}
    cited = set(re.findall(r"\*\*(H\d+)\*\*", PROOF.read_text()))
    assert cited and cited <= names
    assert names <= cited  # every check is used by the proof


def test_a_false_identity_fails():
    """A check must be able to fail: corrupt the closed form and the recurrence check catches it."""
    mod = _load()
    import sympy as sp
    L = sp.Function("L")
    sol = sp.rsolve(L(mod.n) - 2 * L(mod.n - 1) - 2, L(mod.n), {L(1): 2})
    assert not mod.zero(sol - (2 ** (mod.n + 1) - 1))
    assert mod.c_degrees(mod.c ** 2 * sp.Symbol("u") + mod.c * sp.Symbol("b")) == {1, 2}


def test_script_runs():
    p = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout and re.search(r"(\d+)/\1 checks passed", p.stdout)
