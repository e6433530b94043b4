"""SALT's KD loss (composer_let.distill) and the loss-dict helpers (composer_let.losses): pure, seconds."""

from __future__ import annotations

import math

import pytest
import torch

from composer_let.distill import distillation_loss, next_token_mask
from composer_let.losses import with_extra_loss, with_mixed_loss


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def naive_kd(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Full-tensor reference: teacher logits zero-probability-extended over the student's padded vocab."""
    p_t = torch.softmax(teacher.float() / temperature, dim=-1)
    log_p_s = torch.log_softmax(student.float(), dim=-1)[..., : teacher.shape[-1]]
    per_token = -(p_t * log_p_s).sum(-1)
    return per_token[mask].sum() / mask.sum().clamp(min=1)


def test_kd_equals_hand_computation():
    # One sequence, three positions, vocab 3; the last position has no next token.
    student = torch.tensor([[[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [9.0, 9.0, 9.0]]], requires_grad=True)
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[5, 6, 7]])
    loss = distillation_loss(student, teacher, identity, next_token_mask(labels), temperature=1.0)

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    hand = 0.0
    for s, t in (([1.0, 2.0, 0.0], [2.0, 0.0, 0.0]), ([0.5, -1.0, 2.0], [0.0, 0.0, 3.0])):
        hand += -sum(pt * math.log(ps) for pt, ps in zip(softmax(t), softmax(s), strict=True))
    assert loss.item() == pytest.approx(hand / 2, rel=1e-6)

    loss.backward()
    for pos, (s, t) in enumerate((([1.0, 2.0, 0.0], [2.0, 0.0, 0.0]), ([0.5, -1.0, 2.0], [0.0, 0.0, 3.0]))):
        expected = [(ps - pt) / 2 for ps, pt in zip(softmax(s), softmax(t), strict=True)]
        assert student.grad[0, pos].tolist() == pytest.approx(expected, abs=1e-6)
    assert student.grad[0, 2].abs().sum() == 0  # the ignored last position gets no gradient


def test_temperature_softens_the_teacher_only():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 7)
    teacher = torch.randn(2, 5, 7) * 3
    mask = torch.ones(2, 5, dtype=torch.bool)
    losses = {tau: distillation_loss(student, teacher, identity, mask, temperature=tau).item() for tau in (0.5, 1, 4)}
    for tau, value in losses.items():
        assert value == pytest.approx(naive_kd(student, teacher, mask, tau).item(), rel=1e-5)
    assert len({round(v, 6) for v in losses.values()}) == 3
    # τ → ∞: the teacher is uniform, KD = mean over tokens of −mean_v log p_S(v).
    uniform = -torch.log_softmax(student, -1).mean(-1).mean().item()
    assert distillation_loss(student, teacher, identity, mask, temperature=1e6).item() == pytest.approx(uniform, 1e-5)


@pytest.mark.parametrize('chunk', [1, 3, 1024])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_chunked_loss_and_gradient_match_full_tensor_reference(chunk: int, dtype: torch.dtype):
    torch.manual_seed(1)
    base = torch.randn(3, 6, 11)
    teacher = torch.randn(3, 6, 8)
    labels = torch.randint(0, 8, (3, 6))
    labels[0, 2] = labels[1, 5] = labels[2, 1] = -100
    mask = next_token_mask(labels)

    ours_in = base.clone().to(dtype).requires_grad_(True)
    ours = distillation_loss(ours_in, teacher, identity, mask, temperature=2.0, chunk_tokens=chunk)
    ours.backward()
    ref_in = base.clone().to(dtype).requires_grad_(True)
    ref = naive_kd(ref_in, teacher, mask, 2.0)
    ref.backward()

    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=tol)
    assert ours_in.grad.dtype == dtype
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), rtol=tol, atol=tol)


def test_padded_student_vocab_keeps_padded_logits_in_its_softmax():
    # Teacher vocab 4, student padded to 6: the two padded logits take student mass, teacher mass 0.
    torch.manual_seed(2)
    teacher = torch.randn(1, 4, 4)
    student = torch.randn(1, 4, 6, requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss = distillation_loss(student, teacher, identity, mask)
    loss.backward()
    # Hand: −Σ_{v<4} p_T(v) · log softmax_6(z_S)(v), averaged over 4 positions.
    expected = -(torch.softmax(teacher, -1) * torch.log_softmax(student.detach(), -1)[..., :4]).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Not the same as comparing the first 4 logits only (which would ignore the padded mass).
    truncated = -(torch.softmax(teacher, -1) * torch.log_softmax(student.detach()[..., :4], -1)).sum(-1).mean()
    assert loss.item() > truncated.item()
    # The padded logits are pushed down with gradient softmax_6(z_S)/N, exactly as CE treats them.
    padded_grad = torch.softmax(student.detach(), -1)[..., 4:] / 4
    torch.testing.assert_close(student.grad[..., 4:], padded_grad)
    assert (student.grad[..., 4:] > 0).all()


def test_teacher_head_only_sees_chunks():
    torch.manual_seed(3)
    seen: list[int] = []
    head = torch.nn.Linear(5, 9, bias=False)

    def recording_head(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden.shape[0])
        return head(hidden)

    student = torch.randn(2, 16, 9)
    hidden = torch.randn(2, 16, 5)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    with torch.no_grad():
        loss = distillation_loss(student, hidden, recording_head, mask, chunk_tokens=4)
        reference = naive_kd(student, head(hidden), mask, 1.0)
    assert seen == [4] * 6 + [2]  # 26 real positions, never more than 4 rows of teacher logits at once
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_empty_mask_gives_zero_and_no_gradient():
    student = torch.randn(1, 3, 4, requires_grad=True)
    loss = distillation_loss(student, torch.randn(1, 3, 4), identity, torch.zeros(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.abs().sum() == 0


def test_bad_input_is_refused():
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match='vocab_size >= 6'):
        distillation_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 6), identity, mask)
    with pytest.raises(ValueError, match='temperature'):
        distillation_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 4), identity, mask, temperature=0)
    with pytest.raises(ValueError, match='Shapes disagree'):
        distillation_loss(torch.randn(1, 3, 4), torch.randn(1, 2, 4), identity, mask)


def test_mask_matches_llmfoundry_targets():
    from llmfoundry.models.mpt.modeling_mpt import get_targets

    labels = torch.tensor([[3, 4, -100, 5, 6], [-100, 1, 2, -100, 7]])
    assert torch.equal(next_token_mask(labels), get_targets(labels) != -100)


def _one_hot_teacher(labels: torch.Tensor, vocab: int) -> torch.Tensor:
    """Teacher logits that put all probability on the true next token (arbitrary where ignored)."""
    targets = torch.roll(labels, -1, dims=1).clamp(min=0)
    return torch.nn.functional.one_hot(targets, vocab).float() * 200.0


def _labels_with_ignored(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    labels = input_ids.clone()
    labels[labels == pad_id] = -100  # as llm-foundry's collator does with pad == eos
    return labels


def test_one_hot_teacher_kd_equals_mpt_loss():
    """KD against a one-hot teacher is CE: same target alignment and same ignored positions as MPT's loss."""
    from llmfoundry.models.mpt.modeling_mpt import ComposerMPTCausalLM

    torch.manual_seed(4)
    model = ComposerMPTCausalLM(
        d_model=16,
        n_heads=2,
        n_layers=1,
        expansion_ratio=2,
        max_seq_len=12,
        vocab_size=64,  # padded beyond the "teacher" vocab of 50
        loss_fn='torch_crossentropy',
        attn_config={'attn_impl': 'torch'},
    )
    input_ids = torch.randint(1, 50, (2, 12))
    input_ids[0, 4] = input_ids[1, 0] = input_ids[1, 7] = 0  # pad/eos tokens, ignored targets
    batch = {'input_ids': input_ids, 'labels': _labels_with_ignored(input_ids, 0)}
    outputs = model(batch)
    ce = model.loss(outputs, batch)
    kd = distillation_loss(
        outputs.logits, _one_hot_teacher(batch['labels'], 50), identity, next_token_mask(batch['labels'])
    )
    assert kd.item() == pytest.approx(ce.item(), rel=1e-5)


def test_one_hot_teacher_kd_equals_hf_loss():
    """The same for a Hugging Face causal LM, whose loss (llm-foundry's hf_causal_lm returns it) shifts internally."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(1, 40, (2, 10))
    input_ids[0, 3] = input_ids[1, 9] = 0
    labels = _labels_with_ignored(input_ids, 0)
    outputs = model(input_ids=input_ids, labels=labels)
    kd = distillation_loss(outputs.logits, _one_hot_teacher(labels, 40), identity, next_token_mask(labels))
    assert kd.item() == pytest.approx(outputs.loss.item(), rel=1e-5)


def test_loss_terms_commute_and_keep_the_dict_convention():
    ce, kd, align = torch.tensor(3.0), torch.tensor(5.0), torch.tensor(-0.5)
    omega, lam = 0.25, 0.1
    expected = (1 - omega) * 3.0 + omega * 5.0 + lam * -0.5
    let_first = with_mixed_loss(with_extra_loss(ce, 'let_align', align, lam), 'salt_kd', kd, omega)
    salt_first = with_extra_loss(with_mixed_loss(ce, 'salt_kd', kd, omega), 'let_align', align, lam)
    for out in (let_first, salt_first):
        assert out['total'].item() == pytest.approx(expected)
        assert out['ce'] is ce and out['salt_kd'] is kd and out['let_align'] is align
    # A model that returns its own dict (MPT with MoE: total = loss + lbl) keeps its extra terms.
    moe = with_mixed_loss({'total': ce + 1.0, 'loss': ce, 'lbl': torch.tensor(1.0)}, 'salt_kd', kd, omega)
    assert moe['total'].item() == pytest.approx((1 - omega) * 3.0 + omega * 5.0 + 1.0)
    with pytest.raises(ValueError, match='cross-entropy entry'):
        with_mixed_loss({'total': ce}, 'salt_kd', kd, omega)
    with pytest.raises(ValueError, match='no "total"'):
        with_extra_loss({'ce': ce}, 'let_align', align, lam)
