"""proofs/smoothed_margin.md: every tagged step has a sympy check, all pass, and they can fail."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

PROOFS = Path(__file__).resolve().parents[1] / "proofs"

def _module():
    spec = importlib.util.spec_from_file_location("check_smoothed_margin", PROOFS / "check_smoothed_margin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def test_checks_pass_and_cover_the_proof_tags():
    mod = _module()
    results = mod.run_checks()
    assert [n for n, ok in results if not ok] == []
    tags = set(re.findall(r"\[(S\d+)\]", (PROOFS / "smoothed_margin.md").read_text(encoding="utf-8")))
    assert tags == {name.split()[0] for name, _ in results} and len(tags) == 11

def test_a_wrong_claim_is_caught():
    mod = _module()
    mod.C = 3                 # the closed form's C no longer matches the 4 logits
    assert not mod.s1_output_margin_closed_form()
    mod = _module()
    mod._two_samples_qtilde = lambda: (mod.c ** mod.L * mod.q1, None, None)   # a scale-invariant q~
    assert not mod.s10_not_scale_invariant_increasing()
