"""The probability-flow ODE through torchdiffeq: the one adapter module between our `SDE` and `torchdiffeq.odeint`.

One vector field (`ProbabilityFlowField`, `dx/dt = f(x, t) - ½ g(t)² s(x, t)`, optionally augmented with its
divergence) and one solve (`solve_ode`) serve the `ode` sampler, `log_likelihood`, `encode` and `decode`; one
method table (`METHODS`, read from torchdiffeq's own solver list) serves them all.

The `ode` sampler steps torchdiffeq's one-step Runge–Kutta methods (euler, midpoint, heun2, heun3, rk4) interval
by interval — one `odeint` call per grid interval is exactly one step of the method — so `sample()`'s loop sees
every grid point; the adaptive methods and the Adams multistep methods (whose history would restart at every
call) run as one whole `odeint` call.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..sde import LinearSDE
from .base import Sampler
from .timesteps import TimestepSpec

__all__ = ["ODESampler", "ProbabilityFlowField", "solve_ode", "METHODS", "ADAPTIVE_METHODS", "FIXED_METHODS",
           "TIME_VARIABLES", "check_time"]


def _method_table() -> Dict[str, dict]:
    """torchdiffeq's solvers with their order, whether they adapt, and NFE per step for the one-step methods."""
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

    stages = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}  # function evaluations per RK step
    table = {}
    for name, cls in SOLVERS.items():
        if not isinstance(cls, type):
            continue
        if issubclass(cls, AdaptiveStepsizeODESolver):
            table[name] = dict(order=cls.order, adaptive=True, nfe_per_step=None, unused_stages=_unused_stages(cls))
        elif issubclass(cls, FixedGridODESolver):  # scipy_solver is left out: it goes through the host
            table[name] = dict(order=cls.order, adaptive=False, nfe_per_step=stages.get(name), unused_stages=())
    return table


def _unused_stages(cls) -> tuple:
    """Indices `i` (0 = the step's first-same-as-last stage) of an RK tableau's stages whose derivative enters
    neither the solution, the error estimate nor the dense output: there a component that does not feed back
    into the field (the likelihood's `Δ`) need not be computed. dopri5: stage 2; dopri8: stages 2-5."""
    tableau = getattr(cls, "tableau", None)
    if tableau is None:
        return ()
    mid = getattr(cls, "mid", None)
    return tuple(i for i in range(1, len(tableau.c_sol))
                 if tableau.c_sol[i] == 0 and tableau.c_error[i] == 0 and (mid is None or mid[i] == 0))


METHODS = _method_table()
ADAPTIVE_METHODS = tuple(k for k, v in METHODS.items() if v["adaptive"])
FIXED_METHODS = tuple(k for k, v in METHODS.items() if not v["adaptive"])
# The variable adaptive solves step in (see ProbabilityFlowField; chosen in benchmarks/likelihood_time.py).
DEFAULT_TIME = "cbrt_sigma"
# Fixed-grid methods integrate on this many uniform steps when nothing else says how many.
DEFAULT_FIXED_STEPS = 100


def check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(METHODS))} (torchdiffeq's), got {method!r}")
    return method


TIME_VARIABLES = ("t", "sigma", "cbrt_sigma", "log_sigma")


class ProbabilityFlowField(torch.nn.Module):
    """torchdiffeq's `func(u, state)` for the probability-flow ODE `dx/du = (f - ½ g² s) dt/du`.

    `divergence=None`: state `x`, returns the velocity. Otherwise state `(x, Δ)` and `dΔ/du = divergence(v, x)`
    (exact trace or Hutchinson probes, from `scoresde.likelihood`), the autograd graph built on a detached leaf and
    freed within the call. torchdiffeq integrates decreasing time grids itself, so the field is used as is
    (negating it too would run the ODE the wrong way).

    `time` is the variable the solver steps in (a linear SDE's noise level `σ̃ = σ/m = e^{-λ}`): `"t"` itself,
    `"sigma"` (u = σ̃), `"cbrt_sigma"` (u = σ̃^{1/3}) or `"log_sigma"` (u = log σ̃ = -λ); then
    `dt/du = (2σ²/g²)·dρ/du`, ρ = log σ̃. Any smooth monotone change of variable leaves the ODE's solution (and
    `∫ ∇·v`) unchanged; it changes how smooth the field is where the solver must step. A trained network's score
    error `δ/σ` at small σ enters the t-time field as `g²δ/(2σ)`, which is what makes t-time solves of trained
    models stiff near the data; in σ̃-time it enters as `σ̃δ`-sized terms."""

    def __init__(self, sde, score_fn, batch: int, divergence: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 progress: Optional[tqdm] = None, time: str = "t"):
        super().__init__()
        check_time(time)
        if time != "t" and not isinstance(sde, LinearSDE):
            time = "t"  # a general SDE has no noise level to step in
        self.sde, self.time = sde, time
        self.u_range: Optional[tuple] = None  # set by solve_ode: the interval being integrated
        self.flow = sde.reverse(score_fn, probability_flow=True)
        self.batch, self.divergence, self.progress = batch, divergence, progress
        # Set by solve_ode: the RK stages where the divergence goes unused (it is multiplied by zero weights).
        self.unused_stages: tuple = ()
        self._stage: Optional[int] = None  # the stage of the next call, once an adaptive step has begun

    def callback_step(self, t0, y0, dt) -> None:
        """torchdiffeq's hook before each adaptive step attempt: the calls that follow are stages 1, 2, ... of
        that step (stage 0 is the previous step's last)."""
        self._stage = 1

    # -- the change of variable: u <-> t --------------------------------------------------------------

    def to_u(self, t: Tensor) -> Tensor:
        """The solver's variable at the times `t` (a tensor)."""
        if self.time == "t":
            return t
        rho = -self.sde._half_log_snr(t)
        if self.time == "log_sigma":
            return rho
        return (rho / 3).exp() if self.time == "cbrt_sigma" else rho.exp()

    def _t_and_coefs(self, u: Tensor):
        """`(t, a, b)` at the solver's `u` (0-d or (1,) tensor), with `dx/du = a x + b s(x, t)`: `a = f dt/du`,
        `b = -½ g² dt/du` (one schedule evaluation; the field is linear in `x` and `s` given `u`)."""
        u = u.reshape(1)
        if self.u_range is not None:
            # torchdiffeq's initial-step probe may look past the end point (u < 0 has no noise level).
            u = u.clamp(*self.u_range)
        if self.time == "log_sigma":
            rho, drho = u, None
        else:
            k = 3.0 if self.time == "cbrt_sigma" else 1.0  # u = σ̃^{1/k}: ρ = k log u, dρ/du = k/u
            rho, drho = k * u.log(), k / u
        t = self.sde.t_from_half_log_snr(-rho)
        s = self.sde._schedule(t)
        rate = 2 * s.sigma**2 / s.g2  # dt/dρ = 1/(dρ/dt), dρ/dt = -λ' = g²/(2σ²)
        if drho is not None:
            rate = rate * drho
        return t, rate * s.f, -0.5 * rate * s.g2

    def velocity(self, x: Tensor, u: Tensor) -> Tensor:
        if self.progress is not None:
            self.progress.update(1)
        if self.time == "t":
            return self.flow._drift(x, u.to(x.dtype).expand(self.batch))
        t, a, b = self._t_and_coefs(u)
        dtype = x.dtype
        return a.to(dtype) * x + b.to(dtype) * self.flow.score_fn(x, t.to(dtype).expand(self.batch))

    def forward(self, u: Tensor, state):
        if self.divergence is None:
            with torch.no_grad():
                return self.velocity(state, u)
        stage = self._stage
        if stage is not None:
            self._stage = stage + 1
            if stage in self.unused_stages:  # the velocity is needed for later stages; no graph, no VJP
                with torch.no_grad():
                    return self.velocity(state[0], u), torch.zeros_like(state[1])
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = self.velocity(x, u)
            div = self.divergence(v, x)
        return v.detach(), div.detach()


def check_time(time: object) -> str:
    if time not in TIME_VARIABLES:
        raise ValueError(f"time must be one of {', '.join(TIME_VARIABLES)}, got {time!r}")
    return time


def solve_ode(field: ProbabilityFlowField, state, t0: float, t1: float, ref: Tensor, *, method: str = "dopri5",
              rtol: float = 1e-5, atol: float = 1e-5, options: Optional[dict] = None, grid: Optional[Tensor] = None):
    """`odeint` of `field` from `t0` to `t1`; returns the end state only (memory does not grow with the steps).

    Fixed-grid methods run on `grid` if given, else on `options`' `step_size`, else on `DEFAULT_FIXED_STEPS`
    uniform steps. A solver that gives up (a NaN or inf from the score, or a field too stiff for the tolerances)
    raises `ValueError` instead of torchdiffeq's `AssertionError: underflow in dt`."""
    from torchdiffeq import odeint

    options = dict(options or {})
    # In float64 for the change of variable: σ̃ at eps is ~1e-3, and its cube root or log must land on eps again.
    t = field.to_u(torch.tensor([t0, t1], device=ref.device, dtype=torch.float64)).to(ref.dtype)
    if grid is not None:
        grid = field.to_u(grid.to(torch.float64)).to(ref.dtype)
    field.u_range = (t.min(), t.max())
    field.unused_stages, field._stage = METHODS[method]["unused_stages"], None
    if METHODS[method]["adaptive"]:
        # Land exactly on the end point: stepping past it evaluates the field outside [0, T]
        # (t < 0 is NaN for VP; t > T is NaN for the cosine schedule) -> "underflow in dt".
        options.setdefault("step_t", t[1:])
    elif grid is not None:
        options.setdefault("grid_constructor", lambda f, y0, tt: grid)
    elif "step_size" not in options and "grid_constructor" not in options:
        options["step_size"] = float((t[1] - t[0]).abs()) / DEFAULT_FIXED_STEPS
    try:
        out = odeint(field, state, t, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as e:
        if "underflow" not in str(e):
            raise
        raise ValueError(f"the ODE solver ({method}, rtol={rtol:g}, atol={atol:g}) failed between t={t0:g} and t={t1:g}: "
                         "its step size underflowed, so the score function returned NaN/inf or the field is too "
                         "stiff for these tolerances") from None
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


class ODESampler(Sampler):
    """Probability-flow ODE through `torchdiffeq.odeint` (Song et al. 2021, sec. 4.3). Any torchdiffeq method:

    - adaptive (`dopri5` default, `dopri8`, `bosh3`, `fehlberg2`, `adaptive_heun`): `rtol`/`atol`, `steps` ignored,
      one whole `odeint` call (NFE ≈ 6 per accepted dopri5 step; `nfe_per_step` None), stepping in `time`
      (`ProbabilityFlowField`'s variables: t or the noise level σ̃; the one-step methods always step the t-grid);
    - one-step fixed-grid (`euler` 1, `midpoint`/`heun2` 2, `heun3` 3, `rk4` 4 NFE per step, orders equal to NFE),
      stepped on the `timesteps` grid interval by interval;
    - Adams multistep (`explicit_adams`, `implicit_adams`, `fixed_adams`): one whole call on the grid (an RK4 warm
      start, and implicit iterations: NFE per step not constant, `nfe_per_step` None)."""

    weak_order = None
    stochastic = False

    def __init__(self, method: str = "dopri5", *, rtol: float = 1e-5, atol: float = 1e-5,
                 timesteps: TimestepSpec = "auto", options: Optional[dict] = None, time: str = DEFAULT_TIME):
        check_method(method)
        self.time = check_time(time)
        for name, v in (("rtol", rtol), ("atol", atol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of torchdiffeq solver options, got {type(options).__name__}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.timesteps, self.options = timesteps, dict(options or {})

    adaptive = property(lambda self: METHODS[self.method]["adaptive"])
    order = property(lambda self: METHODS[self.method]["order"])  # type: ignore[assignment]
    nfe_per_step = property(lambda self: METHODS[self.method]["nfe_per_step"])  # type: ignore[assignment]
    whole = property(lambda self: self.nfe_per_step is None)  # type: ignore[assignment]

    def solve(self, sde, score_fn, x, ts, progress):
        bar = tqdm(desc=f"ode ({self.method})", unit="nfe", leave=False) if progress else None
        try:
            # Whole solves step in `time`; the one-step methods below step the sampler's own t-grid.
            field = ProbabilityFlowField(sde, score_fn, x.shape[0], progress=bar, time=self.time if self.adaptive else "t")
            return solve_ode(field, x, float(ts[0]), float(ts[-1]), x, method=self.method, rtol=self.rtol,
                             atol=self.atol, options=self.options, grid=None if self.adaptive else ts)
        finally:
            if bar is not None:
                bar.close()

    def init(self, sde, score_fn, ts, schedule, x, noise):
        return ProbabilityFlowField(sde, score_fn, x.shape[0]), ts

    def step(self, score_fn, x, i, state, noise):
        from torchdiffeq import odeint

        field, ts = state
        # No step_size: torchdiffeq's grid is then the two times given, so this is exactly one step of the method.
        return odeint(field, x, ts[i:i + 2], method=self.method, options=self.options)[-1], state
