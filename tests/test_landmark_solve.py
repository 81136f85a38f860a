"""The landmark stage's Levenberg-Marquardt solver and the detector-bias calibration (issue 9)."""

import numpy as np
import pytest
import torch

from core.fit import FitConfig, PhotoFitter
from core.fit.gauss_newton import levenberg_marquardt
from core.fit.landmark_solve import (LandmarkProblem, _residuals_and_jacobian, landmark_bases, objective_and_gradient,
                                    solve_landmarks)
from core.models import load_model
from core.models.detector_bias import _rotation, calibrate, head_angles
from core.models.morphable import axis_angle_to_matrix


def _problem(model, seed=0):
    """A synthetic landmark problem with a known answer: a random person, projected exactly."""
    rng = np.random.default_rng(seed)
    lm = model.layer("cpu").landmark_layer()
    T, B = landmark_bases(lm)
    K = B.shape[2]
    c_true = torch.as_tensor(rng.normal(0, 0.5, K), dtype=torch.float32)
    if model.expr_range is not None:
        c_true[model.n_shape:] = torch.as_tensor(rng.uniform(0, 0.3, model.n_expr), dtype=torch.float32)
    R = torch.as_tensor(_rotation(np.radians(20), np.radians(-5), 0.0), dtype=torch.float32)
    t = torch.tensor([0.0, 0.0, 0.6]) - R @ T.mean(0)
    f = 1000.0
    X = (T + B @ c_true) @ R.T + t
    px = torch.stack([f * X[:, 0] / X[:, 2] + 320, f * X[:, 1] / X[:, 2] + 320], 1)
    target = torch.cat([px, torch.zeros(len(px), 1)], 1)
    pb = LandmarkProblem(T=T, B=B, n_shape=model.n_shape, target=target, sqrt_w=torch.ones(len(T)), scale=1 / 3.0,
                         sqrt_depth=0.0, prior=torch.full((K,), 1e-4), focal_prior=1e-4,
                         expr_range=model.expr_range, bound=100.0, cx=320.0, cy=320.0)
    return pb, R, t, f, c_true


@pytest.mark.parametrize("name", ["builtin", "ict"])
def test_analytic_jacobian_matches_autodiff(name):
    model = load_model(name)
    pb, R, t, f, _ = _problem(model)
    pb.sqrt_depth = 0.3                                              # every residual kind takes part
    c = torch.full((pb.B.shape[2],), 0.1, dtype=torch.float64)
    pb64 = LandmarkProblem(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in pb.__dict__.items()})
    R64, t64 = R.double(), t.double()
    log_f = torch.tensor(0.05, dtype=torch.float64)
    _, J = _residuals_and_jacobian(pb64, R64, t64, log_f, f, c, 0.6)

    def r_of(theta):       # the same parameterisation: rotation as a left perturbation exp(w) R
        Rw = axis_angle_to_matrix(theta[:3][None])[0] @ R64
        return _residuals_and_jacobian(pb64, Rw, t64 + 0.6 * theta[3:6], log_f + theta[6], f, c + theta[7:], 0.6,
                                       want_jacobian=False)[0]

    J_auto = torch.func.jacfwd(r_of)(torch.zeros(7 + len(c), dtype=torch.float64))
    assert torch.allclose(J, J_auto, atol=1e-6 * float(J_auto.abs().max())), float((J - J_auto).abs().max())


@pytest.mark.parametrize("name", ["builtin", "ict"])
def test_lbfgs_gradient_matches_autodiff(name):
    """The L-BFGS path's hand-written gradient (objective_and_gradient) is autograd's, for every parameter:
    the accumulated axis-angle away from zero, the translation step, log focal, coefficients, and
    blendshape weights outside their range."""
    model = load_model(name)
    pb, R, t, f, _ = _problem(model)
    pb.sqrt_depth = 0.3
    pb64 = LandmarkProblem(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in pb.__dict__.items()})
    if pb.expr_range is not None:
        pb64.expr_range = tuple(torch.as_tensor(x).double() for x in pb.expr_range)
    K = pb.B.shape[2]
    c = torch.full((K,), 0.1, dtype=torch.float64)
    c[-3:] = torch.tensor([-0.2, 1.3, 0.5], dtype=torch.float64)       # two outside a blendshape range
    args = [torch.tensor([0.2, -0.3, 0.1], dtype=torch.float64), torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64),
            torch.tensor(0.05, dtype=torch.float64), c]
    R0, t0 = R.double(), t.double()
    leaves = [a.clone().requires_grad_(True) for a in args]
    Rw = axis_angle_to_matrix(leaves[0][None])[0] @ R0
    r, _ = _residuals_and_jacobian(pb64, Rw, t0 + 0.6 * leaves[1], leaves[2], f, leaves[3], 0.6, want_jacobian=False)
    loss = 0.5 * (r @ r)
    loss.backward()
    got = objective_and_gradient(pb64, R0, t0, 0.6, f, *args)
    assert float(got[0]) == pytest.approx(float(loss.detach()), rel=1e-12)
    for g, leaf in zip(got[1:], leaves):
        assert torch.allclose(g, leaf.grad, rtol=1e-9, atol=1e-9 * float(leaf.grad.abs().max())), (g, leaf.grad)


def test_solver_recovers_a_known_person_from_exact_landmarks():
    model = load_model("builtin")
    pb, R, t, f, c_true = _problem(model, seed=1)
    out = solve_landmarks(pb, torch.as_tensor(_rotation(np.radians(10), 0, 0), dtype=torch.float32),
                          t + torch.tensor([0.01, -0.01, 0.05]), f * 1.2, 0.6, torch.zeros_like(c_true),
                          rigid_iters=10, iters=40)
    X = (pb.T + pb.B @ out["c"]) @ out["R"].T + out["t"]
    f_fit = f * 1.2 * float(torch.exp(out["log_f"]))
    px = torch.stack([f_fit * X[:, 0] / X[:, 2] + 320, f_fit * X[:, 1] / X[:, 2] + 320], 1)
    assert float((px - pb.target[:, :2]).norm(dim=1).mean()) < 0.05          # pixels
    assert torch.allclose(out["R"], R, atol=2e-3)


def test_lm_reaches_a_lower_landmark_error_than_lbfgs():
    """Same objective, same photo: Levenberg-Marquardt converges; L-BFGS stops short (which is why
    it is still the default: the early stop regularises - see the README's likeness figures). Speed is
    measured in benchmarks, not here."""
    import skimage.data

    from core.detect import detect_landmarks
    img = skimage.data.astronaut()
    det = detect_landmarks(img)
    model = load_model("ict")
    errs = {}
    for solver in ("lbfgs", "lm"):
        fitter = PhotoFitter(model.layer("cpu"), FitConfig(photo_steps=0, landmark_solver=solver))
        fit = fitter.fit(img, det)
        errs[solver] = fit.landmark_error_px
        assert fit.params["expr"].min() > -0.02 and fit.params["expr"].max() < 1.02
    assert errs["lm"] < errs["lbfgs"]


def test_generic_lm_on_a_nonlinear_least_squares():
    x = torch.linspace(0, 1, 30, dtype=torch.float64)
    y = 2.0 * torch.exp(-1.5 * x) + 0.3
    theta, cost, _ = levenberg_marquardt(lambda p: p[0] * torch.exp(-p[1] * x) + p[2] - y,
                                         torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), iters=50)
    assert cost < 1e-12 and torch.allclose(theta, torch.tensor([2.0, 1.5, 0.3], dtype=torch.float64), atol=1e-5)


def test_head_angles_convention():
    yaw, pitch = head_angles(_rotation(np.radians(30), 0.0, 0.0))         # a turn alone is pure yaw
    assert np.degrees(yaw) == pytest.approx(30, abs=1e-6) and pitch == pytest.approx(0, abs=1e-9)
    yaw, pitch = head_angles(_rotation(0.0, np.radians(10), 0.0))         # a nod alone is pure pitch
    assert yaw == pytest.approx(0, abs=1e-9) and np.degrees(pitch) == pytest.approx(10, abs=1e-6)
    assert head_angles(_rotation(0.0, 0.0, 0.0)) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_calibration_explains_part_of_the_detector_offset():
    """On its own renders the pose model removes part of mediapipe's offset from the true projections,
    most at large yaw; residual noise per point is positive and finite."""
    model = load_model("builtin")
    bias = calibrate(model, n_views=24, size=384, seed=3)
    assert bias.coef.shape == (len(model.landmarks.detector_index), 5, 2)
    assert np.isfinite(bias.sigma).all() and (bias.sigma > 0).all()
    rep = bias.report
    for row in rep.values():
        assert row["after_pct"] < row["before_pct"]
    w = bias.weights()
    assert np.median(w) == pytest.approx(1.0) and w.min() > 0
