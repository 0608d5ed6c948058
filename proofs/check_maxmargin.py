"""Symbolic checks (sympy) of every identity in ``proofs/maxmargin.md``.

Run ``python proofs/check_maxmargin.py``: one line per check, ``PASS``/``FAIL``, exit status 1
if any fails. ``run_checks()`` returns ``[(name, passed), ...]``; the names (``M1`` ...) are the
tags used in the proof. Everything is exact symbolic algebra on small symbolic sizes.
"""
from __future__ import annotations

import sys
from functools import partial

import sympy as sp

from margin_theory._util import checks_main as _checks_main, run_checks as _run_checks  # noqa: E402


def zero(expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


def zero_matrix(M) -> bool:
    return all(zero(e) for e in M)


d = 3
X = sp.Matrix(sp.symbols("x1:4", real=True))
Xp = sp.Matrix(sp.symbols("xp1:4", real=True))


def sym_matrix(name: str, n: int = d) -> sp.Matrix:
    return sp.Matrix(n, n, lambda i, j: sp.Symbol(f"{name}{min(i, j) + 1}{max(i, j) + 1}", real=True))


def gen_matrix(name: str, r: int, c: int) -> sp.Matrix:
    return sp.Matrix(r, c, lambda i, j: sp.Symbol(f"{name}{i + 1}{j + 1}", real=True))


def frob(A, B) -> sp.Expr:
    return sum(A[i, j] * B[i, j] for i in range(A.rows) for j in range(A.cols))


W = sym_matrix("w")
V = gen_matrix("v", d, d)
SYM = (V + V.T) / 2
SKEW = (V - V.T) / 2


# --- 1. the full head is a linear model in x x^T ------------------------------------------
def m1_linear_in_outer_product() -> bool:
    """x^T W x = <W, x x^T>_F for symmetric W."""
    return zero((X.T * W * X)[0] - frob(W, X * X.T))


def m2_only_symmetric_part() -> bool:
    """x^T V x = x^T sym(V) x and ||V||^2 = ||sym V||^2 + ||skew V||^2."""
    return zero((X.T * V * X)[0] - (X.T * SYM * X)[0]) and zero(frob(V, V) - frob(SYM, SYM) - frob(SKEW, SKEW))


def _svec(S: sp.Matrix) -> list:
    return [S[i, j] * (1 if i == j else sp.sqrt(2)) for i in range(S.rows) for j in range(i, S.cols)]


def m3_svec_isometry() -> bool:
    """<svec A, svec B> = <A, B>_F for symmetric A, B; so <svec(x x^T), svec W> = x^T W x."""
    A, B = sym_matrix("a"), sym_matrix("b")
    ok = zero(sum(p * q for p, q in zip(_svec(A), _svec(B))) - frob(A, B))
    return ok and zero(sum(p * q for p, q in zip(_svec(X * X.T), _svec(W))) - (X.T * W * X)[0])


def m4_kernel() -> bool:
    """<x x^T, x' x'^T>_F = (x . x')^2: the dual's kernel."""
    return zero(frob(X * X.T, Xp * Xp.T) - (X.dot(Xp)) ** 2)


# --- 2. the Low-Rank head -------------------------------------------------------------------
A2 = gen_matrix("a", 2, d)          # rank r = 2 factor, rows a_k


def m5_lowrank_is_psd_quadratic() -> bool:
    """sum_k (a_k . x)^2 = x^T A^T A x, and it is >= 0 (a sum of squares)."""
    f = sum((A2.row(k) * X)[0] ** 2 for k in range(2))
    return zero(f - (X.T * A2.T * A2 * X)[0])


def m6_trace_is_frobenius() -> bool:
    """tr(A^T A) = ||A||_F^2: ||theta||^2 = sum_i tr W_i."""
    return zero((A2.T * A2).trace() - frob(A2, A2))


def m7_factorisation_attains() -> bool:
    """Any PSD W = Q diag(l) Q^T equals A^T A with A = diag(sqrt l) Q^T (rows = rank W):
    checked for 2 x 2 with Q a rotation, eigenvalues l1, l2 >= 0."""
    t = sp.Symbol("t", real=True)
    l1, l2 = sp.symbols("l1 l2", nonnegative=True)
    Q = sp.Matrix([[sp.cos(t), -sp.sin(t)], [sp.sin(t), sp.cos(t)]])
    Wq = Q * sp.diag(l1, l2) * Q.T
    A = sp.diag(sp.sqrt(l1), sp.sqrt(l2)) * Q.T
    return zero_matrix(A.T * A - Wq) and zero((A.T * A).trace() - (l1 + l2))


def m8_relaxation_bound() -> bool:
    """Feasible A (margins >= 1) gives feasible W = A^T A with the same margins and
    sum tr W = ||A||^2, so OPT_SDP <= min ||A||^2 (checked: margins and norms agree)."""
    B2 = gen_matrix("b", 2, d)
    qa = (X.T * A2.T * A2 * X)[0] - (X.T * B2.T * B2 * X)[0]
    qw = (X.T * (A2.T * A2 - B2.T * B2) * X)[0]
    return zero(qa - qw) and zero((A2.T * A2 + B2.T * B2).trace() - frob(A2, A2) - frob(B2, B2))


# --- 3. normalisation and the unit-margin problem -----------------------------------------
def m9_scale_invariance_and_unit_margins() -> bool:
    """q(c theta)/||c theta||^L = q(theta)/||theta||^L (linear/quadratic: L = 1 in W;
    lowrank: L = 2 in A); so max gamma_min = 1/||W*|| (L = 1) resp. 1/sum tr W* (L = 2)
    where W* minimises the norm subject to every margin >= 1 (min margin of W* is 1)."""
    c = sp.Symbol("c", positive=True)
    w0, w1 = gen_matrix("p", 1, d), gen_matrix("s", 1, d)
    q_lin = ((w0 - w1) * X)[0]
    n_lin = sp.sqrt(frob(w0, w0) + frob(w1, w1))
    ok = zero(((c * w0 - c * w1) * X)[0] / sp.sqrt(frob(c * w0, c * w0) + frob(c * w1, c * w1)) - q_lin / n_lin)
    B2 = gen_matrix("b", 2, d)
    q_lr = (X.T * (A2.T * A2 - B2.T * B2) * X)[0]
    n_lr = frob(A2, A2) + frob(B2, B2)
    cA, cB = c * A2, c * B2
    ok &= zero((X.T * (cA.T * cA - cB.T * cB) * X)[0] / (frob(cA, cA) + frob(cB, cB)) - q_lr / n_lr)
    # the unit-margin rescaling: theta with min margin m > 0 -> theta / m^(1/L) has min margin 1
    m, nrm = sp.symbols("m nrm", positive=True)
    ok &= zero(1 / (nrm / m) - m / nrm)                              # L = 1: gamma = m/||W|| = 1/||W/m||
    ok &= zero(1 / (nrm / m) - m / nrm) and zero(1 / (nrm**2 / m) - m / nrm**2)   # L = 2
    return bool(ok)


def m10_class_mean() -> bool:
    """Margins depend on differences only; sum_i ||W_i||^2 = sum_i ||W_i - Wbar||^2 + C ||Wbar||^2,
    so the optimum has sum_i W_i = 0; and GD keeps sum_i W_i fixed: sum_i (p_i - [i = y]) = 0."""
    w = sp.symbols("w0:3", real=True)
    wb = sum(w) / 3
    ok = zero(sum(v**2 for v in w) - sum((v - wb) ** 2 for v in w) - 3 * wb**2)
    z = sp.symbols("z0:3", real=True)
    p = [sp.exp(v) / sum(sp.exp(u) for u in z) for v in z]
    return ok and zero(sum(p) - 1)


def m11_span_reduction() -> bool:
    """With P the projection on span{x_n} (basis e1, e2 here): x^T P W P x = x^T W x for x in
    the span, ||W||^2 - ||P W P||^2 = 2 w13^2 + 2 w23^2 + w33^2 >= 0, tr W - tr PWP = w33 >= 0
    (a diagonal entry of a PSD W)."""
    P = sp.diag(1, 1, 0)
    xs = sp.Matrix([X[0], X[1], 0])
    PWP = P * W * P
    s = W
    return (zero((xs.T * PWP * xs)[0] - (xs.T * W * xs)[0])
            and zero(frob(W, W) - frob(PWP, PWP) - (2 * s[0, 2] ** 2 + 2 * s[1, 2] ** 2 + s[2, 2] ** 2))
            and zero(W.trace() - PWP.trace() - s[2, 2]))


def m12_svm_duality() -> bool:
    """SVM: with w = A^T alpha (stationarity) the duality gap is
    ||w||^2 - sum alpha = sum_p alpha_p ((A w)_p - 1), zero under complementary slackness."""
    A = gen_matrix("g", 2, 3)
    al = sp.Matrix(sp.symbols("al1:3", real=True))
    w = A.T * al
    Aw = A * w
    return zero(w.dot(w) - sum(al) - sum(al[p] * (Aw[p] - 1) for p in range(2)))


def m13_sdp_duality() -> bool:
    """SDP: with Z_i = I - sum_n c_ni x_n x_n^T the duality gap is
    sum_i tr W_i - sum lambda = sum_i <Z_i, W_i> + sum_p lambda_p (margin_p - 1)
    (2 classes, 2 points x, x' with labels 0, 1, d = 2)."""
    x = sp.Matrix(sp.symbols("u1:3", real=True))
    xp = sp.Matrix(sp.symbols("uu1:3", real=True))
    W0, W1 = sym_matrix("m", 2), sym_matrix("k", 2)
    l1, l2 = sp.symbols("l1 l2", real=True)
    Z0 = sp.eye(2) - l1 * x * x.T + l2 * xp * xp.T
    Z1 = sp.eye(2) + l1 * x * x.T - l2 * xp * xp.T
    marg1 = (x.T * (W0 - W1) * x)[0]
    marg2 = (xp.T * (W1 - W0) * xp)[0]
    gap = W0.trace() + W1.trace() - (l1 + l2)
    return zero(gap - frob(Z0, W0) - frob(Z1, W1) - l1 * (marg1 - 1) - l2 * (marg2 - 1))


# --- 4. XOR closed forms --------------------------------------------------------------------
XOR = [((1, 1), 0), ((-1, -1), 0), ((1, -1), 1), ((-1, 1), 1)]


def _xor_margin(W0, W1, x, y):
    xv = sp.Matrix(x)
    f0, f1 = (xv.T * W0 * xv)[0], (xv.T * W1 * xv)[0]
    return f0 - f1 if y == 0 else f1 - f0


def m14_xor_linear_infeasible() -> bool:
    """Linear head: the constraints of (1,1) and (-1,-1) (both class 0) add up to 0 >= 2 (Farkas)."""
    w = sp.Matrix(sp.symbols("dw1 dw2", real=True))          # w = w0 - w1
    return zero(w.dot(sp.Matrix([1, 1])) + w.dot(sp.Matrix([-1, -1])))


def m15_xor_quadratic_optimum() -> bool:
    """Quadratic head: W0 = -W1 = [[0, 1/4], [1/4, 0]]; every margin is exactly 1; KKT with
    alpha_n = 1/16 (stationarity W_i = sum_n c_ni x_n x_n^T, sum alpha = ||W||^2 = 1/4), so
    gamma* = 1/||W|| = 2."""
    W0 = sp.Matrix([[0, sp.Rational(1, 4)], [sp.Rational(1, 4), 0]])
    W1 = -W0
    ok = all(zero(_xor_margin(W0, W1, x, y) - 1) for x, y in XOR)
    a = sp.Rational(1, 16)
    S0 = sum(((a if y == 0 else -a) * sp.Matrix(x) * sp.Matrix(x).T for x, y in XOR), sp.zeros(2))
    ok &= zero_matrix(S0 - W0) and zero_matrix(-S0 - W1)
    norm2 = frob(W0, W0) + frob(W1, W1)
    return bool(ok and zero(norm2 - 4 * a) and zero(1 / sp.sqrt(norm2) - 2))


def m16_xor_quadratic_minimum() -> bool:
    """Directly: with D = W0 - W1 = [[p, s], [s, r]] and W0 = -W1 = D/2, the constraints are
    p + r + 2s >= 1 and p + r - 2s <= -1, and ||W||^2 = (p^2 + r^2 + 2 s^2)/2 >= 1/4:
    (p^2 + r^2 + 2s^2)/2 - 1/4 = (p^2 + r^2)/2 + (s^2 - 1/4) with s >= 1/2 from the two constraints."""
    p, r, s = sp.symbols("p r s", real=True)
    c1, c2 = p + r + 2 * s, -(p + r - 2 * s)                # both >= 1
    return zero((c1 + c2) / 4 - s) and zero((p**2 + r**2 + 2 * s**2) / 2 - sp.Rational(1, 4)
                                            - ((p**2 + r**2) / 2 + (s**2 - sp.Rational(1, 4))))


def m17_xor_lowrank_optimum() -> bool:
    """Lowrank relaxation: W0 = (1,1)(1,1)^T/4, W1 = (1,-1)(1,-1)^T/4 (rank 1), margins 1,
    sum tr W = 1; dual lambda_n = 1/4: Z_0 = I - P/2 + M/2 and Z_1 = I + P/2 - M/2 are PSD
    (eigenvalues 0, 2), Z_i W_i = 0, sum lambda = 1 = OPT; gamma* = 1, attained by
    u = (1,1)/2, v = (1,-1)/2 (||theta||^2 = 1), Theorem 1's limit."""
    u, v = sp.Matrix([1, 1]) / 2, sp.Matrix([1, -1]) / 2
    W0, W1 = u * u.T, v * v.T
    ok = all(zero(_xor_margin(W0, W1, x, y) - 1) for x, y in XOR)
    Pm, Mm = sp.Matrix([[1, 1], [1, 1]]), sp.Matrix([[1, -1], [-1, 1]])
    lam = sp.Rational(1, 4)
    Z0 = sp.eye(2) - 2 * lam * Pm + 2 * lam * Mm
    Z1 = sp.eye(2) + 2 * lam * Pm - 2 * lam * Mm
    ok &= sorted(Z0.eigenvals()) == [0, 2] and sorted(Z1.eigenvals()) == [0, 2]
    ok &= zero_matrix(Z0 * W0) and zero_matrix(Z1 * W1)
    ok &= zero(W0.trace() + W1.trace() - 1) and zero(4 * lam - 1)
    ok &= zero(u.dot(u) + v.dot(v) - 1)
    return bool(ok)


def m18_scaled_inputs() -> bool:
    """Scaling every input by s multiplies every margin by s (linear) or s^2 (matrix heads) at
    fixed theta, so gamma* scales the same way and the optimal direction is unchanged: the
    experiment's XOR (points / sqrt 2) has gamma* = 1 (quadratic) and 1/2 (lowrank)."""
    s = sp.Symbol("s", positive=True)
    return zero(((s * X).T * W * (s * X))[0] - s**2 * (X.T * W * X)[0]) and zero(2 * (1 / sp.sqrt(2)) ** 2 - 1) \
        and zero(1 * (1 / sp.sqrt(2)) ** 2 - sp.Rational(1, 2))


CHECKS = [
    ("M1 x^T W x = <W, x x^T> (1.1)", m1_linear_in_outer_product),
    ("M2 only sym(V) acts; ||V||^2 = ||sym V||^2 + ||skew V||^2 (1.2)", m2_only_symmetric_part),
    ("M3 svec is an isometry (1.3)", m3_svec_isometry),
    ("M4 kernel <x x^T, x' x'^T> = (x.x')^2 (1.4)", m4_kernel),
    ("M5 lowrank f = x^T A^T A x (2.1)", m5_lowrank_is_psd_quadratic),
    ("M6 tr(A^T A) = ||A||_F^2 (2.2)", m6_trace_is_frobenius),
    ("M7 PSD W = A^T A with rank W rows (2.3)", m7_factorisation_attains),
    ("M8 relaxation bound (2.4)", m8_relaxation_bound),
    ("M9 scale invariance and unit margins (3.1)", m9_scale_invariance_and_unit_margins),
    ("M10 class mean (3.2)", m10_class_mean),
    ("M11 reduction to the span (3.3)", m11_span_reduction),
    ("M12 SVM duality gap (3.4)", m12_svm_duality),
    ("M13 SDP duality gap (3.5)", m13_sdp_duality),
    ("M14 XOR linear infeasible (4.1)", m14_xor_linear_infeasible),
    ("M15 XOR quadratic optimum and KKT (4.2)", m15_xor_quadratic_optimum),
    ("M16 XOR quadratic lower bound (4.2)", m16_xor_quadratic_minimum),
    ("M17 XOR lowrank optimum and dual certificate (4.3)", m17_xor_lowrank_optimum),
    ("M18 scaled inputs (4.4)", m18_scaled_inputs),
]


run_checks = partial(_run_checks, CHECKS)        # -> [(name, passed), ...]

if __name__ == "__main__":
    sys.exit(_checks_main(CHECKS))
