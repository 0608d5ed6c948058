"""margin_theory.maxmargin: the max-margin optima (KKT, closed forms, infeasibility, limits),
the comparison with a model, full-batch GD, the monitor hooks and the experiment."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from margin_theory import maxmargin as mm
from margin_theory.models import build_model

XOR_X = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
XOR_Y = np.array([0, 0, 1, 1])
TOL = 1e-5          # solver tolerance (Clarabel's defaults are ~1e-8 on these sizes)


def features(X, head):
    """phi(x): x (linear) or the flattened outer product x x^T (matrix heads), written here."""
    return X if head == "linear" else np.stack([np.outer(x, x).ravel() for x in X])


def margins_of(W, X, y, head):
    """(N, C) of f_{y_n}(x_n) - f_j(x_n) by a plain loop (independent of the module)."""
    N, C = len(y), W.shape[0]
    out = np.full((N, C), np.inf)
    for n in range(N):
        f = [W[i] @ X[n] if head == "linear" else X[n] @ W[i] @ X[n] for i in range(C)]
        for j in range(C):
            if j != y[n]:
                out[n, j] = f[y[n]] - f[j]
    return out


def separable_problem(seed, head, N=12, d=3, C=3):
    """Random data labelled by a random model of ``head`` (so separable by it), margins >= 0.05."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(C, d)) if head == "linear" else None
    if head == "quadratic":
        W = rng.normal(size=(C, d, d)); W = W + W.transpose(0, 2, 1)
    if head == "lowrank":
        A = rng.normal(size=(C, 2, d)); W = np.einsum("crd,cre->cde", A, A)
    X, y = [], []
    while len(y) < N:
        x = rng.normal(size=d)
        f = W @ x if head == "linear" else np.einsum("a,iab,b->i", x, W, x)
        top = np.sort(f)[::-1]
        if top[0] - top[1] > 0.05 * np.abs(f).max():
            X.append(x); y.append(int(np.argmax(f)))
    y = np.array(y)
    return np.array(X), y, C


# ---------------------------------------------------------------------------
# Closed forms (XOR; proofs/maxmargin.md section 4)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["primal", "dual"])
def test_xor_quadratic_closed_form(form):
    r = mm.solve_quadratic_svm(XOR_X, XOR_Y, form=form)
    assert r.separable and r.problem == form
    assert r.gamma_star == pytest.approx(2.0, rel=1e-6)
    W0 = np.array([[0.0, 0.25], [0.25, 0.0]])
    np.testing.assert_allclose(r.W[0], W0, atol=1e-6)
    np.testing.assert_allclose(r.W[1], -W0, atol=1e-6)
    assert sorted(r.support.tolist()) == [0, 1, 2, 3]


def test_xor_lowrank_closed_form():
    r = mm.solve_lowrank_sdp(XOR_X, XOR_Y)
    assert r.separable and r.gamma_star == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(r.W[0], np.ones((2, 2)) / 4, atol=1e-6)
    np.testing.assert_allclose(r.W[1], np.array([[1, -1], [-1, 1]]) / 4, atol=1e-6)
    assert r.ranks == [1, 1]


def test_xor_linear_is_infeasible_cleanly():
    r = mm.solve_linear_svm(XOR_X, XOR_Y)
    assert r.separable is False and r.gamma_star is None and r.W is None
    assert r.status in ("infeasible", "infeasible_inaccurate")
    assert "not separable" in r.message


@pytest.mark.parametrize("head", ["linear", "quadratic", "lowrank"])
def test_contradictory_labels_are_not_separable(head):
    X = np.array([[1.0, 0.5], [1.0, 0.5], [0.0, 1.0]])
    r = mm.solve_max_margin(X, np.array([0, 1, 1]), head)
    assert r.separable is False and r.gamma_star is None


def test_lowrank_infeasible_where_quadratic_is_not():
    """x and -x with different labels: no even model (quadratic, lowrank: f(-x) = f(x)) separates
    them, a linear one does."""
    X = np.array([[1.0, 2.0], [-1.0, -2.0]])
    for head in ("quadratic", "lowrank"):
        assert mm.solve_max_margin(X, np.array([0, 1]), head).separable is False
    assert mm.solve_max_margin(X, np.array([0, 1]), "linear").separable is True


# ---------------------------------------------------------------------------
# KKT conditions at the solver's optimum
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("head,form", [("linear", "auto"), ("quadratic", "primal"), ("quadratic", "dual")])
@pytest.mark.parametrize("seed", [0, 1])
def test_svm_kkt(head, form, seed):
    X, y, C = separable_problem(seed, head)
    kw = {"form": form} if head == "quadratic" else {}
    r = mm.solve_max_margin(X, y, head, C, **kw)
    assert r.separable
    M = margins_of(r.W, X, y, head)
    mask = np.isfinite(M)
    a = r.duals
    assert (M[mask] >= 1 - TOL).all()                                   # primal feasibility
    assert (a >= 0).all() and (a[~mask] == 0).all()                      # dual feasibility
    assert np.max(np.abs(a[mask] * (M[mask] - 1))) < TOL * max(1, a.max())  # complementary slackness
    sv = a > 1e-4 * a.max()
    assert sv.any() and np.allclose(M[sv], 1, atol=1e-4)                # support vectors sit at 1
    assert abs(r.q.min() - 1) < 1e-4
    # stationarity: W_i = sum_n c_ni phi_n, c_ni = [i = y_n] sum_j a_nj - a_ni
    Phi = features(X, head)
    c = -a.copy()
    c[np.arange(len(y)), y] += a.sum(1)
    W = (c.T @ Phi).reshape(r.W.shape)
    np.testing.assert_allclose(W, r.W, atol=1e-4 * np.abs(r.W).max())
    assert a.sum() == pytest.approx(r.objective, rel=1e-4)              # strong duality
    assert r.gamma_star == pytest.approx(1 / np.linalg.norm(r.W), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_sdp_kkt(seed):
    X, y, C = separable_problem(seed, "lowrank", N=10, d=3)
    r = mm.solve_lowrank_sdp(X, y, C, solvers=("CLARABEL",))
    assert r.separable
    M = margins_of(r.W, X, y, "lowrank")
    mask = np.isfinite(M)
    lam = r.duals
    assert (M[mask] >= 1 - TOL).all()
    for Wi in r.W:
        assert np.linalg.eigvalsh(Wi).min() > -TOL                      # W_i PSD
    assert np.max(np.abs(lam[mask] * (M[mask] - 1))) < TOL * max(1, lam.max())
    # stationarity: Z_i = I - sum_n c_ni x_n x_n^T (on the data's span = R^3 here) is PSD, Z_i W_i = 0
    c = -lam.copy()
    c[np.arange(len(y)), y] += lam.sum(1)
    for i in range(C):
        Z = np.eye(X.shape[1]) - sum(c[n, i] * np.outer(X[n], X[n]) for n in range(len(y)))
        np.testing.assert_allclose(Z, r.psd_duals[i], atol=1e-4)
        assert np.linalg.eigvalsh(Z).min() > -1e-5
        assert abs(np.trace(Z @ r.W[i])) < 1e-5
    assert lam.sum() == pytest.approx(sum(np.trace(Wi) for Wi in r.W), rel=1e-5)
    assert r.gamma_star == pytest.approx(1 / sum(np.trace(Wi) for Wi in r.W), rel=1e-6)


def test_quadratic_primal_equals_dual():
    X, y, C = separable_problem(3, "quadratic", N=15)
    p, d = (mm.solve_quadratic_svm(X, y, C, form=f) for f in ("primal", "dual"))
    assert p.gamma_star == pytest.approx(d.gamma_star, rel=1e-5)
    np.testing.assert_allclose(p.W, d.W, atol=1e-4)


def test_span_reduction_when_d_exceeds_n():
    """d > N: the solver works on the k = rank X dimensional span and maps back to R^d."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 10))
    y = np.array([0, 1, 2, 0, 1, 2])
    r = mm.solve_quadratic_svm(X, y, form="primal")
    assert r.k == 6 and r.W.shape == (3, 10, 10)
    M = margins_of(r.W, X, y, "quadratic")
    assert np.min(M[np.isfinite(M)]) == pytest.approx(1, abs=1e-5)


# ---------------------------------------------------------------------------
# Nothing beats gamma_star (hypothesis)
# ---------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), head=st.sampled_from(["linear", "quadratic", "lowrank"]))
def test_no_random_direction_or_gd_beats_gamma_star(seed, head):
    X, y, C = separable_problem(seed, head, N=10, d=3)
    r = mm.solve_max_margin(X, y, head, C)
    assert r.separable
    rng = np.random.default_rng(seed + 1)
    for _ in range(200):
        if head == "linear":
            W = rng.normal(size=(C, 3))
        elif head == "quadratic":
            W = rng.normal(size=(C, 3, 3)); W = W + W.transpose(0, 2, 1)
        else:
            A = rng.normal(size=(C, rng.integers(1, 4), 3)); W = np.einsum("crd,cre->cde", A, A)
        assert mm.gamma_min_of(W, X, y, head) <= r.gamma_star * (1 + 1e-6)
    name, rank = ("lowrank", 3) if head == "lowrank" else (head, 1)
    torch.manual_seed(seed)
    model = build_model(name, (3,), C, rank=rank)
    gd = mm.gradient_descent(model, X, y, lr=0.5, steps=300, optimum=r, record=[0, 100, 300])
    for row in gd.history:
        assert row["gamma_min"] <= r.gamma_star * (1 + 1e-6)
        assert row["ratio"] <= 1 + 1e-6


# ---------------------------------------------------------------------------
# The toolkit's normalisation: a model set to the optimum has ratio 1, cosine 1
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["linear", "quadratic", "lowrank"])
def test_model_at_the_optimum_has_ratio_one(head):
    X, y, C = separable_problem(5, head, N=10, d=3)
    r = mm.solve_max_margin(X, y, head, C)
    model = build_model(head, (3,), C, rank=3).double()
    with torch.no_grad():
        if head == "lowrank":     # A_i = sqrt(Lambda) Q^T from W_i = Q Lambda Q^T
            ev, Q = np.linalg.eigh(r.W)
            A = np.sqrt(np.clip(ev, 0, None))[:, :, None] * Q.transpose(0, 2, 1)
            model.head.weight.copy_(torch.as_tensor(A) * 3.0)          # any scale: gamma is invariant
        else:
            model.head.weight.copy_(torch.as_tensor(r.W) * 7.0)
    c = mm.compare_with_optimum(model, X, y, r)
    assert c["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert c["cosine"] == pytest.approx(1.0, abs=1e-9)
    # the toolkit's gamma_min of the model, computed independently of the module
    from margin_theory.margins import compute_margins
    g = compute_margins(model, torch.as_tensor(X), torch.as_tensor(y)).gamma_min
    assert g == pytest.approx(r.gamma_star, rel=1e-6)


def test_compare_refuses_wrong_head():
    r = mm.solve_quadratic_svm(XOR_X, XOR_Y)
    with pytest.raises(mm.ConfigError, match="lowrank head"):
        mm.compare_with_optimum(build_model("lowrank", (2,), 2), XOR_X, XOR_Y, r)
    with pytest.raises(mm.ConfigError, match="trainable features"):
        mm.head_of(build_model("conv-linear", (1, 4, 4), 2))
    assert mm.head_of(build_model("quadratic", (2,), 2)) == "quadratic"
    with pytest.raises(mm.ConfigError, match="linear term"):   # x^T W x + w.x is another problem
        mm.head_of(build_model("quadratic", (2,), 2, linear_term=True))


# ---------------------------------------------------------------------------
# Gradient descent: closed-form gradient equals autograd
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,rank", [("linear", 1), ("quadratic", 1), ("lowrank", 2)])
def test_closed_form_gradient_matches_autograd(name, rank):
    X, y, C = separable_problem(7, "linear", N=9, d=4)
    torch.manual_seed(0)
    model = build_model(name, (4,), C, rank=rank).double()
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    loss = torch.nn.functional.cross_entropy(model(Xt), yt)
    (g,) = torch.autograd.grad(loss, [model.head.weight])
    if name == "quadratic":
        g = 0.5 * (g + g.transpose(1, 2))        # V's gradient: only its symmetric part moves f
    l2, g2 = mm.head_logits_and_grad(mm.head_of(model), model.head.weight.detach().numpy(), X, y)
    assert l2 == pytest.approx(float(loss.detach()), rel=1e-12)
    np.testing.assert_allclose(g2, g.numpy(), atol=1e-12)


def test_gd_on_xor_approaches_closed_form():
    r = mm.solve_lowrank_sdp(XOR_X, XOR_Y)
    torch.manual_seed(1)
    gd = mm.gradient_descent(build_model("lowrank", (2,), 2, rank=1), XOR_X, XOR_Y, lr=0.1, steps=2000,
                             optimum=r)
    first, last = gd.history[1], gd.history[-1]
    assert last["ratio"] > 0.9 and last["cosine"] > 0.99
    assert 1 - last["ratio"] < 1 - first["ratio"]


# ---------------------------------------------------------------------------
# Size limits and bad input
# ---------------------------------------------------------------------------
def test_size_limits_are_refused_with_the_limit_named():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 70))
    with pytest.raises(mm.ProblemTooLargeError, match=r"sdp_block = 64"):
        mm.solve_lowrank_sdp(X, np.arange(80) % 2)
    with pytest.raises(mm.ProblemTooLargeError, match=r"constraints = 5,000"):
        mm.solve_linear_svm(rng.normal(size=(5001, 2)), np.arange(5001) % 2)
    with pytest.raises(mm.ProblemTooLargeError, match=r"quadratic_variables"):
        mm.solve_quadratic_svm(rng.normal(size=(2001, 80)), np.arange(2001) % 2)     # N > 2,000: primal
    with pytest.raises(mm.ProblemTooLargeError, match=r"quadratic_dual_points = 2,000"):
        mm.solve_quadratic_svm(rng.normal(size=(2001, 3)), np.arange(2001) % 2, form="dual")
    assert issubclass(mm.ProblemTooLargeError, mm.ConfigError)


def test_bad_input():
    with pytest.raises(mm.ConfigError, match="labels"):
        mm.solve_linear_svm(XOR_X, np.array([0, 0, 1, 5]), 2)
    with pytest.raises(mm.ConfigError, match="NaN"):
        mm.solve_linear_svm(np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(mm.ConfigError, match="unknown head"):
        mm.solve_max_margin(XOR_X, XOR_Y, "relu2")


def _cli(*args):
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "margin_theory.maxmargin", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_json_and_errors(capsys):
    p = _cli("--dataset", "xor", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["results"]["linear"]["separable"] is False
    assert doc["results"]["quadratic"]["gamma_star"] == pytest.approx(2.0, rel=1e-6)
    assert mm.main(["--dataset", "xor"]) == 0
    out = capsys.readouterr().out
    assert "NOT separable" in out and "gamma_star = 2" in out
    for argv, what in ((["--dataset", "nope"], "nope"), (["--dataset", "digits", "--head", "lowrank"], "constraints"),
                       (["--dataset", "xor", "--out", "x.png"], "--out applies to --run"), ([], "--dataset")):
        assert mm.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and err.startswith(mm.PROG)
    out = mm.main(["--dataset", "digits"])     # several heads: the too-large ones are reported as skipped
    assert out == 0 and "skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Hooks: trainer monitors and check
# ---------------------------------------------------------------------------
def test_trainer_monitor_and_check_report_the_gap(tmp_path, one_thread, capsys):
    from margin_theory.check import check_checkpoints, format_report
    from margin_theory.train import TrainConfig, train

    out = tmp_path / "run"
    res = train(TrainConfig(dataset="xor", model="quadratic", epochs=4, lr=0.5, batch_size=4, monitor_every=2,
                            out=str(out), quiet=True), log=None)
    rows = [h for h in res.history if "maxmargin" in h]
    assert [h["epoch"] for h in rows] == [0, 2, 4]
    for h in rows:
        g = h["maxmargin"]
        assert g["available"] and g["gamma_star"] == pytest.approx(2.0, rel=1e-5)
        assert g["data"] == "all 4 training points" and g["ratio"] <= 1 + 1e-9
    assert rows[-1]["maxmargin"]["cosine"] > rows[0]["maxmargin"]["cosine"]
    rep = check_checkpoints([out])
    c = rep.checkpoints[-1]["maxmargin"]
    assert c["ratio"] == pytest.approx(rows[-1]["maxmargin"]["ratio"], rel=1e-6)
    assert "max-margin gap (quadratic head" in format_report(rep)
    # the figure of a run's monitors: gamma_min/gamma* and cosine against steps (batch 4 = 1 step/epoch)
    png = tmp_path / "gap.png"
    assert mm.main(["--run", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    rows, data = mm.run_gap_rows(out)
    assert [r["step"] for r in rows] == [0, 2, 4] and data == "all 4 training points"
    assert mm.main(["--run", str(tmp_path / "nope")]) == 2
    # flags that do not apply to --run, and an --out that cannot be a figure: one-line errors, nothing written
    assert mm.main(["--run", str(out), "--head", "quadratic", "--n-train", "5"]) == 2
    assert "--head, --n-train apply to --dataset only" in capsys.readouterr().err
    assert mm.main(["--run", str(out), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_monitor_notes_when_unavailable():
    X = torch.as_tensor(XOR_X, dtype=torch.float32)
    y = torch.as_tensor(XOR_Y)
    g = mm.GapMonitor(build_model("linear", (2,), 2), X, y)
    rep = g.report(build_model("linear", (2,), 2))
    assert rep["available"] is False and "not separable" in rep["note"]
    g = mm.GapMonitor(build_model("relu2", (2,), 2, hidden=4), X, y)
    assert "trainable features" in g.report(None)["note"]


def test_monitor_solves_on_the_heads_inputs_under_affine():
    """--affine (x -> [x, 1]): the optimum is the one on [x, 1] (solved here directly), and no later
    state can exceed it; a state that no longer fits the optimum gives a note, never an exception."""
    X = torch.as_tensor(XOR_X, dtype=torch.float32)
    y = torch.as_tensor(XOR_Y)
    for head in ("linear", "quadratic", "lowrank"):
        model = build_model(head, (2,), 2, affine=True)
        g = mm.GapMonitor(model, X, y)
        want = mm.solve_max_margin(np.c_[XOR_X, np.ones(len(XOR_X))], XOR_Y, head, 2)
        rep = g.report(model)
        assert rep["available"] is want.separable
        if want.separable:
            assert rep["gamma_star"] == pytest.approx(want.gamma_star, rel=1e-6) and rep["ratio"] <= 1 + 1e-6
    g = mm.GapMonitor(build_model("quadratic", (2,), 2, affine=True), X, y)
    rep = g.report(build_model("quadratic", (2,), 2))          # 2x2 matrices against a 3x3 optimum
    assert rep["available"] is False and "do not match" in rep["note"]


# ---------------------------------------------------------------------------
# The experiment (tiny scale)
# ---------------------------------------------------------------------------
def test_experiment_tiny(tmp_path):
    from margin_theory.experiment import run_experiment

    res = run_experiment("maxmargin", "tiny", out=tmp_path, quiet=True)
    an = res["analysis"]["maxmargin"]
    xor = next(c for c in an["cases"] if c["name"] == "xor")
    assert xor["optima"]["linear"]["separable"] is False
    assert xor["optima"]["quadratic"]["gamma_star"] == pytest.approx(1.0, rel=1e-5)   # inputs scaled by 1/sqrt 2
    assert xor["optima"]["lowrank"]["gamma_star"] == pytest.approx(0.5, rel=1e-5)
    runs = {r["label"]: r for r in xor["runs"]}
    assert set(runs) == {"linear", "quadratic", "lowrank-1", "lowrank-d"}
    assert runs["linear"]["verdict"] == "not separable"
    assert runs["lowrank-1"]["final"]["ratio"] > runs["lowrank-1"]["at_sqrt_T"]["ratio"]
    md = (tmp_path / "results.md").read_text()
    assert "Max-margin limit of gradient descent" in md and "| lowrank-1 |" in md
    assert (tmp_path / "maxmargin_gap.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["analysis"]["maxmargin"]["cases"]


def test_experiment_case_with_zero_steps_is_refused(tmp_path):
    with pytest.raises(mm.ConfigError, match="steps must be >= 1"):
        mm.run_experiment_cases({"steps": 0, "cases": [{"name": "xor", "data": "xor"}]}, "tiny", out=tmp_path)


def test_monitor_subset_is_inside_the_theorem2_subset():
    from margin_theory.assumptions import select_subset

    X, y, C = separable_problem(11, "linear", N=60, d=3)
    g = mm.GapMonitor(build_model("linear", (3,), C), torch.as_tensor(X), torch.as_tensor(y), subset=20, seed=4)
    assert g.data == "a seeded subset of 20 of 60 training points (seed 4)"
    assert set(g.idx.tolist()) <= set(select_subset(60, 40, 4).tolist())
    rep = g.report(build_model("linear", (3,), C))
    assert rep["available"] and rep["n"] == 20 and rep["ratio"] <= 1 + 1e-9
    # the optimum on a subset has fewer constraints: its gamma* bounds the full set's from above
    full = mm.solve_linear_svm(X, y, C)
    assert g.result.gamma_star >= full.gamma_star * (1 - 1e-6)


def test_monitor_solves_on_at_most_monitor_max_points():
    """The trainer and check pass their --monitor-subset; the monitor itself caps it (one place)."""
    X, y, C = separable_problem(12, "linear", N=mm.MONITOR_MAX_POINTS + 40, d=3)
    model = build_model("linear", (3,), C)
    for subset, n in ((10**6, mm.MONITOR_MAX_POINTS), (30, 30)):
        g = mm.GapMonitor(model, torch.as_tensor(X), torch.as_tensor(y), subset=subset, seed=1)
        assert g.n == n == len(g.idx) == len(set(g.idx.tolist()))
    assert mm.GapMonitor(model, torch.as_tensor(X), torch.as_tensor(y)).n == mm.MONITOR_MAX_POINTS
