"""Step weights of the higher-order multistep exponential integrators behind `DPMSolver(method="deis" | "ipndm")`.

Both integrate the probability-flow ODE of any `LinearSDE` in its exponential-integrator form, with `λ = log m/σ`:

- data prediction `D = (x + σ² s)/m`:  `x_{i+1} = (σ_{i+1}/σ_i) x_i + σ_{i+1} ∫_{λ_i}^{λ_{i+1}} e^{λ} D dλ`;
- noise prediction `ε = -σ s`:         `x_{i+1} = (m_{i+1}/m_i) x_i - m_{i+1} ∫_{λ_i}^{λ_{i+1}} e^{-λ} ε dλ`.

DEIS (Zhang & Chen 2023, "tAB"): the prediction is replaced by the Lagrange polynomial through its last `k` values
in the variable `t` (the paper's tAB; `basis="vp_t"` in the default VP's clock at the same `λ`, which is `t` on VP
and makes the weights independent of a user SDE's clock; `basis="lambda"` in `λ`) and the integral is taken
exactly (Gauss–Legendre in `λ`, 16 nodes per step, to rounding). Order `k`; orders 1-4, the first steps warm up
at the orders the history allows. The UniC-style corrector is the same construction with the new node
`i + 1` added (Adams–Moulton; order `k + 1`, no extra NFE).

iPNDM (Zhang & Chen 2023, after Liu et al. 2022's PNDM): `ε` form in `ρ = σ/m`, `x/m` advanced by
`Δρ · Σ b_j ε_{i-j}` with the fixed Adams–Bashforth weights of equal steps (orders 1-4, lower-order warm start),
as in DEIS's code and diffusers' `IPNDMScheduler`. On grids whose steps in `ρ` are not equal the weights are
not those of the grid, so the measured order is the grid's business (see tests/test_multistep.py).

Everything here runs once per call on Python floats and one small float64 tensor for `t(λ)` at the quadrature
nodes; the step itself is a fixed linear combination of the state and the stored predictions.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch

from ..sde import VPSDE

__all__ = ["lagrange_weights", "ipndm_weights", "AB", "AM"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)

# Adams–Bashforth (predictor) and Adams–Moulton (corrector, newest node first) weights for equal steps.
AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
AM = {1: [1.0], 2: [0.5, 0.5], 3: [5 / 12, 8 / 12, -1 / 12], 4: [9 / 24, 19 / 24, -5 / 24, 1 / 24],
      5: [251 / 720, 646 / 720, -264 / 720, 106 / 720, -19 / 720]}


def _lagrange_integrals(nodes: List[float], u: np.ndarray, w: np.ndarray) -> List[float]:
    """`Σ_q w_q L_j(u_q)` for the Lagrange basis `L_j` through `nodes` (quadrature points `u`, weights `w`)."""
    out = []
    for j, vj in enumerate(nodes):
        lj = np.ones_like(u)
        for q, vq in enumerate(nodes):
            if q != j:
                lj = lj * (u - vq) / (vj - vq)
        out.append(float((w * lj).sum()))
    return out


def lagrange_weights(sde, sched, orders: List[int], *, prediction: str, basis: str, corrector: bool
                     ) -> Tuple[list, list, list]:
    """DEIS: per-step `a_i`, predictor weights `c_i` of `[P_i, P_{i-1}, ...]` and corrector weights `cc_i` of
    `[P_{i+1}, P_i, P_{i-1}, ...]` (`P` = D or ε), so that `x_{i+1} = a_i x_i + Σ_j c_ij P_{i-j}`.

    The integral `∫_{λ_i}^{λ_{i+1}} e^{±(λ - λ_{i+1})} L_j(v(λ)) dλ`, `v = t` or `λ`, by 16-point Gauss–Legendre
    in `λ` (`t(λ)` at the nodes from the SDE's own inverse, in one call)."""
    m, std, t = sched.m.double().tolist(), sched.sigma.double().tolist(), sched.t.double().tolist()
    lam = [math.log(mi) - math.log(si) for mi, si in zip(m, std)]
    n = len(m) - 1
    h = [lam[i + 1] - lam[i] for i in range(n)]
    lam_q = np.array([[lam[i] + 0.5 * h[i] * (1 + x) for x in _GL_NODES] for i in range(n)])  # (n, 16)
    if basis == "t":
        tq = sde.t_from_half_log_snr(torch.tensor(lam_q.reshape(-1), dtype=torch.float64)).numpy().reshape(n, -1)
        vals = t
    elif basis == "vp_t":  # the default VP's clock at the same λ (closed form): the same weights on every SDE
        vp = VPSDE()
        tq = vp.t_from_half_log_snr(torch.tensor(lam_q.reshape(-1), dtype=torch.float64)).numpy().reshape(n, -1)
        vals = vp.t_from_half_log_snr(torch.tensor(lam, dtype=torch.float64)).tolist()
    else:
        tq, vals = lam_q, lam
    sign = 1.0 if prediction == "data" else -1.0
    a = [std[i + 1] / std[i] if prediction == "data" else m[i + 1] / m[i] for i in range(n)]
    c, cc = [], []
    for i, k in enumerate(orders):
        wq = 0.5 * h[i] * _GL_WEIGHTS * np.exp(sign * (lam_q[i] - lam[i + 1]))
        scale = m[i + 1] if prediction == "data" else -std[i + 1]  # σ e^{λ_{i+1}} = m;  -m e^{-λ_{i+1}} = -σ
        c.append([scale * v for v in _lagrange_integrals([vals[i - j] for j in range(k)], tq[i], wq)])
        if corrector and i < n - 1:
            cc.append([scale * v for v in _lagrange_integrals([vals[i + 1]] + [vals[i - j] for j in range(k)], tq[i], wq)])
        else:
            cc.append([])
    return a, c, cc


def ipndm_weights(sched, orders: List[int], *, corrector: bool) -> Tuple[list, list, list]:
    """iPNDM: `x_{i+1}/m_{i+1} = x_i/m_i + (ρ_{i+1} - ρ_i) Σ_j b_j ε_{i-j}`, `ρ = σ/m`, `b` Adams–Bashforth of
    order `k` for equal steps (Adams–Moulton of order `k + 1` for the corrector)."""
    m, std = sched.m.double().tolist(), sched.sigma.double().tolist()
    n = len(m) - 1
    a = [m[i + 1] / m[i] for i in range(n)]
    dr = [std[i + 1] - m[i + 1] * std[i] / m[i] for i in range(n)]  # m_{i+1} (ρ_{i+1} - ρ_i)
    c = [[dr[i] * b for b in AB[k]] for i, k in enumerate(orders)]
    cc = [[dr[i] * b for b in AM[k + 1]] if corrector and i < n - 1 else [] for i, k in enumerate(orders)]
    return a, c, cc
