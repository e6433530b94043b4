"""The LET alignment loss and the width matching between teacher and student.

Pure tensor functions, usable without a Trainer::

    h_t = standardize_features(h_teacher, mask)                        # teacher_norm: standardize
    h_t = resize_width(h_t, h_student.shape[-1], 'interpolate')         # or 'pool'
    loss, mean_cos = alignment_loss(h_student, h_t, mask, kind='cosine')
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ('cosine', 'mse', 'smooth_l1')
PROJECTIONS = ('interpolate', 'pool', 'linear', 'none')
RESIZES = ('interpolate', 'pool')
TEACHER_NORMS = ('none', 'standardize')
_EPS = 1e-6


def standardize_features(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each feature of ``hidden`` (``(batch, seq, d)``) minus its mean, over its standard deviation,
    both taken over the real tokens of this batch (``mask`` true/1; ``None``: every token).

    A pretrained LM's late hidden states share a large common direction and a few outlier features
    (SmolLM2-135M's final state: tokens' mean pairwise cosine 0.47, 5 of 576 features 55% of the
    energy; its middle layer 99%), which a cosine target then mostly rewards. Standardized, every
    feature counts alike and only what varies between tokens is left to align to. Computed in fp32;
    padding is neither counted nor changed in a way that matters (masked out of the loss).
    """
    hidden = hidden.float()
    weights = torch.ones(hidden.shape[:-1], device=hidden.device) if mask is None else mask.to(hidden.dtype)
    weights = weights[..., None]
    count = weights.sum().clamp_min(1.0)
    mean = (hidden * weights).sum(dim=(0, 1)) / count
    centered = hidden - mean
    std = ((centered.pow(2) * weights).sum(dim=(0, 1)) / count).sqrt()
    return centered / (std + _EPS)


def interpolate_width(hidden: torch.Tensor, width: int) -> torch.Tensor:
    """Resize the last dimension of ``hidden`` to ``width`` by 1-D linear interpolation.

    This is the LET paper's parameter-free width matching: each token's teacher
    vector is treated as a 1-D signal and resampled (corners aligned, so the first
    and last features map onto each other). Equal widths return ``hidden`` as is.
    """
    if hidden.shape[-1] == width:
        return hidden
    flat = hidden.reshape(-1, 1, hidden.shape[-1])
    resized = F.interpolate(flat, size=width, mode='linear', align_corners=True)
    return resized.reshape(*hidden.shape[:-1], width)


def pool_width(hidden: torch.Tensor, width: int) -> torch.Tensor:
    """Shrink the last dimension of ``hidden`` to ``width`` by adaptive average pooling (anti-aliased).

    Each output feature is the mean of the ~``d_T / width`` teacher features it covers, so every
    teacher feature counts; ``interpolate`` with ``d_T > width`` reads only two features per output
    and ignores the rest (576 -> 128: at most 256 of 576). Widening (``d_T < width``) has nothing to
    average and is the same linear interpolation as :func:`interpolate_width`.
    """
    if hidden.shape[-1] <= width:
        return interpolate_width(hidden, width)
    flat = hidden.reshape(-1, 1, hidden.shape[-1])
    return F.adaptive_avg_pool1d(flat, width).reshape(*hidden.shape[:-1], width)


def resize_width(hidden: torch.Tensor, width: int, mode: str) -> torch.Tensor:
    """Parameter-free width matching: ``interpolate`` (the paper) or ``pool`` (anti-aliased when shrinking)."""
    if mode == 'interpolate':
        return interpolate_width(hidden, width)
    if mode == 'pool':
        return pool_width(hidden, width)
    raise ValueError(f'resize mode={mode!r} is not one of {RESIZES}.')


def alignment_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = 'cosine',
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss, mean_cosine)`` between per-token student and teacher vectors.

    Args:
        student: ``(batch, seq, d)`` student hidden states (carries the gradient).
        teacher: ``(batch, seq, d)`` teacher hidden states (no gradient needed).
        mask: ``(batch, seq)``, true/1 for real tokens; padding is left out of
            every mean. ``None`` means every token is real.
        kind: ``cosine`` (the paper): ``-mean cos(h_S, h_T)``, -1 at perfect
            alignment; ``mse``: mean over tokens of ``||ĥ_S - ĥ_T||²`` on the
            L2-normalised vectors (= ``2 - 2 cos``); ``smooth_l1``: smooth-L1
            between the two after a parameter-free LayerNorm.

    Both sides are computed in fp32. Zero vectors give cosine 0, never NaN. A
    mask with no real token gives a zero loss that still back-propagates (zeros).
    """
    if kind not in LOSSES:
        raise ValueError(f'loss={kind!r} is not one of {LOSSES}.')
    if student.shape != teacher.shape:
        raise ValueError(
            f'student {tuple(student.shape)} and teacher {tuple(teacher.shape)} hidden states '
            'differ in shape; resize the teacher (interpolate_width) or project the student first.',
        )
    student = student.float()
    teacher = teacher.detach().float()
    student_unit = F.normalize(student, dim=-1, eps=_EPS)
    teacher_unit = F.normalize(teacher, dim=-1, eps=_EPS)
    cos = (student_unit * teacher_unit).sum(-1)
    if kind == 'cosine':
        per_token = -cos
    elif kind == 'mse':
        per_token = (student_unit - teacher_unit).pow(2).sum(-1)
    else:
        width = student.shape[-1]
        per_token = F.smooth_l1_loss(
            F.layer_norm(student, (width,)),
            F.layer_norm(teacher, (width,)),
            reduction='none',
        ).mean(-1)
    weights = torch.ones_like(cos) if mask is None else mask.to(cos.dtype)
    count = weights.sum().clamp_min(1.0)
    loss = (per_token * weights).sum() / count
    mean_cos = (cos.detach() * weights).sum() / count
    return loss, mean_cos
