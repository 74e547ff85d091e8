"""Entropy-smoothed partial optimal transport (GSP, Gurbuz et al.; methods.md §6.1).

Problem, for one image with n features (columns i) and m prototypes (rows k), cost c_ki:

    min_{π ≥ 0, ρ ≥ 0}  Σ_ki c_ki π_ki + (1/γ) Σ_ki π_ki (log π_ki − 1) + (1/γ) Σ_i ρ_i (log ρ_i − 1)
    s.t.  ρ_i + Σ_k π_ki = 1/n  (every feature's mass is either transported or residual)
          Σ_ki π_ki = μ          (the transported share)

Closed form: K = exp(−γ c), s_i = Σ_k K_ki, ρ_i = (1/n) / (1 + λ s_i), π_ki = λ K_ki ρ_i, where the
scalar λ > 0 solves Σ_i λ s_i ρ_i(λ) = μ. The 1-D fixed point λ ← μ / Σ_i s_i ρ_i(λ) is a
contraction with factor Σ_i t_i² / Σ_i t_i < 1 (t_i = λ s_i / (1 + λ s_i), the transported share of
feature i), so T = 100 steps converge unless the plan is nearly binary. μ ≥ 1 forces ρ = 0 (the
λ → ∞ limit), π_ki = (1/n) K_ki / s_i: a column softmax, and GSP reduces to average pooling.

Backward (implicit function theorem). With x = (ρ, π) and A the (n + 1)×|x| constraint matrix, the
optimality conditions give log x = −γ (c + Aᵀν), hence

    ∂L/∂c = −γ · [ x ⊙ g − x ⊙ Aᵀ H⁻¹ A (x ⊙ g) ]_π ,   g = ∂L/∂x,  H = A D(x) Aᵀ.

H has a diagonal block (1/n)·I for the n column constraints, coupling q − ρ_i to the mass
constraint and μ on the corner, so H⁻¹ is closed-form. Writing y = x ⊙ g, u_i = y_ρi + Σ_k y_ki:

    b   = −( Σ_i y_ρi − n Σ_i ρ_i u_i ) / (1 − μ − n Σ_i ρ_i²)      (= ∂L/∂μ)
    a_i = n (u_i − (1/n − ρ_i) b)
    ∂L/∂c_ki = −γ ( y_ki − π_ki (a_i + b) ) = −γ ( y_ki − n π_ki (u_i + ρ_i b) )

which is the official `computeGrads` (TF `optimal_transport_utils.py`, PT `transport_layer.py`).
For μ ≥ 1 the mass constraint is implied by the column constraints (H is singular) and b = 0.
`partial_transport(..., grad="unroll")` instead differentiates through the T iterations.
"""
from __future__ import annotations

import torch


def _solve(cost: torch.Tensor, mu: float, gamma: float, iters: int, lam0: float = 1.0) -> torch.Tensor:
    """cost B×m×N -> plan P = [ρ; π], B×(1+m)×N (differentiable by autograd through the iterations)."""
    n = cost.shape[-1]
    q = 1.0 / n
    kernel = torch.exp(-gamma * cost)                               # B×m×N
    s = kernel.sum(1, keepdim=True)                                 # B×1×N
    if mu >= 1.0:                                                   # λ → ∞: nothing is left residual
        return torch.cat([torch.zeros_like(s), q * kernel / s], 1)
    lam = torch.full((cost.shape[0], 1, 1), lam0, dtype=cost.dtype, device=cost.device)
    for _ in range(iters):
        rho = q / (1.0 + lam * s)
        lam = mu / (rho * s).sum(-1, keepdim=True)
    rho = q / (1.0 + lam * s)
    lam = mu / (rho * s).sum(-1, keepdim=True)                      # makes Σπ = μ exact
    return torch.cat([rho, lam * kernel * rho], 1)


def plan_grad(plan: torch.Tensor, grad: torch.Tensor, mu: float, gamma: float) -> torch.Tensor:
    """Analytic ∂L/∂cost (B×m×N) from the plan (B×(1+m)×N) and ∂L/∂plan (see the module docstring)."""
    n = plan.shape[-1]
    y = plan * grad                                                 # x ⊙ g
    rho = plan[:, :1]                                               # B×1×N
    u = y.sum(1, keepdim=True)                                      # B×1×N: y_ρ + Σ_k y_π
    if mu >= 1.0:
        b = torch.zeros_like(rho[..., :1])
    else:
        coeff = y[:, :1].sum(-1, keepdim=True) - n * (rho * u).sum(-1, keepdim=True)
        b = -coeff / (1.0 - mu - n * rho.square().sum(-1, keepdim=True))   # B×1×1
    common = n * (u + b * rho)                                      # B×1×N (a_i + b)
    return -gamma * (y[:, 1:] - common * plan[:, 1:])


class PartialTransportPlan(torch.autograd.Function):
    """Plan from costs with the analytic implicit-function backward (gradient w.r.t. the cost only)."""

    @staticmethod
    def forward(ctx, cost, mu, gamma, iters, lam0):
        with torch.no_grad():
            plan = _solve(cost, mu, gamma, iters, lam0)
        ctx.save_for_backward(plan)
        ctx.mu, ctx.gamma = mu, gamma
        return plan

    @staticmethod
    def backward(ctx, grad):
        plan, = ctx.saved_tensors
        return plan_grad(plan, grad, ctx.mu, ctx.gamma), None, None, None, None


def partial_transport(cost: torch.Tensor, mu: float = 0.3, gamma: float = 5.0, iters: int = 100,
                      grad: str = "analytic", lam0: float = 1.0) -> torch.Tensor:
    """Plan P = [ρ; π] of shape B×(1+m)×(spatial...) for costs B×m×(spatial...).

    Always solved in float32 (float64 inputs stay float64), also under autocast: exp(−γc) and the
    fixed point lose too much in bfloat16. `grad`: "analytic" (implicit function) or "unroll"
    (autograd through the iterations). `lam0`: initial λ (TF 1.0, the PT port uses μ).
    """
    if grad not in ("analytic", "unroll"):
        raise ValueError(f"grad must be 'analytic' or 'unroll', got {grad!r}")
    shape = cost.shape
    flat = cost.reshape(shape[0], shape[1], -1)
    if flat.dtype != torch.float64:
        flat = flat.float()
    with torch.autocast(device_type=cost.device.type, enabled=False):
        if grad == "analytic":
            plan = PartialTransportPlan.apply(flat, float(mu), float(gamma), int(iters), float(lam0))
        else:
            plan = _solve(flat, float(mu), float(gamma), int(iters), float(lam0))
    return plan.reshape(shape[0], shape[1] + 1, *shape[2:])
