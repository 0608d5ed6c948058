"""Every algebraic identity of proofs/theorem1_xor.md holds (sympy, proofs/check_theorem1.py)."""
from __future__ import annotations

import pytest
from _proofs import assert_proof_cites_exactly, load_checker


def _load():
    return load_checker("check_theorem1")


@pytest.fixture(scope="module")
def results():
    return _load().run_checks()


def test_all_symbolic_checks_pass(results):
    failed = [name for name, ok in results if not ok]
    assert not failed, failed
    assert len(results) >= 30


def test_every_tag_in_the_proof_has_a_check(results):
    assert_proof_cites_exactly(results, "theorem1_xor.md", "C")


def test_a_wrong_identity_fails():
    """The checker can fail: a wrong reduced ODE is caught."""
    mod = _load()
    mod.RED_ODE[mod.b] = 2 * mod.S1 * mod.b  # wrong sign
    assert not mod.c11_invariant_be() and not mod.c15_gamma_derivative()
