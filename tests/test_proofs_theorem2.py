"""Runs the machine checks of proofs/theorem2_margin.md (Lemma 2, Theorem 2, Corollary)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "proofs" / "check_theorem2.py"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_theorem2", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(checker):
    return checker.run_checks(verbose=False)


def test_proof_document_exists_and_cites_every_check(checker):
    text = (SCRIPT.parent / "theorem2_margin.md").read_text()
    for tag in {name.split()[0] for name, _ in checker.CHECKS}:
        assert f"[{tag}]" in text, f"proof never cites check {tag}"
    assert "sufficient, not necessary" in text


def test_every_check_passes(results):
    failed = [name for name, ok in results if not ok]
    assert not failed, f"failed proof checks: {failed}"
    assert len(results) >= 15


def test_symbolic_and_numeric_checks_present(results):
    names = [n for n, _ in results]
    assert sum(n.startswith("S") for n in names) >= 8       # sympy identities
    assert sum(n.startswith("N") for n in names) >= 5       # numerics


def test_example_a3_fails_but_margin_grows(checker):
    found = checker.a3_fails_but_margin_grows(verbose=False)
    assert found is not None
    seed, rep, g0, g1 = found
    assert not rep.A3 and not rep.theorem_applies
    assert rep.lower_bound < 0 < rep.velocity and g1 > g0
    assert "sufficient, not necessary" in rep.note


def test_a_failing_check_fails_the_script(checker, capsys):
    assert checker.main(checks=[("always false", lambda: False)]) == 1
    assert checker.main(checks=[("raises", lambda: 1 / 0)]) == 1
    assert checker.main(checks=[("true", lambda: True)]) == 0
    out = capsys.readouterr().out
    assert "FAIL  always false" in out and "PASS  true" in out
