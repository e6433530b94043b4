"""What the teacher's pull does at the hooked student block, measured inside the ordinary backward pass.

Two pure pieces, no Trainer needed::

    probe = GradientProbe()
    h_align = probe.watch(h)            # h: the hooked block's output; align on h_align, train on h
    (ce + lam * alignment(h_align)).backward()
    ratio, cos = gradient_stats(probe.take())  # ‖λ·∇_h L_align‖ / ‖∇_h L_rest‖ and their cosine

    rows, targets = sampled_positions(labels, n=256, offset=step)
    nll = token_nll(logits_rows, targets)        # per sampled position, NaN-free, masked by targets >= 0

``L_rest`` is everything else the student is trained on at ``h`` (the CE, plus SALT's KD when it is
on). The probe costs three dot products over ``h`` per microbatch and no extra backward pass: the
alignment branch passes through an identity whose backward keeps its gradient, and a hook on ``h``
sees the sum of both branches, so the rest is the difference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _KeepGradient(torch.autograd.Function):
    """Identity whose backward hands its incoming gradient to ``probe`` before passing it on."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, probe: GradientProbe) -> torch.Tensor:  # type: ignore[override]
        ctx.probe = probe
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.probe._align_grads.append(grad)
        return grad, None


class GradientProbe:
    """Accumulates ``[‖g_rest‖², ‖g_align‖², <g_rest, g_align>]`` over microbatches, on the device.

    ``g_align`` is the gradient the alignment term sends into ``h`` (λ included), ``g_rest`` the
    gradient from everything else. Sums over microbatches (Composer scales every term of a
    microbatch's loss alike, so ratios and cosines are those of the whole batch) and, after
    :meth:`take` and an all-reduce by the caller, over ranks.
    """

    def __init__(self) -> None:
        self._align_grads: list[torch.Tensor] = []
        self._sums: torch.Tensor | None = None

    def watch(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the tensor to compute the alignment on; ``hidden`` itself flows on unchanged."""
        if not hidden.requires_grad:
            return hidden
        hidden.register_hook(self._on_total)
        return _KeepGradient.apply(hidden, self)

    def _on_total(self, total: torch.Tensor) -> None:
        align = self._align_grads.pop() if self._align_grads else torch.zeros_like(total)
        total, align = total.detach().float(), align.detach().float()
        rest = total - align
        sums = torch.stack([(rest * rest).sum(), (align * align).sum(), (rest * align).sum()])
        self._sums = sums if self._sums is None else self._sums + sums

    def take(self) -> torch.Tensor | None:
        """The sums since the last call (``None`` if no backward reached ``h``), and reset."""
        sums, self._sums = self._sums, None
        self._align_grads.clear()
        return sums


def gradient_stats(sums: list[float] | torch.Tensor) -> tuple[float, float]:
    """``(ratio, cos)`` from ``[‖g_rest‖², ‖g_align‖², <g_rest, g_align>]``.

    ``ratio = ‖g_align‖ / ‖g_rest‖`` (``inf`` with no rest gradient, 0 without alignment);
    ``cos`` is NaN when either gradient is zero.
    """
    rest2, align2, dot = (float(v) for v in sums)
    rest, align = math.sqrt(max(rest2, 0.0)), math.sqrt(max(align2, 0.0))
    ratio = align / rest if rest > 0 else (math.inf if align > 0 else 0.0)
    cos = dot / (rest * align) if rest > 0 and align > 0 else math.nan
    return ratio, cos


def sampled_positions(labels: torch.Tensor, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` evenly spaced positions of the flattened ``(batch, seq)`` grid and their next-token targets.

    ``rows`` index the flattened logits (row ``b·seq + t`` predicts ``labels[b, t + 1]``); ``targets``
    is ``-100`` where that label is ignored (padding) and at each sequence's last position. The grid
    shifts with ``offset`` (pass the batch number: deterministic, resumable, draws no random numbers).
    No host synchronisation: ignored positions stay in and are masked by :func:`token_nll`.
    """
    batch, seq = labels.shape
    total = batch * seq
    n = max(1, min(n, total))
    stride = total // n
    rows = torch.arange(n, device=labels.device) * stride + (offset % stride)
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return rows, shifted.reshape(-1)[rows]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log p(target), count)`` over rows of ``logits`` whose target is not ``-100``, in fp32."""
    valid = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits.float(), targets.clamp_min(0), reduction='none')
    return (nll * valid).sum(), valid.sum().float()
