"""Guidance: a conditional score `score_fn(x, t, y)` (or a score plus a classifier) turned into a plain
`score_fn(x, t)` that every sampler and `log_likelihood` take.

- classifier-free (Ho & Salimans 2022): `s̃ = s(x, t | y) + w (s(x, t | y) - s(x, t | ∅))`; `w = 0` is the
  conditional score itself.
- classifier (Dhariwal & Nichol 2021; Song et al. 2021 §5): `s̃ = s(x, t) + w ∇ₓ log p_t(y | x)`; `w = 1` is
  Bayes' rule, `∇ log p_t(x | y)`, exactly.

Labels `y` are a `(B,)` long tensor (or one int for the whole batch). One call of the guided function is one
NFE to the samplers' counters; classifier-free guidance with `w ≠ 0` evaluates the model twice per call (in one
batched call for a class-conditional `ScoreModel`), classifier guidance once plus one classifier gradient.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ._utils import check_callable, check_number

__all__ = ["classifier_free", "classifier", "check_labels"]

Labels = Union[int, Tensor]


def check_labels(y: object, name: str = "y", num_classes: Optional[int] = None) -> Tensor:
    """`y` as a 1-D long tensor (an int becomes a 0-d tensor, broadcast to the batch later), in `[0, num_classes)`
    when that is known. One host sync, at the public boundary."""
    if isinstance(y, bool):
        raise TypeError(f"{name} must be an int or a long tensor of class labels, got bool")
    if isinstance(y, int):
        y = torch.tensor(y)
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be an int or a long tensor of class labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim > 1:
        raise ValueError(f"{name} must be an int or have shape (B,), got {tuple(y.shape)}")
    y = y.long()
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            where = f"[0, {num_classes})" if num_classes is not None else "[0, ∞)"
            raise ValueError(f"{name} holds labels in [{lo}, {hi}], outside {where}")
    return y


def _num_classes(score_fn) -> Optional[int]:
    """The number of classes of a `ScoreModel` (0 for an unconditional one), or None for other callables."""
    n = getattr(score_fn, "num_classes", None)
    return n() if callable(n) else n


def _batch_labels(y: Tensor, x: Tensor) -> Tensor:
    if y.ndim == 0:
        return y.to(x.device).expand(x.shape[0])
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but the batch has {x.shape[0]} samples")
    return y if y.device == x.device else y.to(x.device)


def classifier_free(score_fn: Callable, y: Labels, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """`s̃(x, t) = s(x, t, y) + scale · (s(x, t, y) - s(x, t, None))`; `scale = 0` is the conditional score.

    `score_fn(x, t, y)` takes `y=None` for the unconditional score (a class-conditional `ScoreModel`, trained with
    label dropout to the null label, does)."""
    check_callable(score_fn, "score_fn")
    w = check_number(scale, "scale")
    n = _num_classes(score_fn)
    if n == 0:
        raise ValueError("score_fn is an unconditional model (trained without labels): it cannot be guided by y; "
                         "train with class_conditional=True")
    y = check_labels(y, "y", n)
    null = n if n else None  # one batched call with the null label, for a conditional ScoreModel

    def guided(x: Tensor, t: Tensor) -> Tensor:
        labels = _batch_labels(y, x)
        if w == 0:
            return score_fn(x, t, labels)
        if null is not None:
            B = x.shape[0]
            tt = t.expand(B) if isinstance(t, Tensor) and t.ndim == 0 else t
            tt = torch.cat([tt, tt]) if isinstance(tt, Tensor) else tt
            both = score_fn(torch.cat([x, x]), tt, torch.cat([labels, torch.full_like(labels, null)]))
            cond, uncond = both[:B], both[B:]
        else:
            cond, uncond = score_fn(x, t, labels), score_fn(x, t, None)
        return torch.add(cond, cond - uncond, alpha=w)

    return guided


def classifier(score_fn: Callable[[Tensor, Tensor], Tensor], log_prob_fn: Callable[[Tensor, Tensor], Tensor],
               y: Labels, scale: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """`s̃(x, t) = s(x, t) + scale · ∇ₓ log p_t(y | x)`; `scale = 1` is Bayes' rule.

    `log_prob_fn(x, t)` returns `(B, K)` log-probabilities or logits of a time-conditioned classifier (they are
    normalised with `log_softmax`, so either works); its gradient is taken by autograd, also under `no_grad`."""
    check_callable(score_fn, "score_fn")
    check_callable(log_prob_fn, "log_prob_fn")
    w = check_number(scale, "scale")
    n = _num_classes(log_prob_fn)
    y = check_labels(y, "y", n or None)
    checked = [n is not None and n > 0]

    def guided(x: Tensor, t: Tensor) -> Tensor:
        s = score_fn(x, t)
        if w == 0:
            return s
        labels = _batch_labels(y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = log_prob_fn(xg, t)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"log_prob_fn must return (B, K) log-probabilities, got {got}")
            if not checked[0]:  # once per guided function: the labels against the classifier's K (one sync)
                if int(labels.max()) >= logits.shape[1]:
                    raise ValueError(f"y holds a label >= K = {logits.shape[1]}, the classifier's number of classes")
                checked[0] = True
            logp = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        return torch.add(s, grad.to(s.dtype), alpha=w)

    return guided
