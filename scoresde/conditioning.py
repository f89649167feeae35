"""Conditioning methods: sampling `p(x₀ | y)` for an observation `y = A x₀ + N(0, σ_y² I)` (an `Observation`
or `Inpainting`) with the unconditional score, through the loop's per-step hook.

Every method is a `StepHook`; `sample(..., condition=obs, conditioning=...)` binds it to the observation:

- `Replacement()`: after each step to `t`, the observed part is set to the forward-noised observation
  `y_t = m(t) y + σ(t) A z (+ m(t) σ_y ζ if noisy)` (Song et al. 2021, App. I): `x ← x + A⁺ (y_t - A x)`.
  Biased: the unobserved part sees the observation only through the score at later steps, and a noisy
  observation's entries are drawn from the likelihood alone, not the posterior.
- `RePaint(jumps)`: replacement, then `jumps` times re-noise `x` from `t_{i+1}` back to `t_i` with the forward
  transition and redo the step (Lugmayr et al. 2022). Less biased as `jumps` grows; `(1 + jumps)×` the NFE.
- `DPS(scale)`: the score plus `scale · ∇ₓ log N(y; A x̂₀(x, t), (σ_y² + σ̃²) I)`, `x̂₀` Tweedie's denoiser and
  `σ̃ = σ/m` the noise level, the Jacobian of `x̂₀` taken by autograd (Chung et al. 2023, in its Gaussian form;
  the noise level keeps a noise-free observation finite). One VJP per NFE.
- `PiGDM(scale)`: the score plus `scale · J_x̂₀ᵀ Aᵀ (r² A Aᵀ + σ_y² I)⁻¹ (y - A x̂₀)`, `r² = σ̃²/(1 + σ̃²)`
  (Song et al. 2023, ΠGDM). One VJP per NFE.
- `SMC(ess_threshold)`: sequential Monte Carlo over the batch as particles, twisted by ΠGDM's Gaussian
  `p̃_t(y | x) = N(y; A x̂₀, r² A Aᵀ + σ_y² I)` (the twisted diffusion sampler of Wu et al. 2023): each step
  proposes from the guided reverse kernel, weights by `p(x' | x) p̃_{t'}(y | x') / (q(x' | x, y) p̃_t(y | x))`
  with the exact Gaussian kernels of the affine step, and resamples (systematic) when the effective sample size
  falls below `ess_threshold × particles`. As `p̃_eps → p(y | x₀)`, it targets the exact posterior as the number
  of particles grows. Correctors (in `pc`) run as Langevin moves on the twisted target. One VJP per NFE.

With a noise-free observation `sample` ends with the projection onto `{A x = y}`, so the returned samples
equal the observation exactly on the observed entries.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._utils import append_dims, check_int, check_number, flat_sum
from .observation import BoundObservation
from .samplers.base import StepHook
from .samplers.pc import PCSampler
from .samplers.predictors import AffineStep, batch_times

__all__ = ["Method", "Replacement", "RePaint", "DPS", "PiGDM", "SMC", "METHODS", "resolve"]


class Method(StepHook):
    """A conditioning method: a `StepHook` bound to one observation by `sample`. Subclasses say which samplers
    they work with (`supports`) and act through `guide` (the score), `step`/`after_step` (the loop) or both."""

    name: ClassVar[str] = ""
    obs: Optional[BoundObservation] = None

    def bind(self, obs: BoundObservation, sde) -> "Method":
        """A copy of this method for one call (the user's object is left as it was)."""
        bound = copy.copy(self)
        bound.obs, bound.sde = obs, sde
        return bound

    def supports(self, sampler) -> Optional[str]:
        """None if this method works with `sampler`, else the reason it does not."""
        if sampler.whole:
            return "it acts after every step, and this sampler solves in one call"
        if not sampler.stochastic:
            return "it needs a stochastic sampler (euler_maruyama, reverse_diffusion, pc)"
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("obs", "sde") and not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


# -- replacement and RePaint -----------------------------------------------------------------------


class _Grid(NamedTuple):
    m: List[float]
    sigma: List[float]


def _flat_apply(fn, x: Tensor, *args) -> Tensor:
    return fn(x.flatten(1), *args).reshape(x.shape)


class Replacement(Method):
    """Song et al. 2021, App. I: after each step to `t`, `x ← x + A⁺ (m(t) y + σ(t) A z - A x)`. 0 extra NFE."""

    name = "replacement"

    def init(self, sde, score_fn, ts, schedule, x, noise):
        return _Grid(schedule.m.tolist(), schedule.sigma.tolist())

    def replace(self, x: Tensor, k: int, grid: _Grid, noise) -> Tensor:
        """Set the observed part of `x` at grid point `k` to the forward-noised observation."""
        y_t = self.obs.noised(grid.m[k], grid.sigma[k], noise.fresh().flatten(1), noise.generator)
        return _flat_apply(self.obs.project, x, y_t)

    def after_step(self, score_fn, x, i, state, sampler, sampler_state, noise):
        return self.replace(x, i + 1, state, noise), sampler_state, state


class _FreshNoise:
    """The loop's noise with every draw independent: a redone step must not reuse the step's Brownian increment."""

    def __init__(self, noise):
        self._noise, self.generator = noise, noise.generator

    def fresh(self) -> Tensor:
        return self._noise.fresh()

    def __call__(self, i: int) -> Tensor:
        return self._noise.fresh()


class RePaint(Replacement):
    """Lugmayr et al. 2022: replacement, then `jumps` times: re-noise from `t_{i+1}` to `t_i` by the forward
    transition `x ← (m_i/m_{i+1}) x + √(σ_i² - (m_i/m_{i+1})² σ_{i+1}²) z`, redo the step, replace again.
    `(1 + jumps)×` the sampler's NFE; `jumps=0` is replacement."""

    name = "repaint"

    def __init__(self, jumps: int = 10):
        self.jumps = check_int(jumps, "jumps", minimum=0)

    def supports(self, sampler):
        why = super().supports(sampler)
        if why is None and not isinstance(sampler, (AffineStep, PCSampler)):
            return "it redoes steps, which needs a sampler whose step keeps no state (euler_maruyama, reverse_diffusion, pc)"
        return why

    def step(self, score_fn, x, i, state, sampler, sampler_state, noise):
        before = sampler_state  # the states of these samplers are per-call tables: a step can be redone
        x, sampler_state = sampler.step(score_fn, x, i, sampler_state, noise)
        x = self.replace(x, i + 1, state, noise)
        m, s = state.m, state.sigma
        r = m[i] / m[i + 1]
        G = math.sqrt(max(s[i] ** 2 - (r * s[i + 1]) ** 2, 0.0))
        fresh = _FreshNoise(noise)
        for _ in range(self.jumps):
            x = torch.add(x * r, noise.fresh(), alpha=G)
            x, sampler_state = sampler.step(score_fn, x, i, before, fresh)
            x = self.replace(x, i + 1, state, noise)
        return x, sampler_state, state


# -- the Tweedie-guided methods: DPS, ΠGDM, and SMC's twist ------------------------------------------


def _no_history(name: str) -> TypeError:
    return TypeError(f"conditioning {name!r} differentiates score_fn through Tweedie's x̂₀, but score_fn returned a "
                     "tensor with no autograd history (it must not detach its output or run under torch.no_grad)")


class _Twisted(Method):
    """A method built on `log p̃_t(y | x) = -½ (y - A x̂₀)ᵀ C_t⁻¹ (y - A x̂₀)` and its gradient through `x̂₀`."""

    scale: float = 1.0

    def r2(self, sched) -> Tensor:
        """The variance term `C_t` is built from (per sample, `(B,)`)."""
        nl2 = (sched.sigma / sched.m) ** 2
        return nl2 / (1 + nl2)

    def solve(self, res: Tensor, sched) -> Tensor:
        """`C_t⁻¹ (y - A x̂₀)`: ΠGDM's `(r² A Aᵀ + σ_y² I)⁻¹`."""
        return self.obs.cov_solve(res, self.r2(sched))

    def evaluate(self, score_fn, x: Tensor, t: Tensor, residual: bool = False):
        """`(s(x, t), log p̃_t(y | x), ∇ₓ log p̃_t(y | x))` (and `y - A x̂₀` if `residual`): one score evaluation
        and one VJP."""
        sched = self.sde._schedule(t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = score_fn(xg, t)
            if not s.requires_grad:
                raise _no_history(self.name)
            res = self.obs.residual(sched.x0_from_score(xg, s).flatten(1))
            logp = -0.5 * (res * self.solve(res, sched)).sum(1)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        if residual:
            return s.detach(), logp.detach(), grad, res.detach(), sched
        return s.detach(), logp.detach(), grad

    def guide(self, score_fn):
        scale = self.scale

        def guided(x: Tensor, t: Tensor) -> Tensor:
            s, _, grad, res, sched = self.evaluate(score_fn, x, t, residual=True)
            return s + self.capped(grad * scale, res, sched)

        return guided

    def capped(self, g: Tensor, res: Tensor, sched) -> Tensor:
        """`g`, scaled down per sample where it would move `A x̂₀` by more than the residual `y - A x̂₀`.

        A guided score moves Tweedie's x̂₀ by `(σ²/m) g`; a Bayesian update never moves `A x̂₀` further than the
        residual, and with an exact score the guidance stays within it. A trained network's x̂₀ Jacobian,
        `(I + σ² ∇s)/m`, multiplies its error by `1/m` at large t and overshoots by orders of magnitude (ΠGDM on
        a 2000-step ring model, or on 1.1 × the exact score: |x| ~ 1e5-1e9 without the cap)."""
        shift = self.obs.apply(g.flatten(1) * append_dims(sched.sigma**2 / sched.m, 2))
        ratio = res.norm(dim=1) / shift.norm(dim=1).clamp_min(torch.finfo(res.dtype).tiny)
        return g * append_dims(ratio.clamp(max=1.0), g.ndim)

    def supports(self, sampler):
        return None  # a guided score works with every sampler, deterministic ones included


class DPS(_Twisted):
    """Chung et al. 2023 in score form: `s + scale · ∇ₓ log N(y; A x̂₀(x, t), (σ_y² + σ̃²) I)`, `σ̃ = σ/m`."""

    name = "dps"

    def __init__(self, scale: float = 1.0):
        self.scale = check_number(scale, "scale", lo=0.0)

    def solve(self, res, sched):
        nl2 = (sched.sigma / sched.m) ** 2
        return res / (self.obs.noise_std**2 + nl2)[:, None]


class PiGDM(_Twisted):
    """Song et al. 2023: `s + scale · J_x̂₀ᵀ Aᵀ (r² A Aᵀ + σ_y² I)⁻¹ (y - A x̂₀)`, `r² = σ̃²/(1 + σ̃²)`."""

    name = "pigdm"

    def __init__(self, scale: float = 1.0):
        self.scale = check_number(scale, "scale", lo=0.0)


class _SMCState(NamedTuple):
    times: List[Tensor]
    logw: Optional[Tensor]
    cache: Optional[Tuple[Tensor, Tensor, Tensor]]  # (s, log p̃, ∇ log p̃) at the current particles
    ess: List[Tensor]
    resampled: List[Tensor]
    generator: Optional[torch.Generator]
    arange: Tensor  # 0..N-1 on the particles' device, made once per call
    grid: Any  # noisy: (J_k, r_k²) per grid point, for the proposal's curvature; noise-free: the observed trajectory


class _Fixed:
    """A score function that returns a value already computed at the point it is called at."""

    def __init__(self, value: Tensor):
        self.value = value

    def __call__(self, x, t):
        return self.value


def _systematic(w: Tensor, u: Tensor, arange: Tensor) -> Tensor:
    """Systematic resampling: indices `i_k = F⁻¹((k + u)/N)` of the normalised weights' CDF `F`."""
    N = w.shape[0]
    cdf = w.cumsum(0)
    return torch.searchsorted(cdf, ((arange + u) / N).clamp_max(cdf[-1])).clamp_max_(N - 1)


class SMC(PiGDM):
    """Sequential Monte Carlo over the batch as particles, sharing one observation; resamples (systematic) when
    the ESS falls below `ess_threshold · N`, and once at the end so the output is equally weighted.

    - Noisy observations: the twisted diffusion sampler (Wu et al. 2023, TDS) with twist
      `p̃_t(y|x) = N(y; A x̂₀, r² A Aᵀ + σ_y² I)` and the locally optimal Gaussian proposal (`_propose`). One
      score evaluation with one VJP per step (plus one at the start).
    - Noise-free observations: the observed coordinates `Wᵀ x` (the row space of `A`; the masked entries for
      inpainting) follow one forward-noised trajectory of the observation, shared by all particles, and the
      rest is proposed from the reverse kernel and weighted by that kernel's density of the trajectory's next
      point (SMCDiff, Trippe et al. 2023). Given `y₀`, the trajectory is pure noise, so the target is the exact
      posterior up to the kernels' error. One score evaluation per step, no VJP.

    `stats["ess"]` is the ESS before each step's resampling, `stats["resampled"]` how many steps resampled."""

    name = "smc"

    def __init__(self, ess_threshold: float = 0.5):
        self.ess_threshold = check_number(ess_threshold, "ess_threshold", lo=0.0, hi=1.0)
        self.scale = 1.0

    def supports(self, sampler):
        pred = sampler.predictor if isinstance(sampler, PCSampler) else sampler
        if sampler.whole or not isinstance(pred, AffineStep):
            return ("it weights each step by the exact Gaussian kernels of an affine reverse step "
                    "(euler_maruyama, reverse_diffusion, pc with either predictor)")
        return None

    def guide(self, score_fn):
        return score_fn

    def evaluate(self, score_fn, x, t, residual: bool = False):
        # the proposal's guidance capped as ΠGDM's (the weights are exact for any proposal)
        s, logp, grad, res, sched = super().evaluate(score_fn, x, t, residual=True)
        return s, logp, self.capped(grad, res, sched)

    def init(self, sde, score_fn, ts, schedule, x, noise):
        if self.obs.y.shape[0] != 1:
            raise ValueError("conditioning 'smc' treats the batch as particles of one posterior: the observation "
                             "must be shared by the batch (y of shape (M,), x_known shaped like one sample)")
        grid = self._trajectory(schedule, noise.generator) if self.obs.noise_std == 0 else self._grid(schedule)
        keep = torch.arange(x.shape[0], device=x.device)
        return _SMCState(batch_times(ts, x.shape[0]), None, None, [], [], noise.generator, keep, grid)

    def _trajectory(self, schedule, generator) -> List[Tensor]:
        """One forward trajectory of the observed coordinates on the grid, from `y₀` at 0 up to `T`:
        `c_N = m_N c₀ + σ_N ζ`, then `c_k = (m_k/m_{k+1}) c_{k+1} + √(σ_k² - (m_k/m_{k+1})² σ_{k+1}²) ζ_k`."""
        c0 = self.obs.observed_coords()
        m, s = schedule.m.tolist(), schedule.sigma.tolist()
        N = len(m) - 1
        out: List[Tensor] = [c0] * (N + 1)
        z = lambda: torch.randn(c0.shape, generator=generator, device=c0.device, dtype=c0.dtype)  # noqa: E731
        out[N] = c0 * m[N] + z() * s[N]
        for k in range(N - 1, -1, -1):
            r = m[k] / m[k + 1]
            out[k] = out[k + 1] * r + z() * math.sqrt(max(s[k] ** 2 - (r * s[k + 1]) ** 2, 0.0))
        W, _ = self.obs.gram()
        return [v * self.obs.mask if W is None else v for v in out]

    def _grid(self, schedule):
        """Per grid point, the Jacobian `J = m/(m² + σ²)` of `x̂₀` for unit-variance data (the model behind
        `r²`) and `r²`: with them the twist's Hessian in `x` is `H = J² Aᵀ (r² A Aᵀ + σ_y² I)⁻¹ A`."""
        m, s2 = schedule.m, schedule.sigma**2
        return (m / (m * m + s2)).tolist(), self.r2(schedule).tolist()

    def step(self, score_fn, x, i, state, sampler, sampler_state, noise):
        if isinstance(sampler, PCSampler):
            pred, (p_state, c_state), k = sampler.predictor, sampler_state, sampler.corrector_steps
        else:
            pred, p_state, c_state, k = sampler, sampler_state, None, 0
        if p_state.coefs is None:
            raise TypeError("conditioning 'smc' needs a LinearSDE (its reverse step is then an affine Gaussian kernel)")
        if self.obs.noise_std == 0:
            x, logw = self._step_noise_free(score_fn, x, i, state, sampler, p_state, c_state, k, noise)
            sampler_state = (p_state, c_state) if isinstance(sampler, PCSampler) else p_state
            return x, sampler_state, state._replace(logw=logw)
        times, logw, cache = state.times, state.logw, state.cache
        if cache is None:  # the first step: the twisted target at T is p_T(x) p̃_T(y | x), so w = p̃_T
            cache = self.evaluate(score_fn, x, times[i])
            logw = cache[1]
        for _ in range(k):  # Langevin moves on the twisted target p_t p̃_t: they leave it invariant, no reweighting
            s, _, grad = cache
            x = sampler.corrector.step(_Fixed(s + grad), x, i, c_state, noise.fresh())
            cache = self.evaluate(score_fn, x, times[i])
        s, logp, grad = cache
        a, b, c = (v[i] for v in p_state.coefs)
        x_new, log_ratio = self._propose(x, s, grad, a, b, c, noise(i), *(g[i + 1] for g in state.grid))
        new = self.evaluate(score_fn, x_new, times[i + 1])
        logw = logw + log_ratio + new[1] - logp
        logw, x_new, new = self._maybe_resample(logw, x_new, new, state)
        sampler_state = (p_state, c_state) if isinstance(sampler, PCSampler) else p_state
        return x_new, sampler_state, state._replace(logw=logw, cache=new)

    def _step_noise_free(self, score_fn, x, i, state, sampler, p_state, c_state, k, noise):
        obs, traj, shape, t = self.obs, state.grid, x.shape, state.times[i]
        flat = lambda v: v.flatten(1)  # noqa: E731
        logw = state.logw
        if logw is None:  # at T the observed coordinates start on the trajectory; the prior weights all equally
            x = obs.set_coords(flat(x), traj[0]).reshape(shape)
            logw = torch.zeros(shape[0], device=x.device, dtype=x.dtype)
        for _ in range(k):  # Langevin on the unobserved part at fixed observed coordinates: p_t(x | Wᵀx) invariant
            x = sampler.corrector.step(score_fn, x, i, c_state, noise.fresh())
            x = obs.set_coords(flat(x), traj[i]).reshape(shape)
        a, b, c = (v[i] for v in p_state.coefs)
        mu = torch.add(flat(x) * a, flat(score_fn(x, t)), alpha=b)
        x_new = mu + c * flat(noise(i))
        if c > 0:  # the reverse kernel's density of the trajectory's next point (terms equal for all particles left out)
            gap = traj[i + 1] - obs.coords(mu)
            logw = logw - (gap * gap).sum(1) / (2 * c * c)
        x_new = obs.set_coords(x_new, traj[i + 1]).reshape(shape)
        logw, x_new, _ = self._maybe_resample(logw, x_new, None, state)
        return x_new, logw

    def _propose(self, x, s, grad, a, b, c, z, J, r2):
        """A draw from the locally optimal Gaussian proposal and `log p(x'|x) - log q(x'|x, y)` per particle.

        The reverse kernel `p = N(μ, c²)`, `μ = a x + b s`, times the twist linearised at `x`,
        `exp(∇ᵀ(x' - x) - ½ (x' - x)ᵀ H (x' - x))`, is the Gaussian `q = N(μ + P⁻¹ (∇ + H (x - μ)), P⁻¹)` with
        `P = I/c² + H`: the guided kernel of TDS where the twist is flat, and one that cannot overshoot where it
        is sharper than the step (small t, a noise-free observation). The weights are exact whatever `q` is;
        terms equal for every particle (log-determinants) are left out."""
        shape = x.shape
        xf, sf, gf, zf = x.flatten(1), s.flatten(1), grad.flatten(1), z.flatten(1)
        mu = torch.add(xf * a, sf, alpha=b)
        if c == 0:
            return mu.reshape(shape), 0.0
        obs = self.obs
        _, d = obs.gram()
        h = (J * J) * d / (r2 * d + obs.noise_std**2).clamp_min(torch.finfo(d.dtype).tiny)
        rho = (c * c) * h / (1 + (c * c) * h)
        v = gf + obs.gram_apply(xf - mu, h)
        delta = (c * c) * (v - obs.gram_apply(v, rho))
        step = zf - obs.gram_apply(zf, 1 - (1 - rho).sqrt())
        x_new = mu + delta + c * step
        log_ratio = (zf.square().mul_(0.5) - (x_new - mu).square_().mul_(0.5 / (c * c))).sum(1)
        return x_new.reshape(shape), log_ratio

    def _maybe_resample(self, logw, x, cache, state, force: bool = False):
        N = logw.shape[0]
        w = torch.softmax(logw, 0)
        ess = w.square().sum().reciprocal()
        state.ess.append(ess)
        flag = torch.ones((), dtype=torch.bool, device=x.device) if force else ess < self.ess_threshold * N
        state.resampled.append(flag)
        u = torch.rand((), generator=state.generator, device=x.device, dtype=logw.dtype)
        keep = state.arange
        idx = torch.where(flag, _systematic(w, u, keep.to(w.dtype)), keep)  # no host sync: a where, not an if
        x = x.index_select(0, idx)
        cache = tuple(v.index_select(0, idx) for v in cache) if cache is not None else None
        logw = logw.masked_fill(flag, 0.0)
        return logw, x, cache

    def finish(self, x, state, stats):
        if state is not None and state.logw is not None:
            # the output is an equally weighted sample: resample by the final weights once more
            _, x, _ = self._maybe_resample(state.logw, x, state.cache, state, force=True)
            state.ess.pop()
            state.resampled.pop()
        if stats is not None and state is not None:
            stats["ess"] = torch.stack(state.ess).cpu() if state.ess else torch.empty(0)
            stats["resampled"] = int(torch.stack(state.resampled).sum()) if state.resampled else 0
        return x


METHODS = {"replacement": Replacement, "repaint": RePaint, "dps": DPS, "pigdm": PiGDM, "smc": SMC}


def resolve(conditioning, sampler) -> Method:
    """The method object for `conditioning` (a name, a `Method`, or None: SMC where the sampler allows it, else
    ΠGDM), checked against `sampler`."""
    if conditioning is None:
        method: Method = SMC() if SMC().supports(sampler) is None else PiGDM()
    elif isinstance(conditioning, str):
        if conditioning not in METHODS:
            raise ValueError(f"conditioning must be one of {', '.join(METHODS)} or a scoresde.conditioning method, got {conditioning!r}")
        method = METHODS[conditioning]()
    elif isinstance(conditioning, Method):
        method = conditioning
    else:
        raise TypeError(f"conditioning must be a name ({', '.join(METHODS)}), a conditioning method or a StepHook, "
                        f"got {type(conditioning).__name__}")
    why = method.supports(sampler)
    if why is not None:
        raise ValueError(f"conditioning {method.name!r} does not work with sampler {sampler!r}: {why}")
    return method
