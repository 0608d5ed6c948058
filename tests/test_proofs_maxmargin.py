"""Every identity of proofs/maxmargin.md holds (sympy, proofs/check_maxmargin.py)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parents[1] / "proofs"


def _load():
    spec = importlib.util.spec_from_file_location("check_maxmargin", PROOFS / "check_maxmargin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results():
    return _load().run_checks()


def test_all_symbolic_checks_pass(results):
    failed = [name for name, ok in results if not ok]
    assert not failed, failed
    assert len(results) >= 18


def test_every_tag_in_the_proof_has_a_check(results):
    text = (PROOFS / "maxmargin.md").read_text(encoding="utf-8")
    tags = set(re.findall(r"\[(M\d+)\]", text))
    names = {name.split()[0] for name, _ in results}
    assert tags, "the proof cites no checks"
    assert tags <= names, sorted(tags - names)
    assert names <= tags, sorted(names - tags)


def test_a_wrong_identity_fails():
    """The checker can fail: a wrong XOR data set (a class-1 point moved into class 0) breaks
    the quadratic closed form and the lowrank certificate."""
    mod = _load()
    mod.XOR[2] = ((1, -1), 0)
    assert not mod.m15_xor_quadratic_optimum() and not mod.m17_xor_lowrank_optimum()
