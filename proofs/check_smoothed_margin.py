"""Symbolic checks (sympy) of every step in ``proofs/smoothed_margin.md``.

Run ``python proofs/check_smoothed_margin.py``: one line per check, ``PASS``/``FAIL``, exit
status 1 if any fails. ``run_checks()`` returns ``[(name, passed), ...]``.
"""
from __future__ import annotations

import sys
from functools import partial

import sympy as sp

from margin_theory._util import checks_main as _checks_main, run_checks as _run_checks

c, L, S, U, u, q, q1, q2 = sp.symbols("c L S U u q q1 q2", positive=True)
C = 4
F = sp.symbols("f0:4", real=True)          # the logits of one sample, C = 4, label y = 0


def s1_output_margin_closed_form() -> bool:
    lhs = sum(F[0] - F[j] for j in range(1, C)) / (C - 1)
    rhs = (C * F[0] - sum(F)) / (C - 1)
    return sp.simplify(lhs - rhs) == 0


def s2_output_margin_invariant() -> bool:
    k = sp.Symbol("k", positive=True)          # k = c^L > 0
    norm = sp.sqrt(sum(v**2 for v in F))
    m = (C * F[0] - sum(F)) / ((C - 1) * norm)
    scaled = m.subs({v: k * v for v in F}, simultaneous=True)
    return sp.simplify(scaled - m) == 0


def s3_exp_ce_minus_one() -> bool:
    return sp.simplify(sp.exp(sp.log(1 + u)) - 1 - u) == 0


def s4_smoothed_decreasing_in_S() -> bool:
    d = sp.diff(-sp.log(sp.exp(S) - 1), S)
    return sp.simplify(d + sp.exp(S) / (sp.exp(S) - 1)) == 0 and sp.ask(sp.Q.negative(-sp.exp(S) / (sp.exp(S) - 1)),
                                                                      sp.Q.positive(sp.exp(S) - 1)) is True


def s5_one_plus_u_le_exp_u() -> bool:
    g = sp.exp(u) - 1 - u                     # g(0) = 0, g' = e^u - 1 >= 0 for u >= 0
    return g.subs(u, 0) == 0 and sp.simplify(sp.diff(g, u) - (sp.exp(u) - 1)) == 0


def s6_expm1_le_u_exp_u() -> bool:
    g = U * sp.exp(U) - (sp.exp(U) - 1)       # g(0) = 0, g' = U e^U >= 0
    return g.subs(U, 0) == 0 and sp.simplify(sp.diff(g, U) - U * sp.exp(U)) == 0


def s7_log_bound() -> bool:
    N, qmin = sp.symbols("N qmin", positive=True)
    bound = N * (C - 1) * sp.exp(-qmin)
    return sp.simplify(sp.expand_log(-sp.log(bound), force=True) - (qmin - sp.log(N * (C - 1)))) == 0


def s8_two_class_one_sample() -> bool:
    Sc = sp.log(1 + sp.exp(-c**L))
    return sp.simplify(-sp.log(sp.exp(Sc) - 1) - c**L) == 0


def _two_samples_qtilde():
    # two samples of a 2-class problem with margins q1, q2: S = log(1+e^-a) + log(1+e^-b)
    a, b = c**L * q1, c**L * q2
    Sc = sp.log(1 + sp.exp(-a)) + sp.log(1 + sp.exp(-b))
    return -sp.log(sp.exp(Sc) - 1), a, b


def s9_two_samples_closed_form() -> bool:
    qt, a, b = _two_samples_qtilde()
    want = -sp.log(sp.exp(-a) + sp.exp(-b) + sp.exp(-a - b))
    return sp.simplify(sp.exp(-qt) - sp.exp(-want)) == 0


def s10_not_scale_invariant_increasing() -> bool:
    """q~(c)/c^L with L = 2, q1 = 1, q2 = 2 has a positive derivative in c at several points
    (exact rational evaluation of the sympy derivative) and differs between c = 1 and c = 2."""
    qt, _, _ = _two_samples_qtilde()
    g = (qt / c**L).subs({L: 2, q1: 1, q2: 2})
    dg = sp.diff(g, c)
    vals = [sp.N(dg.subs(c, sp.Rational(k, 2)), 30) for k in (1, 2, 3, 4, 6)]
    return all(v > 0 for v in vals) and sp.N(g.subs(c, 1) - g.subs(c, 2), 30) != 0


def s11_positive_iff_below_log2() -> bool:
    qt = -sp.log(sp.exp(S) - 1)
    return sp.simplify(qt.subs(S, sp.log(2))) == 0 and sp.N(qt.subs(S, sp.log(2) / 2)) > 0 \
        and sp.N(qt.subs(S, 2 * sp.log(2))) < 0


CHECKS = [
    ("S1 output margin = (C f_y - sum f)/((C-1)||f||) (1)", s1_output_margin_closed_form),
    ("S2 output margin invariant under f -> c^L f (1)", s2_output_margin_invariant),
    ("S3 e^{CE_n} - 1 = u_n (2)", s3_exp_ce_minus_one),
    ("S4 -log(e^S - 1) decreases in S (2)", s4_smoothed_decreasing_in_S),
    ("S5 1 + u <= e^u (3)", s5_one_plus_u_le_exp_u),
    ("S6 e^U - 1 <= U e^U (3)", s6_expm1_le_u_exp_u),
    ("S7 -log(N(C-1) e^{-q_min}) = q_min - log(N(C-1)) (3)", s7_log_bound),
    ("S8 one sample: q~(c) = c^L exactly (4)", s8_two_class_one_sample),
    ("S9 two samples: q~ = -log(e^-a + e^-b + e^-(a+b)) (4)", s9_two_samples_closed_form),
    ("S10 q~(c)/c^L increases in c: not scale invariant (4)", s10_not_scale_invariant_increasing),
    ("S11 q~ > 0 iff S < log 2 (4)", s11_positive_iff_below_log2),
]


run_checks = partial(_run_checks, CHECKS)        # -> [(name, passed), ...]

if __name__ == "__main__":
    sys.exit(_checks_main(CHECKS))
