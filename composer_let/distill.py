"""SALT's soft-label distillation loss, computed chunk by chunk over tokens.

``KD = mean over CE positions of  −Σ_v p_T(v) · log p_S(v)``, with
``p_T = softmax(z_T / τ)`` (the teacher's temperature-softened next-token distribution)
and ``p_S = softmax(z_S)`` (the student's own, τ applies to the teacher only). This is
the forward KL ``KL(p_T ‖ p_S)`` plus the teacher's entropy, a constant for the student.

Positions are the ones llm-foundry's cross-entropy averages over: the logits at ``t``
predict ``labels[t + 1]``, and a position counts unless that label is ``-100`` (the
last position never counts). See :func:`next_token_mask`.

Vocabularies. The teacher's ``V_T`` logits are compared with the student's first
``V_T``; a student padded beyond (llm-foundry pads to a multiple of 64 or 128) keeps its
padded logits in its softmax, where the teacher puts probability 0, so the loss pushes
their mass to 0 exactly as CE does. A student narrower than the teacher is an error.

Memory. The teacher's LM head runs inside the loss, ``chunk_tokens`` rows at a time, so
its ``(tokens × V_T)`` logits never exist at once. The gradient with respect to the
student logits, ``(softmax(z_S) − p_T) / N``, is written per chunk into one buffer of the
logits' shape and dtype — the single extra ``(tokens × vocab)`` tensor — and returned by
the backward pass instead of keeping every chunk's softmax for autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100
# Config attributes of models whose forward rescales the LM head's logits (Gemma 2/3, Cohere, Granite).
_LOGIT_TRANSFORMS = ('final_logit_softcapping', 'logit_scale', 'logits_scaling')


def head_rescaling(config: Any) -> list[str]:
    """Config attributes by which a model's logits differ from ``lm_head(final hidden state)``.

    SALT and SALT_DS apply the teacher's LM head themselves, so such teachers are refused.
    """
    return [a for a in _LOGIT_TRANSFORMS if getattr(config, a, None) not in (None, 1, 1.0)]


def next_token_mask(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(batch, seq)`` bool: positions whose next-token target the causal-LM CE counts.

    llm-foundry's batches carry unshifted ``labels``; MPT (``get_targets``) and Hugging Face
    models (``ForCausalLMLoss``) both shift them so logits at ``t`` predict ``labels[t + 1]``
    and ignore ``-100`` targets and the last position.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """Mean soft-label cross-entropy from teacher to student over the ``mask`` positions.

    Args:
        student_logits: ``(batch, seq, V_S)``; the loss back-propagates into it.
        teacher_hidden: ``(batch, seq, d_T)``, the teacher's final-norm hidden states (no grad).
        teacher_head: maps ``(n, d_T)`` hidden states to ``(n, V_T)`` logits (the teacher's LM head).
        mask: ``(batch, seq)`` bool, e.g. :func:`next_token_mask`.
        temperature: τ > 0 of the teacher's softmax.
        chunk_tokens: rows per chunk; bounds the temporary ``(chunk × vocab)`` tensors.

    Returns a scalar in fp32, 0 (still attached to the graph) when the mask is empty.
    """
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature}.')
    if chunk_tokens < 1:
        raise ValueError(f'chunk_tokens must be >= 1, got {chunk_tokens}.')
    if student_logits.shape[:2] != teacher_hidden.shape[:2] or student_logits.shape[:2] != mask.shape:
        raise ValueError(
            f'Shapes disagree: student logits {tuple(student_logits.shape)}, teacher hidden '
            f'{tuple(teacher_hidden.shape)}, mask {tuple(mask.shape)}.',
        )
    rows = mask.reshape(-1).nonzero().squeeze(1)
    logits = student_logits.reshape(-1, student_logits.shape[-1])
    hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    return _SoftLabelCrossEntropy.apply(logits, hidden, rows, teacher_head, float(temperature), int(chunk_tokens))


def _softmax_(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim IN PLACE (no second (rows × vocab) tensor); also returns the logsumexp."""
    top = x.amax(-1, keepdim=True)
    x.sub_(top).exp_()
    norm = x.sum(-1, keepdim=True)
    x.div_(norm)
    return x, (top + norm.log()).squeeze(-1)


class _SoftLabelCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and its gradient chunk by chunk; backward hands the gradient back."""

    @staticmethod
    def forward(ctx, logits, hidden, rows, head, temperature, chunk):  # type: ignore[override]
        count = rows.numel()
        grad = torch.zeros_like(logits)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, count, chunk):  # two (chunk × vocab) fp32 temporaries per chunk
            index = rows[start : start + chunk]
            student = logits.index_select(0, index).float()
            teacher = head(hidden.index_select(0, index)).float()
            vocab_t = teacher.shape[-1]
            if vocab_t > student.shape[-1]:
                raise ValueError(
                    f'The student has {student.shape[-1]} logits but the teacher {vocab_t}: set the '
                    f'model vocab_size >= {vocab_t}.',
                )
            soft, _ = _softmax_(teacher.div_(temperature))
            dot = torch.bmm(soft.unsqueeze(1), student[:, :vocab_t].unsqueeze(2)).view(-1)  # Σ_v p_T · z_S
            probs, log_z = _softmax_(student)
            total += (log_z - dot).sum()
            probs[:, :vocab_t] -= soft
            grad.index_copy_(0, index, probs.div_(count).to(grad.dtype))
        ctx.grad = grad
        return total / max(count, 1)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad = ctx.grad
        if grad is None:
            raise RuntimeError('The distillation loss was back-propagated twice; it keeps one gradient buffer.')
        ctx.grad = None
        return grad.mul_(grad_output.to(grad.dtype)), None, None, None, None, None
