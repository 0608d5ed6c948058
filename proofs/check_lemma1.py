"""Symbolic checks (sympy) of every algebraic step in ``proofs/lemma1_homogeneity.md``.

Run ``python proofs/check_lemma1.py``: one line per check, ``PASS``/``FAIL``, exit status
1 if any check fails. ``run_checks()`` returns ``[(name, passed), ...]``. The check names
(``H1`` ...) are the references used in the proof. Everything is exact: symbolic algebra,
or (H11-H13) the exact checker of :func:`margin_theory.homogeneity.symbolic_homogeneity`,
run on the real torch modules (their ``torch.fx`` graphs interpreted over polynomials, or
over exact integers along random rays for four layers).
Nothing is typed in: every degree below is *derived* and then compared with the rule.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import sympy as sp

from margin_theory._util import checks_main as _checks_main, run_checks as _run_checks  # noqa: E402

try:
    from margin_theory.homogeneity import lemma1_degree, symbolic_homogeneity
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from margin_theory.homogeneity import lemma1_degree, symbolic_homogeneity

c = sp.Symbol("c", positive=True)  # the scale factor, c > 0
n, k = sp.symbols("n k", integer=True, positive=True)
Lf = sp.Symbol("L_f", integer=True, nonnegative=True)  # degree of the features
Lsym = sp.Symbol("L", integer=True, nonnegative=True)


def zero(expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


def c_degrees(expr) -> set[int]:
    """Exponents of c in the expanded polynomial ``expr`` (c-degree bookkeeping)."""
    return {int(m[0]) for m in sp.Poly(sp.expand(expr), c).monoms()}


# ---------------------------------------------------------------------------
# Lemma 1: the recurrence and its solution
# ---------------------------------------------------------------------------
def h1_recurrence_solution() -> bool:
    """H1: L_n = 2 (L_{n-1} + 1), L_1 = 2 has the unique solution L_n = 2^{n+1} - 2 (rsolve)."""
    L = sp.Function("L")
    sol = sp.rsolve(L(n) - 2 * L(n - 1) - 2, L(n), {L(1): 2})
    return zero(sol - (2 ** (n + 1) - 2))


def h2_induction_step() -> bool:
    """H2: base case 2^2 - 2 = 2 and step 2((2^n - 2) + 1) = 2^{n+1} - 2."""
    closed = lambda m: 2 ** (m + 1) - 2  # noqa: E731
    return closed(1) == 2 and zero(2 * (closed(n - 1) + 1) - closed(n))


def h3_per_layer_sum() -> bool:
    """H3: scaling layer k alone multiplies f by c^(2^(n-k+1)); sum_k 2^(n-k+1) = 2^{n+1} - 2."""
    return zero(sp.summation(2 ** (n - k + 1), (k, 1, n)) - (2 ** (n + 1) - 2))


def h4_first_values() -> bool:
    """H4: L_1..L_4 = 2, 6, 14, 30 (the recurrence iterated, compared with the closed form)."""
    vals, L = [], 0
    for _ in range(4):
        L = 2 * (L + 1)
        vals.append(L)
    return vals == [2, 6, 14, 30] == [lemma1_degree(m) for m in range(1, 5)]


# ---------------------------------------------------------------------------
# Composition rules: features h of degree L_f, head parameters scaled by c
# ---------------------------------------------------------------------------
a1, a2, h1, h2, w1, w2 = sp.symbols("a1 a2 h1 h2 w1 w2", real=True)
W11, W12, W22 = sp.symbols("W11 W12 W22", real=True)


def _scaled_features():
    return {h1: c ** Lf * h1, h2: c ** Lf * h2}


def h5_linear_head() -> bool:
    """H5: linear head w.h: (c w).(c^{L_f} h) = c^{L_f + 1} (w.h)."""
    f = w1 * h1 + w2 * h2
    fc = f.xreplace({w1: c * w1, w2: c * w2}).xreplace(_scaled_features())
    return zero(sp.powsimp(sp.expand(fc - c ** (Lf + 1) * f)))


def h6_lowrank_head() -> bool:
    """H6: lowrank head (a.h)^2: ((c a).(c^{L_f} h))^2 = c^{2(L_f + 1)} (a.h)^2 (quadratic in a)."""
    f = (a1 * h1 + a2 * h2) ** 2
    fc = f.xreplace({a1: c * a1, a2: c * a2}).xreplace(_scaled_features())
    in_a = f.xreplace({a1: c * a1, a2: c * a2})
    return zero(sp.powsimp(sp.expand(fc - c ** (2 * (Lf + 1)) * f))) and zero(in_a - c ** 2 * f)


def h7_quadratic_head() -> bool:
    """H7: full quadratic head h^T W h is LINEAR in W (f(cW) = c f, L = 1); with features of
    degree L_f: (c W)(c^{L_f} h)(c^{L_f} h) = c^{2 L_f + 1} h^T W h."""
    f = W11 * h1 ** 2 + 2 * W12 * h1 * h2 + W22 * h2 ** 2
    inW = f.xreplace({W11: c * W11, W12: c * W12, W22: c * W22})
    fc = inW.xreplace(_scaled_features())
    return zero(inW - c * f) and zero(sp.powsimp(sp.expand(fc - c ** (2 * Lf + 1) * f)))


def h8_euler_general() -> bool:
    """H8 (Euler): d/dc f(c theta)|_{c=1} = sum_p theta_p df/dp, and for f(c theta) = c^L f(theta)
    the left side is L f. Checked on a generic cubic with symbolic coefficients and on the
    non-polynomial 2-homogeneous f = t1 (t1^2 + t2^2)^{1/2}."""
    t1, t2, t3 = sp.symbols("t1 t2 t3", real=True)
    coeffs = sp.symbols("k0:10", real=True)
    monos = [t1 ** 3, t2 ** 3, t3 ** 3, t1 ** 2 * t2, t1 ** 2 * t3, t2 ** 2 * t1, t2 ** 2 * t3,
             t3 ** 2 * t1, t3 ** 2 * t2, t1 * t2 * t3]
    ok = True
    for f, L, ts in ((sum(k_ * m for k_, m in zip(coeffs, monos)), 3, (t1, t2, t3)),
                     (t1 * sp.sqrt(t1 ** 2 + t2 ** 2), 2, (t1, t2))):
        fc = f.subs({t: c * t for t in ts}, simultaneous=True)
        chain = sp.diff(fc, c).subs(c, 1)
        euler = sum(t * sp.diff(f, t) for t in ts)
        ok &= zero(sp.simplify(fc / f) - c ** L)       # homogeneous of degree L
        ok &= zero(chain - euler) and zero(euler - L * f)
    return ok


def h9_relu_positive_homogeneity() -> bool:
    """H9: relu(c z) = c relu(z) for c > 0 (cases z = s > 0, z = -s < 0, z = 0)."""
    s = sp.Symbol("s", positive=True)
    relu = lambda z: sp.Max(0, z)  # noqa: E731
    return (zero(relu(c * s) - c * relu(s)) and zero(relu(-c * s) - c * relu(-s))
            and relu(c * 0) == 0)


def h10_first_layer_bias() -> bool:
    """H10: a first-layer bias is jointly homogeneous with its weight: (c w) x + (c b) = c (w x + b),
    so relu((c w) x + c b) = c relu(w x + b) (by H9) and conv+bias+ReLU has degree 1."""
    w, x, b = sp.symbols("w x b", real=True)
    z = w * x + b
    zc = z.xreplace({w: c * w, b: c * b})
    return zero(zc - c * z) and c_degrees(zc) == {1}


# ---------------------------------------------------------------------------
# Euler's identity and the degrees on exact instances of the models
# ---------------------------------------------------------------------------
def _exact(name: str, expect: int, **kw) -> bool:
    r = symbolic_homogeneity(name, **kw)
    return r.homogeneous and r.euler_ok and r.degree == expect


def h11_lemma1_from_checker() -> bool:
    """H11: the exact checker derives L = 2^{n+1} - 2 and Euler's identity for n = 1..4
    (n <= 3 expanded, n = 4 both expanded with widths [2, 1, 1] and along exact random rays)."""
    ok = all(_exact("lowrank", 2 ** (m + 1) - 2, layers=m, method="expand") for m in (1, 2, 3))
    ok &= _exact("lowrank", 30, layers=4, hidden=[2, 1, 1], method="expand")
    ok &= all(_exact("lowrank", 2 ** (m + 1) - 2, layers=m, method="ray") for m in (1, 2, 3, 4))
    ok &= _exact("lowrank", 6, layers=2, rank=2, d=3, method="expand")
    return ok


def h12_heads_from_checker() -> bool:
    """H12: linear L = 1, quadratic L = 1 (linear in the stored V, W = (V + V^T)/2), lowrank L = 2
    (quadratic in a)."""
    return (_exact("linear", 1, method="expand") and _exact("quadratic", 1, d=3, method="expand")
            and _exact("lowrank", 2, rank=2, d=3, method="expand"))


def h13_conv_from_checker() -> bool:
    """H13: conv 5x5 (padding 2) + ReLU + head: lowrank 4 = 2(1+1), linear 2 = 1+1,
    quadratic 3 = 2*1+1, with AND without the conv bias (H10)."""
    ok = True
    for bias in (False, True):
        ok &= _exact("conv-lowrank", 4, conv_bias=bias, method="expand")
        ok &= _exact("conv-linear", 2, conv_bias=bias, method="expand")
        ok &= _exact("conv-quadratic", 3, conv_bias=bias, method="expand")
    return ok


# ---------------------------------------------------------------------------
# What breaks homogeneity
# ---------------------------------------------------------------------------
def h14_output_bias_breaks() -> bool:
    """H14: relu2 f = W2 relu(W1 x + b1) + b2: f(c theta) = c^2 W2 relu(W1 x + b1) + c b2 has
    c-degrees {1, 2}; the degree-1 part is b2 (b1 is harmless, H10)."""
    r = symbolic_homogeneity("relu2", method="expand")
    v, u, b1, b2, x = sp.symbols("v u b1 b2 x", real=True)
    f_open = v * (u * x + b1) + b2  # one hidden unit, open gate (u x + b1 > 0; H9 keeps it open)
    fc = sp.expand(f_open.xreplace({v: c * v, u: c * u, b1: c * b1, b2: c * b2}))
    return (not r.homogeneous and r.degrees == [1, 2] and r.breaking_parameters == ["head.linear.bias"]
            and c_degrees(fc) == {1, 2} and zero(fc.coeff(c, 1) - b2))


def h15_hidden_bias_breaks() -> bool:
    """H15: a hidden bias: pre-activation c^2 u + c b (u of degree 2) has c-degrees {1, 2}; its sign
    changes along the ray (u = 1, b = -1: c^2 - c < 0 at c = 1/2, > 0 at c = 2), so the gate flips."""
    u, b = sp.symbols("u b", real=True)
    z = c ** 2 * u + c * b
    zz = z.subs({u: 1, b: -1})
    return c_degrees(z) == {1, 2} and zz.subs(c, sp.Rational(1, 2)) < 0 < zz.subs(c, 2)


def h16_batchnorm_eval_affine() -> bool:
    """H16: BatchNorm in eval mode, y = gamma (z - mu)/sqrt(var + eps) + beta, on z of degree
    k >= 1 with gamma, beta scaled: c-degrees {k+1, 1} unless beta = gamma mu / sqrt(var + eps)."""
    z, g, mu, beta = sp.symbols("z gamma mu beta", real=True)
    sd = sp.Symbol("sd", positive=True)  # sqrt(var + eps), a buffer
    ok = True
    for kk in (1, 2, 3):
        y = g * (z - mu) / sd + beta
        yc = y.xreplace({z: c ** kk * z, g: c * g, beta: c * beta})
        ok &= c_degrees(yc * sd) == {kk + 1, 1}
        ok &= zero(sp.expand(yc).coeff(c, 1) - (beta - g * mu / sd))
    return ok


def h17_batchnorm_train_eps() -> bool:
    """H17: training-mode BN normalises by batch statistics: (c z - c m)/sqrt(c^2 v + eps) equals
    (z - m)/sqrt(v) for eps = 0 (scale invariance) but not for eps > 0."""
    z, m = sp.symbols("z m", real=True)
    v, eps = sp.symbols("v eps", positive=True)
    xhat = lambda zz, mm, vv, ee: (zz - mm) / sp.sqrt(vv + ee)  # noqa: E731
    inv0 = zero(sp.simplify(xhat(c * z, c * m, c ** 2 * v, 0) - xhat(z, m, v, 0)))
    diff = sp.simplify(xhat(c * z, c * m, c ** 2 * v, eps) - xhat(z, m, v, eps))
    not_inv = diff.subs({z: 1, m: 0, v: 1, eps: 1, c: 2}) != 0
    return inv0 and bool(not_inv)


def h18_residual_mixed_degrees() -> bool:
    """H18: a residual sum z + F(z) with z of degree k and F of degree m > 0 in its own weights:
    c-degrees {k, k + m} (ResNets are not homogeneous even without BN and biases)."""
    z, F = sp.symbols("z F", real=True)
    ok = True
    for kk, mm in ((1, 2), (2, 2), (1, 4)):
        ok &= c_degrees(c ** kk * z + c ** (kk + mm) * F) == {kk, kk + mm}
    return ok


# ---------------------------------------------------------------------------
# Scale invariance of the normalised margin
# ---------------------------------------------------------------------------
def h19_max_commutes_with_scaling() -> bool:
    """H19: max(c^L a, c^L b) = c^L max(a, b) for c > 0 (cases b = a - s and b = a + s, s >= 0)."""
    a = sp.Symbol("a", real=True)
    s = sp.Symbol("s", nonnegative=True)
    K = c ** Lsym
    return all(zero(sp.Max(K * a, K * bb) - K * sp.Max(a, bb)) for bb in (a - s, a + s))


def h20_gamma_scale_invariant() -> bool:
    """H20: gamma_n(c theta) = gamma_n(theta) = q_n / ||theta||^L: ||c theta|| = c ||theta||, and
    q_n(c theta) = c^L q_n(theta) (H19); checked on an explicit rank-1 Low-Rank DIQNN, d = 2, C = 3,
    L = 2, y = 0, in each ordering of the runner-up (f_1 >= f_2 and f_2 >= f_1)."""
    x1, x2 = sp.symbols("x1 x2", real=True)
    A = sp.symbols("a0:6", real=True)
    f = [(A[2 * i] * x1 + A[2 * i + 1] * x2) ** 2 for i in range(3)]
    norm = sp.sqrt(sum(p ** 2 for p in A))
    scale = {p: c * p for p in A}
    ok = zero(sp.sqrt(sum((c * p) ** 2 for p in A)) - c * norm)
    for j in (1, 2):
        q = f[0] - f[j]  # runner-up j
        qc = q.xreplace(scale)
        gamma_c = qc / sp.sqrt(sum((c * p) ** 2 for p in A)) ** 2
        ok &= zero(sp.simplify(gamma_c - q / norm ** 2))
    # the general statement with a symbolic L and symbolic scores
    F0, F1, F2 = sp.symbols("F0 F1 F2", real=True)
    N = sp.Symbol("N", positive=True)
    s = sp.Symbol("s", nonnegative=True)
    for f1, f2 in ((F1, F1 - s), (F1, F1 + s)):
        q = F0 - sp.Max(f1, f2)
        qc = c ** Lsym * F0 - sp.Max(c ** Lsym * f1, c ** Lsym * f2)
        ok &= zero(sp.simplify(qc / (c * N) ** Lsym - q / N ** Lsym))
    return ok


def h21_head_normalisation_invariant() -> bool:
    """H21: head-only normalisation: with features h fixed, the relu2 head W2 h + b2 is jointly
    1-homogeneous in (W2, b2), so q / ||(W2, b2)|| is invariant under scaling the head alone."""
    w = sp.symbols("w0:4", real=True)
    b = sp.symbols("b0:2", real=True)
    hh = sp.symbols("hh0:2", real=True)
    f = [w[0] * hh[0] + w[1] * hh[1] + b[0], w[2] * hh[0] + w[3] * hh[1] + b[1]]
    q = f[0] - f[1]
    params = list(w) + list(b)
    norm = sp.sqrt(sum(p ** 2 for p in params))
    sc = {p: c * p for p in params}
    return zero(sp.simplify(q.xreplace(sc) / norm.xreplace(sc) - q / norm))


CHECKS: list[tuple[str, Callable[[], bool]]] = [
    ("H1 recurrence L_n = 2(L_{n-1}+1), L_1 = 2 solves to 2^{n+1}-2 (rsolve)", h1_recurrence_solution),
    ("H2 induction: base case and step", h2_induction_step),
    ("H3 per-layer degrees 2^{n-k+1} sum to 2^{n+1}-2", h3_per_layer_sum),
    ("H4 L_1..L_4 = 2, 6, 14, 30", h4_first_values),
    ("H5 linear head: degree L_f + 1", h5_linear_head),
    ("H6 lowrank head: quadratic in a, degree 2(L_f + 1)", h6_lowrank_head),
    ("H7 quadratic head: linear in W, degree 2 L_f + 1", h7_quadratic_head),
    ("H8 Euler's identity from d/dc f(c theta) at c = 1", h8_euler_general),
    ("H9 ReLU is positively 1-homogeneous", h9_relu_positive_homogeneity),
    ("H10 a first-layer bias is jointly homogeneous with its weight", h10_first_layer_bias),
    ("H11 Lemma 1 + Euler derived exactly for n = 1..4", h11_lemma1_from_checker),
    ("H12 linear 1, quadratic 1, lowrank 2 derived exactly", h12_heads_from_checker),
    ("H13 conv+ReLU+{lowrank,linear,quadratic} = 4, 2, 3, with and without conv bias", h13_conv_from_checker),
    ("H14 relu2: the output bias b2 breaks homogeneity (c-degrees {1, 2})", h14_output_bias_breaks),
    ("H15 a hidden bias mixes degrees and flips the ReLU gate", h15_hidden_bias_breaks),
    ("H16 BatchNorm (eval) is affine: mixed degrees unless the shift vanishes", h16_batchnorm_eval_affine),
    ("H17 BatchNorm (train) is scale invariant only for eps = 0", h17_batchnorm_train_eps),
    ("H18 residual sums mix degrees", h18_residual_mixed_degrees),
    ("H19 max commutes with positive scaling", h19_max_commutes_with_scaling),
    ("H20 gamma_n(c theta) = gamma_n(theta)", h20_gamma_scale_invariant),
    ("H21 head-only normalisation is invariant under head scaling", h21_head_normalisation_invariant),
]


def run_checks() -> list[tuple[str, bool]]:
    """Run every check; returns ``[(name, passed)]`` (an exception counts as a failure)."""
    return _run_checks(CHECKS)


def main() -> int:
    return _checks_main(CHECKS)


if __name__ == "__main__":
    sys.exit(main())
