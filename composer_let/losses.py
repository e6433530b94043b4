"""How the algorithms add their terms to the model's loss, kept as a dict with ``total``.

Composer back-propagates ``state.loss['total']`` and logs every key as
``loss/train/<key>``. The model's own loss (a tensor) becomes ``ce``; a model that
already returns a dict (MPT with MoE: ``total``, ``loss``, ``lbl``) keeps its keys.
The functions commute, so ``let`` and ``salt`` may run in either order::

    loss = with_extra_loss(loss, 'let_align', align, lam)     # total += λ · align
    loss = with_mixed_loss(loss, 'salt_kd', kd, omega)        # total += ω · (kd − ce)
"""

from __future__ import annotations

from typing import Any

import torch

_CE_KEYS = ('ce', 'loss')


def loss_dict(loss: Any) -> dict[str, torch.Tensor]:
    """A new dict with ``total``: ``{'ce': loss, 'total': loss}`` for a tensor, a copy for a dict."""
    if isinstance(loss, dict):
        if 'total' not in loss:
            raise ValueError(f'The model loss dict has no "total" ({", ".join(loss)}); the algorithms add to "total".')
        return dict(loss)
    if isinstance(loss, torch.Tensor):
        return {'ce': loss, 'total': loss}
    raise ValueError(f'The model loss must be a tensor or a dict with "total", got {type(loss).__name__}.')


def with_extra_loss(loss: Any, key: str, value: torch.Tensor, weight: float) -> dict[str, torch.Tensor]:
    """``loss`` as a dict with ``total``, plus ``key: value`` and ``weight · value`` added to the total."""
    out = loss_dict(loss)
    out[key] = value
    out['total'] = out['total'] + weight * value
    return out


def with_mixed_loss(loss: Any, key: str, value: torch.Tensor, weight: float) -> dict[str, torch.Tensor]:
    """Replace the model's CE share of the total by ``(1 − weight) · CE + weight · value``.

    Other terms already in the total (say LET's ``λ · align``) are untouched. The CE is
    the model's own loss: the tensor it returned (``ce``) or the ``loss`` entry of its dict.
    """
    out = loss_dict(loss)
    ce = next((out[k] for k in _CE_KEYS if k in out), None)
    if ce is None:
        raise ValueError(f'The model loss dict has no cross-entropy entry ({", ".join(_CE_KEYS)}) to mix {key} with.')
    out[key] = value
    out['total'] = out['total'] + weight * (value - ce)
    return out
