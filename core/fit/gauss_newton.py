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


def levenberg_marquardt(residuals: Callable[[torch.Tensor], torch.Tensor], theta0: torch.Tensor,
                        iters: int = 15, free: Optional[torch.Tensor] = None, damping: float = 1e-3,
                        tol: float = 1e-7) -> tuple:
    """Minimise 0.5 ||residuals(theta)||^2 from ``theta0`` (1-D). ``free`` (bool, like theta) limits
    the step to some parameters (e.g. the rigid pose first). Returns (theta, final cost, iterations).

    Damping follows Nielsen's rule: shrink after a step that lowered the cost, grow after one that
    did not (the step is then retried from the same point)."""
    theta = theta0.detach().clone()
    idx = torch.arange(len(theta), device=theta.device) if free is None else torch.nonzero(free).flatten()
    r = residuals(theta)
    cost = 0.5 * float((r * r).sum())
    lam, nu = damping, 2.0

    def sub_residuals(x):
        full = theta.index_put((idx,), x)
        return residuals(full)

    it = 0
    for it in range(1, iters + 1):
        J = torch.func.jacfwd(sub_residuals)(theta[idx])             # (n_res, n_free)
        g = J.T @ r
        H = J.T @ J
        diag = torch.diagonal(H).clamp_min(1e-9)
        while True:
            step = torch.linalg.solve(H + lam * torch.diag(diag), -g)
            cand = theta.index_put((idx,), theta[idx] + step)
            r_new = residuals(cand)
            new_cost = 0.5 * float((r_new * r_new).sum())
            if new_cost < cost:
                # gain ratio of the actual to the predicted decrease steers the damping
                predicted = float(-(g @ step) - 0.5 * (step @ (H @ step)))
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
