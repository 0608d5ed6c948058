"""Every algebraic identity of proofs/theorem1_xor.md holds (sympy, proofs/check_theorem1.py)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parents[1] / "proofs"


def _load():
    spec = importlib.util.spec_from_file_location("check_theorem1", PROOFS / "check_theorem1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results():
    return _load().run_checks()


def test_all_symbolic_checks_pass(results):
    failed = [name for name, ok in results if not ok]
    assert not failed, failed
    assert len(results) >= 30


def test_every_tag_in_the_proof_has_a_check(results):
    text = (PROOFS / "theorem1_xor.md").read_text(encoding="utf-8")
    tags = set(re.findall(r"\[(C\d+)\]", text))
    names = {name.split()[0] for name, _ in results}
    assert tags, "the proof cites no checks"
    assert tags <= names, sorted(tags - names)
    assert names <= tags, sorted(names - tags)  # no check is orphaned either


def test_a_wrong_identity_fails():
    """The checker can fail: a wrong reduced ODE is caught."""
    mod = _load()
    mod.RED_ODE[mod.b] = 2 * mod.S1 * mod.b  # wrong sign
    assert not mod.c11_invariant_be() and not mod.c15_gamma_derivative()
