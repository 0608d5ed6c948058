"""Symbolic checks (sympy) of every algebraic step in ``proofs/theorem1_xor.md``.

Run ``python proofs/check_theorem1.py``: one line per check, ``PASS``/``FAIL``, exit
status 1 if any check fails. ``run_checks()`` returns ``[(name, passed), ...]``.
The check names (``C1`` ... ) are the references used in the proof. Everything is
exact symbolic algebra, limits or differentiation; nothing is sampled numerically.
"""
from __future__ import annotations

import sys
from typing import Callable

import sympy as sp

from margin_theory._util import checks_main as _checks_main, run_checks as _run_checks  # noqa: E402

# ---------------------------------------------------------------------------
# Symbols and the model, built from the data (SPEC §4)
# ---------------------------------------------------------------------------
u1, u2, v1, v2 = sp.symbols("u1 u2 v1 v2", real=True)
a, b, c, e = sp.symbols("a b c e", real=True)
A, B, C, E = sp.symbols("A B C E", nonnegative=True)
s0, s1 = sp.symbols("s0 s1", positive=True)
k, m = sp.symbols("k m", real=True)
x1, x2, t = sp.symbols("x1 x2 t", real=True)

THETA = sp.Matrix([u1, u2, v1, v2])
U = sp.Matrix([u1, u2])
V = sp.Matrix([v1, v2])
DATA = [((1, 1), 0), ((-1, -1), 0), ((1, -1), 1), ((-1, 1), 1)]
#: reduced coordinates a = u1+u2, b = u1-u2, c = v1+v2, e = v1-v2 and their inverse
TO_REDUCED = {u1: (a + b) / 2, u2: (a - b) / 2, v1: (c + e) / 2, v2: (c - e) / 2}
RED = {a: u1 + u2, b: u1 - u2, c: v1 + v2, e: v1 - v2}
S = a**2 + b**2 + c**2 + e**2
Nnum = a**2 - c**2 + e**2 - b**2
SQ = {A: a**2, B: b**2, C: c**2, E: e**2}


def f(theta_u, theta_v, x):
    """The two class scores f_0 = (u.x)^2, f_1 = (v.x)^2."""
    xv = sp.Matrix(x)
    return [(theta_u.dot(xv)) ** 2, (theta_v.dot(xv)) ** 2]


def q_point(x, y):
    """q_n = f_{y_n}(x_n) - f_{other}(x_n)."""
    f0, f1 = f(U, V, x)
    return f0 - f1 if y == 0 else f1 - f0


def zero(expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


def sigmoid(z):
    return 1 / (1 + sp.exp(-z))


Q0 = a**2 - c**2
Q1 = e**2 - b**2
S0 = sigmoid(-Q0)  # s0 = sigmoid(-q0) as a function of the reduced coordinates
S1 = sigmoid(-Q1)
LOSS_THETA = sp.Rational(1, 4) * sum(
    sp.log(sp.exp(f(U, V, x)[0]) + sp.exp(f(U, V, x)[1])) - f(U, V, x)[y] for x, y in DATA
)  # mean cross-entropy over the four points
#: the reduced ODE (step 2.2): d(a, b, c, e)/dt
RED_ODE = {a: 2 * S0 * a, b: -2 * S1 * b, c: -2 * S0 * c, e: 2 * S1 * e}


def ddt(expr, ode=RED_ODE):
    """Time derivative of an expression in (a, b, c, e) along the reduced ODE (chain rule)."""
    return sum(sp.diff(expr, var) * rhs for var, rhs in ode.items())


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
def c1_projections():
    """(1.1) u.x and v.x at the four points are +-a, +-b and +-c, +-e."""
    want = [(a, c), (-a, -c), (b, e), (-b, -e)]
    for (x, _), (ua, va) in zip(DATA, want):
        xv = sp.Matrix(x)
        if not (zero(U.dot(xv).subs(TO_REDUCED) - ua) and zero(V.dot(xv).subs(TO_REDUCED) - va)):
            return False
    return True


def c2_margins():
    """(1.2) q = a^2 - c^2 at both class-0 points, q = e^2 - b^2 at both class-1 points."""
    return all(zero(q_point(x, y).subs(TO_REDUCED) - (Q0 if y == 0 else Q1)) for x, y in DATA)


def c3_norm():
    """(1.3) ||theta||^2 = (a^2 + b^2 + c^2 + e^2)/2."""
    return zero(THETA.dot(THETA).subs(TO_REDUCED) - S / 2)


def c4_loss():
    """(1.4) mean CE = (softplus(-q0) + softplus(-q1))/2 (compared after exp: log is injective)."""
    lhs = LOSS_THETA.subs(TO_REDUCED)
    rhs = (sp.log(1 + sp.exp(-Q0)) + sp.log(1 + sp.exp(-Q1))) / 2
    return sp.simplify(sp.exp(4 * lhs) - sp.exp(4 * rhs)) == 0


def c5_gamma_bar():
    """(1.5) gamma_bar = mean_n q_n / ||theta||^2 = (a^2 - c^2 + e^2 - b^2)/(a^2 + b^2 + c^2 + e^2)."""
    mean_q = sum(q_point(x, y) for x, y in DATA) / 4
    g = (mean_q / THETA.dot(THETA)).subs(TO_REDUCED)
    return sp.simplify(g - Nnum / S) == 0


def c6_gap():
    """(1.6) 1 - gamma_bar = 2(b^2 + c^2)/S and 1 + gamma_bar = 2(a^2 + e^2)/S."""
    return (sp.simplify(1 - Nnum / S - 2 * (b**2 + c**2) / S) == 0
            and sp.simplify(1 + Nnum / S - 2 * (a**2 + e**2) / S) == 0)


def c7_gradient():
    """(2.1) grad loss = (-s0 a + s1 b, -s0 a - s1 b, s0 c - s1 e, s0 c + s1 e)."""
    want = [-S0 * a + S1 * b, -S0 * a - S1 * b, S0 * c - S1 * e, S0 * c + S1 * e]
    for var, w in zip(THETA, want):
        g = sp.diff(LOSS_THETA, var).subs(TO_REDUCED)
        if sp.simplify(g - w) != 0:
            return False
    return True


def c8_reduced_ode():
    """(2.2) theta' = -grad loss gives a' = 2 s0 a, b' = -2 s1 b, c' = -2 s0 c, e' = 2 s1 e."""
    th_dot = [-sp.diff(LOSS_THETA, var).subs(TO_REDUCED) for var in THETA]
    red_dot = {a: th_dot[0] + th_dot[1], b: th_dot[0] - th_dot[1],
               c: th_dot[2] + th_dot[3], e: th_dot[2] - th_dot[3]}
    return all(sp.simplify(red_dot[v] - RED_ODE[v]) == 0 for v in (a, b, c, e))


def c9_sign_preservation():
    """(2.4) a(t) = a(0) exp(2 int_0^t s0) solves a' = 2 s0(t) a (likewise b, c, e)."""
    s0f = sp.Function("s0")
    a0, tau = sp.symbols("a0 tau", real=True)
    sol = a0 * sp.exp(2 * sp.Integral(s0f(tau), (tau, 0, t)))
    return zero(sp.diff(sol, t) - 2 * s0f(t) * sol) and sol.subs(t, 0).doit() == a0


def c10_invariant_ac():
    """(3.1) d(a c)/dt = 0."""
    return zero(ddt(a * c))


def c11_invariant_be():
    """(3.1) d(b e)/dt = 0."""
    return zero(ddt(b * e))


def c12_squares():
    """(4.1) A' = 4 s0 A, C' = -4 s0 C, B' = -4 s1 B, E' = 4 s1 E for the squares."""
    return (zero(ddt(a**2) - 4 * S0 * a**2) and zero(ddt(c**2) + 4 * S0 * c**2)
            and zero(ddt(b**2) + 4 * S1 * b**2) and zero(ddt(e**2) - 4 * S1 * e**2))


def _square_ode():
    return {A: 4 * s0 * A, C: -4 * s0 * C, B: -4 * s1 * B, E: 4 * s1 * E}


def c13_gamma_quotient():
    """(4.2) N'S - N S' = 4[s0(P0^2 - q0^2) + s1(P1^2 - q1^2) + (s0 + s1)(P0 P1 - q0 q1)]."""
    ode = _square_ode()
    N = A - C + E - B
    Ssq = A + B + C + E
    Nd = sum(sp.diff(N, v) * r for v, r in ode.items())
    Sd = sum(sp.diff(Ssq, v) * r for v, r in ode.items())
    P0, P1, q0, q1 = A + C, B + E, A - C, E - B
    rhs = 4 * (s0 * (P0**2 - q0**2) + s1 * (P1**2 - q1**2) + (s0 + s1) * (P0 * P1 - q0 * q1))
    return zero(Nd * Ssq - N * Sd - rhs)


def c14_sign_pieces():
    """(4.3) P0^2 - q0^2 = 4AC, P1^2 - q1^2 = 4BE, P0 P1 - q0 q1 = 2(AB + CE)."""
    P0, P1, q0, q1 = A + C, B + E, A - C, E - B
    return (zero(P0**2 - q0**2 - 4 * A * C) and zero(P1**2 - q1**2 - 4 * B * E)
            and zero(P0 * P1 - q0 * q1 - 2 * (A * B + C * E)))


def c15_gamma_derivative():
    """(4.4) d gamma_bar/dt = 8[2 s0 AC + 2 s1 BE + (s0 + s1)(AB + CE)]/S^2 along the reduced ODE."""
    lhs = ddt(Nnum / S)
    rhs = 8 * (2 * S0 * a**2 * c**2 + 2 * S1 * b**2 * e**2
               + (S0 + S1) * (a**2 * b**2 + c**2 * e**2)) / S**2
    return sp.simplify(lhs - rhs) == 0


def c16_euler():
    """(4.5) Euler's identity <grad q_n, theta> = 2 q_n for each of the four points (L = 2)."""
    return all(zero(sp.Matrix([sp.diff(q_point(x, y), v) for v in THETA]).dot(THETA) - 2 * q_point(x, y))
               for x, y in DATA)


def c17_lemma2():
    """(4.5) Lemma 2 (SPEC §5): <Gamma 1, theta'>/(N ||theta||^2) equals (4.4)."""
    nrm2 = THETA.dot(THETA)
    P = sp.eye(4) - THETA * THETA.T / nrm2
    hs = [sp.Matrix([sp.diff(q_point(x, y), v) for v in THETA]) for x, y in DATA]
    G1 = sum((P * h for h in hs), sp.zeros(4, 1))
    s0_th, s1_th = S0.subs(RED), S1.subs(RED)
    grad = sp.Matrix([-s0_th * (u1 + u2) + s1_th * (u1 - u2), -s0_th * (u1 + u2) - s1_th * (u1 - u2),
                      s0_th * (v1 + v2) - s1_th * (v1 - v2), s0_th * (v1 + v2) + s1_th * (v1 - v2)])
    vel = G1.dot(-grad) / (4 * nrm2)
    want = (8 * (2 * S0 * a**2 * c**2 + 2 * S1 * b**2 * e**2
                 + (S0 + S1) * (a**2 * b**2 + c**2 * e**2)) / S**2)
    return sp.simplify(vel.subs(TO_REDUCED) - want) == 0


def c18_equality_case():
    """(4.6) with A, E > 0 the numerator of (4.4) vanishes iff B = C = 0 (it is 0 there)."""
    num = 2 * s0 * A * C + 2 * s1 * B * E + (s0 + s1) * (A * B + C * E)
    # every term is a product of positive s's and non-negative squares; at B = C = 0 it is 0,
    # and it is >= 2 s0 A C + 2 s1 B E, which is > 0 when A, E > 0 and (B, C) != 0.
    lower = 2 * s0 * A * C + 2 * s1 * B * E
    return zero(num.subs({B: 0, C: 0})) and zero(sp.expand(num - lower - (s0 + s1) * (A * B + C * E)))


def c19_margin_growth():
    """(5.1) q0' = 4 s0 (a^2 + c^2) >= 0 and q1' = 4 s1 (b^2 + e^2) >= 0."""
    return zero(ddt(Q0) - 4 * S0 * (a**2 + c**2)) and zero(ddt(Q1) - 4 * S1 * (b**2 + e**2))


def c20_scalar_reduction():
    """(5.2) with c = k/a: A' = 4A sigmoid(k^2/A - A) =: F(A), and 1/F(A) = (1 + e^{A - k^2/A})/(4A)."""
    Apos = sp.symbols("A_", positive=True)
    lhs = (ddt(a**2)).subs(c, k / a).subs(a, sp.sqrt(Apos))
    F = 4 * Apos * sigmoid(k**2 / Apos - Apos)
    return (sp.simplify(lhs - F) == 0
            and sp.simplify(1 / F - (1 + sp.exp(Apos - k**2 / Apos)) / (4 * Apos)) == 0)


def c21_partner_scalar():
    """(5.3) same for (b, e): with b = m/e, E' = 4E sigmoid(m^2/E - E)."""
    Epos = sp.symbols("E_", positive=True)
    lhs = (ddt(e**2)).subs(b, m / e).subs(e, sp.sqrt(Epos))
    return sp.simplify(lhs - 4 * Epos * sigmoid(m**2 / Epos - Epos)) == 0


def c22_integration_by_parts():
    """(6.1) d/dx (e^x/x) = e^x/x - e^x/x^2 (so int_1^A e^x/x = e^A/A - e + int_1^A e^x/x^2)."""
    xx = sp.symbols("x", positive=True)
    return zero(sp.diff(sp.exp(xx) / xx, xx) - (sp.exp(xx) / xx - sp.exp(xx) / xx**2))


def c23_remainder_bound():
    """(6.1) int_{A/2}^A e^x dx * 4/A^2 = 4(e^A - e^{A/2})/A^2, and A^2 e^{-A} e^{A/2} -> 0."""
    Ap = sp.symbols("A_", positive=True)
    xx = sp.symbols("x", positive=True)
    ok1 = zero(4 / Ap**2 * sp.integrate(sp.exp(xx), (xx, Ap / 2, Ap)) - 4 * (sp.exp(Ap) - sp.exp(Ap / 2)) / Ap**2)
    ok2 = sp.limit(Ap**2 * sp.exp(-Ap / 2), Ap, sp.oo) == 0
    return ok1 and ok2


def c24_ei_asymptotics():
    """(6.1) A e^{-A} Ei(A) -> 1 and A (A e^{-A} Ei(A) - 1) -> 1: int^A e^x/x = (e^A/A)(1 + O(1/A))."""
    Ap = sp.symbols("A_", positive=True)
    r = Ap * sp.exp(-Ap) * sp.Ei(Ap)
    return sp.limit(r, Ap, sp.oo) == 1 and sp.limit(Ap * (r - 1), Ap, sp.oo) == 1


def c25_log_inversion():
    """(6.2) t = e^A/(4A) (1 + d)  <=>  A = log t + log A + log 4 - log(1 + d)."""
    Ap, tp, d = sp.symbols("A_ t_ d", positive=True)
    tt = sp.exp(Ap) / (4 * Ap) * (1 + d)
    return zero(sp.expand_log(sp.log(tt), force=True) - (Ap - sp.log(Ap) - sp.log(4) + sp.log(1 + d)))


def c26_gap_in_invariants():
    """(6.4) with b = m/e, c = k/a: 1 - gamma_bar = 2(k^2/A + m^2/E)/(A + E + k^2/A + m^2/E)."""
    Ap, Ep = sp.symbols("A_ E_", positive=True)
    gap = (1 - Nnum / S).subs({c: k / a, b: m / e}).subs({a: sp.sqrt(Ap), e: sp.sqrt(Ep)})
    want = 2 * (k**2 / Ap + m**2 / Ep) / (Ap + Ep + k**2 / Ap + m**2 / Ep)
    return sp.simplify(gap - want) == 0


def c27_gap_limit():
    """(6.4) A = alpha L, E = beta L: L^2 (1 - gamma_bar) -> 2(k^2/alpha + m^2/beta)/(alpha + beta); = k^2 + m^2 at 1, 1."""
    L, al, be = sp.symbols("L alpha beta", positive=True)
    Ap, Ep = al * L, be * L
    gap = 2 * (k**2 / Ap + m**2 / Ep) / (Ap + Ep + k**2 / Ap + m**2 / Ep)
    lim = sp.limit(L**2 * gap, L, sp.oo)
    want = 2 * (k**2 / al + m**2 / be) / (al + be)
    return sp.simplify(lim - want) == 0 and sp.simplify(want.subs({al: 1, be: 1}) - (k**2 + m**2)) == 0


def c28_norm_asymptotics():
    """(6.3) ||theta||^2 = (A + E + k^2/A + m^2/E)/2; with A = alpha L, E = beta L: ||theta||^2/L -> (alpha+beta)/2."""
    L, al, be = sp.symbols("L alpha beta", positive=True)
    Ap, Ep = sp.symbols("A_ E_", positive=True)
    nrm = (S / 2).subs({c: k / a, b: m / e}).subs({a: sp.sqrt(Ap), e: sp.sqrt(Ep)})
    ok1 = sp.simplify(nrm - (Ap + Ep + k**2 / Ap + m**2 / Ep) / 2) == 0
    ok2 = sp.simplify(sp.limit(nrm.subs({Ap: al * L, Ep: be * L}) / L, L, sp.oo) - (al + be) / 2) == 0
    return ok1 and ok2


def c29_loss_asymptotics():
    """(6.5) softplus(-q) e^q -> 1 as q -> oo, and e^{-A} = (1 + d)/(4 t A) when t = e^A (1+d)/(4A)."""
    qq, Ap, tp, d = sp.symbols("q A_ t_ d", positive=True)
    ok1 = sp.limit(sp.log(1 + sp.exp(-qq)) * sp.exp(qq), qq, sp.oo) == 1
    tt = sp.exp(Ap) / (4 * Ap) * (1 + d)
    ok2 = zero(sp.simplify(sp.exp(-Ap) - (1 + d) / (4 * tt * Ap)))
    return ok1 and ok2


def c30_quadratic_form():
    """(7.1) Q = (u.x)^2 - (v.x)^2 = alpha x1^2 + 2 beta x1 x2 + delta x2^2 with 2 beta/||theta||^2 = gamma_bar,
    alpha = ((a+b)^2 - (c+e)^2)/4, delta = ((a-b)^2 - (c-e)^2)/4."""
    Q = sp.expand(((U.dot(sp.Matrix([x1, x2]))) ** 2 - (V.dot(sp.Matrix([x1, x2]))) ** 2).subs(TO_REDUCED))
    poly = sp.Poly(Q, x1, x2)
    al = poly.coeff_monomial(x1**2)
    two_beta = poly.coeff_monomial(x1 * x2)
    de = poly.coeff_monomial(x2**2)
    return (sp.simplify(two_beta / (S / 2) - Nnum / S) == 0
            and zero(al - ((a + b) ** 2 - (c + e) ** 2) / 4) and zero(de - ((a - b) ** 2 - (c - e) ** 2) / 4))


def c31_boundary_normals():
    """(7.2) Q = ((u-v).x)((u+v).x); u - v = ((a-e) + (b-c), (a+e) - (b+c))/2, u + v = ((a+e) + (b+c), (a-e) - (b-c))/2."""
    X = sp.Matrix([x1, x2])
    Q = (U.dot(X)) ** 2 - (V.dot(X)) ** 2
    ok1 = zero(Q - (U - V).dot(X) * (U + V).dot(X))
    nm = (U - V).subs(TO_REDUCED)
    np_ = (U + V).subs(TO_REDUCED)
    ok2 = (zero(nm[0] - ((a - e) + (b - c)) / 2) and zero(nm[1] - ((a + e) - (b + c)) / 2)
           and zero(np_[0] - ((a + e) + (b + c)) / 2) and zero(np_[1] - ((a - e) - (b - c)) / 2))
    return ok1 and ok2


def c32_abs_difference():
    """(7.3) |a| - |e| = (a^2 - e^2)/(|a| + |e|) (so a^2 - e^2 -> 0 with |a| + |e| -> oo gives |a| - |e| -> 0)."""
    ap, ep = sp.symbols("a_ e_", positive=True)
    return zero((ap - ep) - (ap**2 - ep**2) / (ap + ep))


def c33_gamma_min():
    """(7.4) (1 - 2q0/S) + (1 - 2q1/S) = 4(B + C)/S; the two vanish together iff B = C = 0 and A = E."""
    Ssq = A + B + C + E
    r0, r1 = 1 - 2 * (A - C) / Ssq, 1 - 2 * (E - B) / Ssq
    ok1 = sp.simplify(r0 + r1 - 4 * (B + C) / Ssq) == 0
    ok2 = zero(sp.simplify(r0.subs({B: 0, C: 0, E: A}))) and zero(sp.simplify(r1.subs({B: 0, C: 0, E: A})))
    ok3 = sp.simplify(r0.subs({B: 0, C: 0}) - (E - A) / (A + E)) == 0
    return ok1 and ok2 and ok3


def c34_geometric_margin():
    """(7.5) distance from (1, +-1) to the line through 0 with direction (cos p, sin p) is sqrt2 |sin(p -+ pi/4)|; at p = 0 both are 1."""
    p = sp.symbols("p", real=True)
    d = sp.Matrix([sp.cos(p), sp.sin(p)])
    dist_sq = lambda pt: sp.simplify(sp.Matrix(pt).dot(sp.Matrix(pt)) - (sp.Matrix(pt).dot(d)) ** 2)  # noqa: E731
    ok1 = sp.simplify(dist_sq((1, 1)) - 2 * sp.sin(p - sp.pi / 4) ** 2) == 0
    ok2 = sp.simplify(dist_sq((1, -1)) - 2 * sp.sin(p + sp.pi / 4) ** 2) == 0
    ok3 = dist_sq((1, 1)).subs(p, 0) == 1 and dist_sq((1, -1)).subs(p, 0) == 1
    # min(sin^2(p - pi/4), sin^2(p + pi/4)) <= 1/2 for all p: their sum is 1
    ok4 = sp.simplify(sp.sin(p - sp.pi / 4) ** 2 + sp.sin(p + sp.pi / 4) ** 2 - 1) == 0
    return ok1 and ok2 and ok3 and ok4


def c37_norm_derivative():
    """(R.3) d||theta||^2/dt = 2 (s0 q0 + s1 q1) along the flow (negative while misclassified points dominate)."""
    return zero(ddt(S / 2) - 2 * (S0 * Q0 + S1 * Q1))


def c38_explicit_gap_bound():
    """(6.6) A = L + alpha, E = L + beta (alpha, beta >= 0): (k^2+m^2)/L^2 - (1 - gamma_bar) has a
    numerator and denominator that are polynomials with non-negative coefficients, hence is >= 0."""
    L, al, be, K, M = sp.symbols("L alpha beta K M", nonnegative=True)
    Ap, Ep = L + al, L + be
    d = (K + M) / L**2 - 2 * (K / Ap + M / Ep) / (Ap + Ep + K / Ap + M / Ep)
    num, den = sp.fraction(sp.together(d))
    pn = sp.Poly(sp.expand(num), L, al, be, K, M)
    pd = sp.Poly(sp.expand(den), L, al, be, K, M)
    return all(co >= 0 for co in pn.coeffs()) and all(co >= 0 for co in pd.coeffs()) and not pd.is_zero


def c39_time_bound_1e6():
    """(6.6) log(L/A0)/4 + (Ei(L) - Ei(A0))/4 < 10^6 for L = log 10^6, A0 = 1/400 (30-digit evaluation)."""
    Lv = sp.log(10**6)
    A0 = sp.Rational(1, 400)
    val = sp.log(Lv / A0) / 4 + (sp.Ei(Lv) - sp.Ei(A0)) / 4
    return bool(sp.N(val, 30) < 2 * 10**4)


def c40_cauchy_schwarz():
    """(6.6) (a^2 + b^2)(c^2 + e^2) - (ac)^2 - (be)^2 = (ae)^2 + (bc)^2 >= 0 and a^2 + b^2 = 2||u||^2."""
    return (zero((a**2 + b**2) * (c**2 + e**2) - (a * c) ** 2 - (b * e) ** 2 - (a * e) ** 2 - (b * c) ** 2)
            and zero((a**2 + b**2).subs(RED) - 2 * (u1**2 + u2**2))
            and zero((c**2 + e**2).subs(RED) - 2 * (v1**2 + v2**2)))


def c35_gd_invariants():
    """(R.2) one gradient-descent step multiplies a c by 1 - 4 lr^2 s0^2 and b e by 1 - 4 lr^2 s1^2."""
    lr = sp.symbols("eta", positive=True)
    return (zero(a * (1 + 2 * lr * s0) * c * (1 - 2 * lr * s0) - a * c * (1 - 4 * lr**2 * s0**2))
            and zero(b * (1 - 2 * lr * s1) * e * (1 + 2 * lr * s1) - b * e * (1 - 4 * lr**2 * s1**2)))


def c36_degenerate_gamma():
    """(R.1) a = 0: gamma_bar = (E - B - C)/(B + C + E) -> 1 as B, C -> 0 with E > 0; a = e = 0: gamma_bar = -1."""
    g = Nnum / S
    eps = sp.symbols("epsilon", positive=True)
    ok1 = sp.limit(g.subs({a: 0, b: eps, c: eps}), eps, 0) == 1
    ok2 = sp.simplify(g.subs({a: 0, e: 0}) + 1) == 0
    return ok1 and ok2


CHECKS: list[tuple[str, Callable[[], bool]]] = [
    ("C1 projections u.x, v.x in reduced coordinates (1.1)", c1_projections),
    ("C2 margins q0 = a^2-c^2, q1 = e^2-b^2 (1.2)", c2_margins),
    ("C3 ||theta||^2 = (a^2+b^2+c^2+e^2)/2 (1.3)", c3_norm),
    ("C4 loss = (softplus(-q0)+softplus(-q1))/2 (1.4)", c4_loss),
    ("C5 gamma_bar formula (1.5)", c5_gamma_bar),
    ("C6 1 -+ gamma_bar = 2(b^2+c^2)/S, 2(a^2+e^2)/S (1.6)", c6_gap),
    ("C7 closed-form gradient of the loss (2.1)", c7_gradient),
    ("C8 reduced ODE from the chain rule (2.2)", c8_reduced_ode),
    ("C9 a(t) = a(0) exp(2 int s0) (2.4)", c9_sign_preservation),
    ("C10 d(ac)/dt = 0 (3.1)", c10_invariant_ac),
    ("C11 d(be)/dt = 0 (3.1)", c11_invariant_be),
    ("C12 ODE of the squares (4.1)", c12_squares),
    ("C13 quotient-rule numerator of gamma_bar' (4.2)", c13_gamma_quotient),
    ("C14 sign pieces 4AC, 4BE, 2(AB+CE) (4.3)", c14_sign_pieces),
    ("C15 d gamma_bar/dt closed form (4.4)", c15_gamma_derivative),
    ("C16 Euler identity <grad q_n, theta> = 2 q_n (4.5)", c16_euler),
    ("C17 Lemma 2 velocity equals (4.4) (4.5)", c17_lemma2),
    ("C18 equality case of (4.4) (4.6)", c18_equality_case),
    ("C19 q0' = 4 s0 (A+C), q1' = 4 s1 (B+E) (5.1)", c19_margin_growth),
    ("C20 scalar ODE for A = a^2 and 1/F (5.2)", c20_scalar_reduction),
    ("C21 scalar ODE for E = e^2 (5.3)", c21_partner_scalar),
    ("C22 integration by parts for int e^x/x (6.1)", c22_integration_by_parts),
    ("C23 remainder bound of the integration by parts (6.1)", c23_remainder_bound),
    ("C24 Ei(A) = (e^A/A)(1 + 1/A + o(1/A)) (6.1)", c24_ei_asymptotics),
    ("C25 inversion log t = A - log A - log 4 + log(1+d) (6.2)", c25_log_inversion),
    ("C26 1 - gamma_bar in terms of A, E, k, m (6.4)", c26_gap_in_invariants),
    ("C27 limit of log^2 t (1 - gamma_bar) (6.4)", c27_gap_limit),
    ("C28 ||theta||^2 asymptotics (6.3)", c28_norm_asymptotics),
    ("C29 loss asymptotics (6.5)", c29_loss_asymptotics),
    ("C30 decision quadratic form, 2 beta/||theta||^2 = gamma_bar (7.1)", c30_quadratic_form),
    ("C31 boundary lines and their normals (7.2)", c31_boundary_normals),
    ("C32 |a| - |e| = (a^2 - e^2)/(|a| + |e|) (7.3)", c32_abs_difference),
    ("C33 gamma_min <= gamma_bar <= 1 and its maximisers (7.4)", c33_gamma_min),
    ("C34 the axes are the geometric max-margin boundary (7.5)", c34_geometric_margin),
    ("C35 gradient descent shrinks the invariants (R.2)", c35_gd_invariants),
    ("C36 gamma_bar when a(0) = 0 or a(0) = e(0) = 0 (R.1)", c36_degenerate_gamma),
    ("C37 d||theta||^2/dt = 2(s0 q0 + s1 q1) (R.3)", c37_norm_derivative),
    ("C38 explicit bound 1 - gamma_bar <= (k^2+m^2)/L^2 if A, E >= L (6.6)", c38_explicit_gap_bound),
    ("C39 T(log 1e6) < 2e4 when a(0)^2 >= 1/400 (6.6)", c39_time_bound_1e6),
    ("C40 k^2 + m^2 <= 4 ||u(0)||^2 ||v(0)||^2 (6.6)", c40_cauchy_schwarz),
]


def run_checks() -> list[tuple[str, bool]]:
    """Run every check; returns ``[(name, passed)]`` (an exception counts as a failure)."""
    return _run_checks(CHECKS)


def main() -> int:
    return _checks_main(CHECKS)


if __name__ == "__main__":
    sys.exit(main())
