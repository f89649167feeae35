"""DPM-Solver++ multistep (Lu et al. 2022) with the UniC corrector (Zhao et al. 2023, "UniPC"): an exponential
integrator of the probability-flow ODE in the data-prediction form, for any `LinearSDE` through `marginal_coefs`."""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional

import numpy as np

import torch
from torch import Tensor

from ..sde import LinearSDE
from .base import Sampler
from .predictors import batch_times
from .multistep import ipndm_weights, lagrange_weights
from .timesteps import TimestepSpec

__all__ = ["DPMSolver", "METHODS"]

METHODS = ("dpm++", "deis", "ipndm")

# Below this many steps, `lower_order_final` drops the order over the last steps (the reference code's threshold).
_LOWER_ORDER_FINAL_BELOW = 15
# The default's predictor order: 3 below this many steps, 4 from it on (measured, see the class docstring).
_AUTO_ORDER4_FROM = 15
_AUTO_ORDER_LARGE = 4
# The default recipe runs DPM-Solver++(2M) + UniC below this many steps, DEIS tAB 3 in ε + UniC from it on (measured).
_DATA_FORM_BELOW = 8


class DPMSolver(Sampler):
    """Multistep DPM-Solver++: `x_{i+1} = (σ_{i+1}/σ_i) x_i - m_{i+1} (e^{-h} - 1) D̂`, `h = λ_{i+1} - λ_i`, `λ = log m/σ`.

    `D = (x + σ² s)/m` is the data prediction (Tweedie); `D̂` extrapolates the last `order` of them in `λ`
    (order 1 is DDIM; 2 is DPM-Solver++(2M); 3 is the 3M update). 1 NFE per step; order 3 spends one more
    on its first step, a DPM-Solver++(2S) midpoint step (a first-order warm-up would cap the global order at 2).

    `corrector=True` (default) adds UniC (UniPC's corrector, `B(h) = e^h - 1`): once the score at the predicted
    `x_{i+1}` is known — it is needed for the next step anyway — `x_{i+1}` is recomputed from the same history plus
    that new `D_{i+1}`, which raises the order by one at no extra NFE (none on the last step, whose score is
    never evaluated). `order` (the attribute) is then `order + 1` for orders 1 and 2; with 3 the 2S warm-up keeps it 3.

    `method="deis"` (DEIS tAB, Zhang & Chen 2023; orders 1-4) and `method="ipndm"` (iPNDM, orders 1-4, second
    order on unequal steps) are the higher-order multistep exponential integrators of `multistep.py`, in the
    noise prediction by default (`prediction="data"` for DEIS in D; `basis="t"`, `"vp_t"` or `"lambda"`: the
    variable DEIS interpolates in), lower-order warm start, the same corrector (Adams–Moulton on the new node).

    `correct_history` (default on; off only in the default's few-step 2M): the corrector replaces the predicted
    `x_i` by a corrected one, but the score was evaluated at the predicted point; the prediction kept for the
    next steps is moved to the corrected point by its slope for unit-variance Gaussian data,
    `P_i += J_i (x_i^c - x̃_i)` (`J` = σ/(m² + σ²) for ε, m/(m² + σ²) for D; exact for N(μ, I) data,
    order-neutral otherwise, no extra NFE). Without it the mismatch is weighted by
    σ ≈ 1 in the ε form and grows step after step: DEIS-3 in ε + UniC reached 30-1000x the error of 2M + UniC at
    10 NFE on trained models, with it 0.4-0.9x. In D it also helps (0.53-0.88x on the same models at 10 NFE).

    Default (no option given): DEIS tAB 3 in ε + UniC (declared order 4) on the `"blend"` grid, from 8 steps;
    below 8, 2M + UniC in D with the history as evaluated (`recipe_for` says why). Chosen on 8 trained models
    and the exact-score race's ring and 64-D mixture, held out on 6 more models and 3 more mixtures (`benchmarks/solvers.py
    --trained`, `--race`). Against the previous default (2M + UniC on the capped log-SNR grid, history as
    evaluated): 0.23-0.91x its error on the 8 models at 10 and 20 NFE, geometric mean over all 14 models 0.47-0.61x
    from 8 to 30 NFE (worst 1.9x, a 300-step ε model at 10 NFE) and 0.85x at 5; on the race 0.51-0.91x the best
    diffusers/k-diffusion configuration (the previous default: 0.64-2.97x). Any explicit `order`, `method`,
    `prediction` or `basis` turns the per-budget switch off.

    `method="auto"` is DEIS tAB in D with the corrector and the corrected history, interpolating in VP's clock
    (`basis="vp_t"`), on the `"vp_power"` grid (uniform in `t^{0.4}` on VP's clock; order 3 below 15 steps, 4 from
    15; a `prediction`, `basis`, `order` or `timesteps` given with it replaces that part): the recipe for exact or
    very accurate scores. On the exact-score race it is within 0.5x the best diffusers/k-diffusion configuration in
    all ten cases (`benchmarks/solvers.py --race`); on exact mixtures under six SDEs (VP, sub-VP, VE, cosine, two
    user SDEs) 0.46x the default's error (geometric mean of 72 cases at 10 and 20 NFE, above it in 8, at most 1.21x;
    `--auto`). Not the default: on 11 trained models it is at 0.91-1.21x the default's error from 8 to 30 NFE
    (geometric mean), but 5-9x on a class-conditional ring under guidance at 8-10 NFE, 0.9-41x on three held-out
    guided models at 8-20 NFE and 2.0-5.2x on three unguided models trained with ε output and σ² weighting (the DDPM
    setup) at 8-30 NFE: its large first steps at high noise meet a network whose D wiggles or blows up there, where
    an exact score's is nearly constant (`benchmarks/solvers.py --along`). (The earlier auto,
    the same in ε on `"vp_quadratic"`: 0.15-0.66x the best peer, 2-7x the default on the trained models at 5-10
    NFE.)"""

    weak_order = None
    nfe_per_step = 1
    stochastic = False

    def __init__(self, order: Optional[int] = None, *, method: Optional[str] = None,
                 timesteps: Optional[TimestepSpec] = None, lower_order_final: bool = True, corrector: bool = True,
                 prediction: Optional[str] = None, basis: Optional[str] = None, correct_history: Optional[bool] = None):
        if method is not None and method not in METHODS + ("auto",):
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS + ('auto',)))}, got {method!r}")
        # No choice made: the per-budget default (2M below _DATA_FORM_BELOW steps)
        self._per_budget = method is None and order is None and prediction is None and basis is None
        self._auto = method == "auto"
        self._auto_orders = self._auto and order is None  # auto's 3-then-4 switch, unless an order is given
        if self._auto:
            # the recipe's parts, each overridable (an option given is never silently dropped)
            method, prediction, basis, timesteps = "deis", prediction or "data", basis or "vp_t", timesteps or "vp_power"
            order = _AUTO_ORDER_LARGE if order is None else order
        method, basis = method or "deis", basis or "t"
        if order is None:
            order = 2 if method == "dpm++" else 3
        top = 3 if method == "dpm++" else 4
        if isinstance(order, bool) or order not in range(1, top + 1):
            more = " (order 4 needs method='deis' or 'ipndm')" if method == "dpm++" and order == 4 else ""
            raise ValueError(f"order must be 1 to {top} for method={method!r}, got {order!r}{more}")
        if prediction is None:
            prediction = "data" if method == "dpm++" else "eps"
        if prediction not in ("data", "eps") or (method != "deis" and prediction != ("data" if method == "dpm++" else "eps")):
            raise ValueError(f"prediction must be 'data' or 'eps' (method 'deis' only), got {prediction!r} for method={method!r}")
        if basis not in ("t", "vp_t", "lambda"):
            raise ValueError(f"basis must be 't', 'vp_t' or 'lambda', got {basis!r}")
        self.method, self.prediction, self.basis = method, prediction, basis
        self.predictor_order = order
        self.corrector = bool(corrector)
        # UniC on 2S-warmed 3M keeps 3; on the others the corrector adds one to the predictor's order
        self.order = order + 1 if self.corrector and not (method == "dpm++" and order == 3) else order  # type: ignore[misc]
        if method == "ipndm":  # equal-step weights on unequal steps: second order (measured), corrected or not
            self.order = 1 if order == 1 and not self.corrector else 2  # type: ignore[misc]
        if self._auto_orders:
            # measured slopes at 32-128 steps: 4.3-4.5 on VP and sub-VP, 4.0 on a cosine user SDE, 3.6 on VE (6.2,
            # 6.3, 5.5, 4.8 at 16-64): the corrector's extra order shows before 64 steps and fades after
            self.order = 4  # type: ignore[misc]
        self.timesteps = "blend" if timesteps is None else timesteps
        self.lower_order_final = bool(lower_order_final)
        # None: on, except in the default's few-step 2M (see recipe_for)
        self.correct_history = None if correct_history is None else bool(correct_history)

    def check(self, sde) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"dpm_solver needs a LinearSDE (with marginal_coefs), got sde of type {type(sde).__name__}")

    @property
    def nfe_init(self) -> int:  # type: ignore[override]
        return 1 if self.method == "dpm++" and self.predictor_order == 3 else 0  # the 2S midpoint warm-up (one step of two or more)

    def order_for(self, steps: int) -> int:
        """The predictor order a call with `steps` steps runs at (`"auto"`: 3 below 15 steps, else 4)."""
        return self.recipe_for(steps)[2]

    def recipe_for(self, steps: int) -> tuple:
        """`(method, prediction, predictor order, correct_history)` of a call with `steps` steps. The default runs
        2M + UniC in D with the history as evaluated below 8 steps: there the ε form's larger weight on the
        network's high-noise error costs more than its order gains, and the linearised history, fitted to
        unit-variance data, is too coarse for steps of Δλ ≈ 2 (measured on 14 trained models, class docstring)."""
        history = True if self.correct_history is None else self.correct_history
        if self._per_budget and steps < _DATA_FORM_BELOW:
            return "dpm++", "data", 2, self.correct_history is True
        if self._auto_orders and steps < _AUTO_ORDER4_FROM:
            return self.method, self.prediction, 3, history
        return self.method, self.prediction, self.predictor_order, history

    def _orders(self, n: int, k: int) -> List[int]:
        """The order of each step: warm-up from the history available, lowered over the last steps if asked."""
        cap = lambda i: n - i if self.lower_order_final and n < _LOWER_ORDER_FINAL_BELOW else k
        return [max(1, min(i + 1, k, cap(i))) for i in range(n)]

    def init(self, sde, score_fn, ts, schedule, x, noise):
        n = len(ts) - 1
        method, prediction, k, history = self.recipe_for(n)
        orders = self._orders(n, k)
        midpoint = method == "dpm++" and k == 3 and n > 1 and orders[0] == 1
        # The whole schedule, once per call and in float64: every update is then a fixed linear combination
        # of the state and the stored predictions (newest first). Scalars only: built on the CPU from
        # one copy of the table (one host sync, before the loop), so no per-step small kernels run on an accelerator.
        sched = schedule.to("cpu")
        if method == "dpm++":
            a, c, cc = _coefficients(sched, orders)  # Python floats
        elif method == "deis":
            a, c, cc = lagrange_weights(sde, sched, orders, prediction=prediction, basis=self.basis, corrector=self.corrector)
        else:
            a, c, cc = ipndm_weights(sched, orders, corrector=self.corrector)
        correct = [self.corrector and i < n - 1 and not (i == 0 and midpoint) for i in range(n)]
        rows = sched.floats()
        eps = prediction == "eps"
        # ∂P/∂x for Gaussian data of unit variance (ε: σ/(m² + σ²), D: m/(m² + σ²)): moves a prediction made at
        # the predicted point to the corrected one (see the class docstring)
        slope = [(r.sigma if eps else r.m) / (r.m * r.m + r.sigma * r.sigma) if history else 0.0
                 for r in (rows[i] for i in range(n))]
        return _State(sde, ts, batch_times(ts, x.shape[0]), [rows[i] for i in range(n)], orders, midpoint, correct,
                      a, c, cc, [], x, eps, max(orders), slope)

    def step(self, score_fn, x, i, state, noise):
        st = state
        s = score_fn(x, st.times[i])
        d = st.rows[i].eps_from_score(s) if st.eps else st.rows[i].x0_from_score(x, s)
        if i > 0 and st.correct[i - 1]:
            # UniC: redo step i-1 with P_i (from the predicted x_i) as one more node; P_i stays in the history.
            x_pred = x
            x = st.x_prev * st.a[i - 1] + d * st.cc[i - 1][0]
            for w, dj in zip(st.cc[i - 1][1:], st.history[:st.orders[i - 1]]):
                x.add_(dj, alpha=w)
            if st.slope[i]:  # d is this step's own tensor: in place, no temporaries
                d.add_(x, alpha=st.slope[i]).sub_(x_pred, alpha=st.slope[i])
        st.history.insert(0, d)
        del st.history[st.keep:]
        st = st._replace(x_prev=x)
        if i == 0 and st.midpoint:
            return self._midpoint_step(st.sde, score_fn, x, d, st.ts), st
        x_next = x * st.a[i]
        for w, dj in zip(st.c[i], st.history[:st.orders[i]]):
            x_next.add_(dj, alpha=w)
        return x_next, st

    @staticmethod
    def _midpoint_step(sde, score_fn, x, d, ts) -> Tensor:
        """DPM-Solver++(2S) from grid point 0 to 1 through the log-SNR midpoint: local error O(h³), 1 extra NFE."""
        ends = sde._schedule(ts[:2])
        lam = ends.lam
        lam_s = 0.5 * (lam[0] + lam[1])
        mid = sde._schedule(sde.t_from_half_log_snr(lam_s.reshape(1)))[0]
        u = (mid.sigma / ends.sigma[0]) * x - mid.m * torch.expm1(-(lam_s - lam[0])) * d
        d_s = mid.x0_from_score(u, score_fn(u, mid.t.expand(x.shape[0])))
        return (ends.sigma[1] / ends.sigma[0]) * x - ends.m[1] * torch.expm1(-(lam[1] - lam[0])) * d_s


class _State(NamedTuple):
    sde: LinearSDE
    ts: Tensor
    times: list
    rows: list  # the schedule's rows as Python floats
    orders: List[int]
    midpoint: bool
    correct: List[bool]
    a: list
    c: list
    cc: list
    history: List[Tensor]  # predictions (D, or ε when `eps`), newest first
    x_prev: Tensor
    eps: bool = False
    keep: int = 3  # how many predictions the history holds
    slope: Optional[list] = None  # per node: the linearised ∂P/∂x that carries P_i to the corrected x_i (0: off)


def _unic_weights(h: float, r: List[float]) -> List[float]:
    """UniC's `ρ` (Zhao et al. 2023, bh2) for a step of length `h` in λ with earlier nodes at `r_j = (λ_{i-j} - λ_i)/h`:
    `R ρ = b`, `R_qj = r_j^{q-1}` (with `r_k = 1`, the new node), `b_q = q! φ_{q+1}(-h)/(e^{-h} - 1)`, `φ` the
    exponential-integrator functions. With no earlier node (k = 1) it is the trapezoid, `ρ = 1/2`."""
    if not r:
        return [0.5]
    hh = -h
    big_b = math.expm1(hh)
    nodes = np.array(r + [1.0])
    rows, b = [], []
    hphi, fact = big_b / hh - 1, 1
    for q in range(1, len(r) + 2):
        rows.append(nodes ** (q - 1))
        b.append(hphi * fact / big_b)
        fact *= q + 1
        hphi = hphi / hh - 1 / fact
    if len(b) == 2:  # one earlier node (2M): Cramer's rule, R = [[1, 1], [r, 1]]
        r0 = r[0]
        return [(b[0] - b[1]) / (1 - r0), (b[1] - r0 * b[0]) / (1 - r0)]
    return np.linalg.solve(np.stack(rows), np.array(b)).tolist()


def _coefficients(sched, orders: List[int]):
    """Per-step predictor weights `a_i` (n,), `c_ij` (n, 3) of the data predictions `D_{i-j}`; corrector weights
    `cc_ij` (n, 4) of `[D_{i+1}, D_i, D_{i-1}, ...]` (with the same `a_i`), from the grid's schedule in float64.

    Predictor from `i` to `i + 1` with `k = orders[i]` data predictions `D_i, D_{i-1}, ...`:
    `x_{i+1} = (σ_{i+1}/σ_i) x_i - m_{i+1} φ₁ D_i` (φ₁ = e^{-h} - 1) plus, for k = 2, `-½ m_{i+1} φ₁ (D_i - D_{i-1})/r₀`;
    for k = 3 the exact integrals of the Taylor terms, `m h φ₂ D'` and `-m h² φ₃ D''` (the reference code weights
    its `h² D''/2` by φ₃ alone, which caps the measured order at 2), with backward differences in λ.
    Corrector (UniC, k nodes plus the new one): `x_{i+1} = (σ_{i+1}/σ_i) x_i - m_{i+1} φ₁ D_i
    - m_{i+1} φ₁ [Σ_{j<k} ρ_j (D_{i-j} - D_i)/r_j + ρ_k (D_{i+1} - D_i)]`.

    Plain Python floats (from one host copy of the schedule): a few scalar operations per step, no tensor work."""
    m, std = sched.m.double().tolist(), sched.sigma.double().tolist()
    lam = [math.log(mi) - math.log(si) for mi, si in zip(m, std)]
    n = len(m) - 1
    a = [std[i + 1] / std[i] for i in range(n)]
    c = [[0.0] * 3 for _ in range(n)]
    cc = [[0.0] * 4 for _ in range(n)]
    h = [lam[i + 1] - lam[i] for i in range(n)]
    phi1 = [math.expm1(-hi) for hi in h]
    w0 = [-m[i + 1] * phi1[i] for i in range(n)]  # weight of D_i in the first-order update
    for i, k in enumerate(orders):
        col = [w0[i]]
        if k == 2:
            r0 = (lam[i] - lam[i - 1]) / h[i]
            g = -0.5 * m[i + 1] * phi1[i] / r0  # times (D_i - D_{i-1})
            col = [w0[i] + g, -g]
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h[i], (lam[i - 1] - lam[i - 2]) / h[i]
            phi2 = phi1[i] / h[i] + 1
            phi3 = phi2 / h[i] - 0.5
            # d1_0 = (D0 - D1)/r0, d1_1 = (D1 - D2)/r1; d1 = d1_0 + r0/(r0+r1) (d1_0 - d1_1); d2 = 2 (d1_0 - d1_1)/(r0+r1)
            # x += m φ₂ d1 - m φ₃ d2 = α d1_0 + β d1_1 with:
            mm = m[i + 1]
            alpha = mm * phi2 * (1 + r0 / (r0 + r1)) - mm * phi3 * 2 / (r0 + r1)
            beta = -mm * phi2 * r0 / (r0 + r1) + mm * phi3 * 2 / (r0 + r1)
            col = [w0[i] + alpha / r0, -alpha / r0 + beta / r1, -beta / r1]
        for j, v in enumerate(col):
            c[i][j] = v
        if i == n - 1:
            continue  # the last step is never corrected
        r = [(lam[i - j] - lam[i]) / h[i] for j in range(1, k)]
        rho = _unic_weights(h[i], r)
        mb = -m[i + 1] * phi1[i]  # -m_{i+1} B(h), B = e^{-h} - 1 = φ₁
        cc[i][0] = mb * rho[-1]
        cc[i][1] = w0[i] - mb * (rho[-1] + sum(rj_rho / rj for rj_rho, rj in zip(rho, r)))
        for j in range(1, k):
            cc[i][1 + j] = mb * rho[j - 1] / r[j - 1]
    return a, c, cc
