"""Every identity of proofs/maxmargin.md holds (sympy, proofs/check_maxmargin.py)."""
from __future__ import annotations

import pytest
from _proofs import assert_proof_cites_exactly, load_checker


@pytest.fixture(scope="module")
def results():
    return load_checker("check_maxmargin").run_checks()


def test_all_symbolic_checks_pass(results):
    assert [name for name, ok in results if not ok] == []
    assert len(results) >= 18


def test_every_tag_in_the_proof_has_a_check(results):
    assert_proof_cites_exactly(results, "maxmargin.md", "M")


def test_a_wrong_identity_fails():
    """The checker can fail: a wrong XOR data set (a class-1 point moved into class 0) breaks
    the quadratic closed form and the lowrank certificate."""
    mod = load_checker("check_maxmargin")
    mod.XOR[2] = ((1, -1), 0)
    assert not mod.m15_xor_quadratic_optimum() and not mod.m17_xor_lowrank_optimum()
