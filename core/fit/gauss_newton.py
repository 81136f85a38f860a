"""Levenberg-Marquardt for small least-squares problems: min 0.5 * ||r(theta)||^2.

The landmark stage of every fit is such a problem (a few hundred 2D residuals, a few hundred
parameters; the model's coefficients enter almost linearly once the camera is fixed), and a
Gauss-Newton step solves it in a handful of iterations where a first-order or quasi-Newton method
needs dozens of function evaluations. The Jacobian comes from forward-mode autodiff (one vectorised
pass over all parameters), so any residual (priors, bounds, joints) works unchanged.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


def levenberg_marquardt(residuals: Callable, theta0, iters: int = 15, free: Optional[torch.Tensor] = None,
                        damping: float = 1e-3, tol: float = 1e-7, jacobian: Optional[Callable] = None,
                        step: Optional[Callable] = None, held: Optional[Callable] = None,
                        project: Optional[Callable] = None) -> tuple:
    """Minimise 0.5 ||residuals(theta)||^2 from ``theta0``. Returns (theta, final cost, iterations).

    By default theta is a 1-D tensor, its Jacobian comes from forward-mode autodiff and a step adds
    to it. A problem with its own parameterisation passes ``jacobian(theta) -> (n_res, n_params)``
    and ``step(theta, delta) -> theta`` (e.g. a rotation updated multiplicatively); theta is then
    whatever those two understand. ``free`` (bool, n_params) limits the step to some parameters.
    Bounds (with ``jacobian``): ``project(theta, delta) -> delta`` clips a step at them (the gain
    ratio then uses the decrease predicted for the clipped step), and ``held(theta, gradient) -> bool
    (n_params)`` holds the parameters sitting on a bound that the gradient pushes across, for one
    iteration (an active set).

    Damping follows Nielsen's rule: shrink after a step that lowered the cost, grow after one that
    did not (the step is then retried from the same point)."""
    theta = theta0.detach().clone() if torch.is_tensor(theta0) else theta0
    if step is None:
        step = lambda th, delta: th + delta                              # noqa: E731
    r = residuals(theta)
    cost = 0.5 * float((r * r).sum())
    lam, nu = damping, 2.0
    it = 0
    idx = None
    for it in range(1, iters + 1):
        if jacobian is None:
            n = len(theta)
            idx = torch.arange(n, device=theta.device) if free is None else torch.nonzero(free).flatten()
            base = theta
            J = torch.func.jacfwd(lambda x: residuals(base.index_put((idx,), x)))(theta[idx])   # (n_res, n_free)
        else:
            J = jacobian(theta)
            n = J.shape[1]
            mask = torch.ones(n, dtype=torch.bool, device=J.device) if free is None else free
            if held is not None:
                mask = mask & ~held(theta, J.T @ r)
            idx = torch.nonzero(mask).flatten()
            if len(idx) == 0:
                break
            J = J[:, idx]
        g = J.T @ r
        H = J.T @ J
        diag = torch.diagonal(H).clamp_min(1e-9)
        while True:
            delta = torch.linalg.solve(H + lam * torch.diag(diag), -g)
            full = torch.zeros(n, dtype=delta.dtype, device=delta.device).index_put((idx,), delta)
            if project is not None:
                full = project(theta, full)
                delta = full[idx]
            cand = step(theta, full)
            r_new = residuals(cand)
            new_cost = 0.5 * float((r_new * r_new).sum())
            if new_cost < cost:
                # gain ratio of the actual to the predicted decrease steers the damping
                predicted = float(-(g @ delta) - 0.5 * (delta @ (H @ delta)))
                rho = (cost - new_cost) / max(predicted, 1e-12)
                lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
                break
            lam *= nu
            nu *= 2.0
            if lam > 1e10:
                return theta, cost, it
        converged = (cost - new_cost) <= tol * max(cost, 1e-12)
        theta, r, cost = cand, r_new, new_cost
        if converged:
            break
    return theta, cost, it
