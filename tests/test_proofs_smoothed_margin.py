"""proofs/smoothed_margin.md: every tagged step has a sympy check, all pass, and they can fail."""
from __future__ import annotations

from _proofs import assert_proof_cites_exactly, load_checker


def test_checks_pass_and_cover_the_proof_tags():
    results = load_checker("check_smoothed_margin").run_checks()
    assert [n for n, ok in results if not ok] == [] and len(results) == 11
    assert_proof_cites_exactly(results, "smoothed_margin.md", "S")


def test_a_wrong_claim_is_caught():
    mod = load_checker("check_smoothed_margin")
    mod.C = 3                 # the closed form's C no longer matches the 4 logits
    assert not mod.s1_output_margin_closed_form()
    mod = load_checker("check_smoothed_margin")
    mod._two_samples_qtilde = lambda: (mod.c ** mod.L * mod.q1, None, None)   # a scale-invariant q~
    assert not mod.s10_not_scale_invariant_increasing()
