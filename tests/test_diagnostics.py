"""LET's diagnostics: gradient ratio/cosine at the hooked block and the teacher/student CE on sampled positions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from composer_let.alignment import alignment_loss
from composer_let.diagnostics import GradientProbe, gradient_stats, sampled_positions, token_nll

from conftest import in_memory


def _toy(seed: int, batch: int = 3, seq: int = 5, width: int = 8):
    """A two-layer toy: ``h = tanh(x W1)`` is the hooked output, the CE flows on through ``W2``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, width, generator=g)
    w1 = torch.randn(width, width, generator=g, requires_grad=True)
    w2 = torch.randn(width, 11, generator=g)
    teacher = torch.randn(batch, seq, width, generator=g)
    labels = torch.randint(0, 11, (batch, seq), generator=g)
    return x, w1, w2, teacher, labels


def _ce(h: torch.Tensor, w2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((torch.relu(h) @ w2).flatten(0, 1), labels.flatten())


def test_probe_matches_separate_autograd_gradients() -> None:
    x, w1, w2, teacher, labels = _toy(0)
    lam = 0.37
    # By hand: the two gradients at h, each from its own autograd.grad call.
    h = torch.tanh(x @ w1)
    g_ce = torch.autograd.grad(_ce(h, w2, labels), h, retain_graph=True)[0]
    g_align = torch.autograd.grad(lam * alignment_loss(h, teacher)[0], h)[0]
    ratio = (g_align.norm() / g_ce.norm()).item()
    cos = F.cosine_similarity(g_align.flatten(), g_ce.flatten(), dim=0).item()

    probe = GradientProbe()
    h = torch.tanh(x @ w1)
    align, _ = alignment_loss(probe.watch(h), teacher)
    (_ce(h, w2, labels) + lam * align).backward()
    got_ratio, got_cos = gradient_stats(probe.take())
    assert got_ratio == pytest.approx(ratio, rel=1e-5)
    assert got_cos == pytest.approx(cos, rel=1e-5, abs=1e-6)
    assert probe.take() is None  # reset after take


def test_probe_sums_microbatches_like_the_whole_batch() -> None:
    """Two half-batches, each loss scaled by its share (as Composer does), give the whole batch's numbers."""
    x, w1, w2, teacher, labels = _toy(1, batch=4)
    lam = 0.2

    def run(parts: list[slice], probe: GradientProbe) -> tuple[float, float]:
        for part in parts:
            h = torch.tanh(x[part] @ w1)
            align, _ = alignment_loss(probe.watch(h), teacher[part])
            share = (part.stop - part.start) / x.shape[0]
            ((_ce(h, w2, labels[part]) + lam * align) * share).backward()
        return gradient_stats(probe.take())

    # The whole batch's gradients at h are the per-sample gradients (means are over tokens of equal counts).
    whole = run([slice(0, 4)], GradientProbe())
    split = run([slice(0, 2), slice(2, 4)], GradientProbe())
    assert split == pytest.approx(whole, rel=1e-5)


def test_probe_without_alignment_gradient_and_bit_identical_training_gradient() -> None:
    x, w1, w2, teacher, labels = _toy(2)
    h = torch.tanh(x @ w1)
    _ce(h, w2, labels).backward()
    plain = w1.grad.clone()
    w1.grad = None
    probe = GradientProbe()
    h = torch.tanh(x @ w1)
    align, _ = alignment_loss(probe.watch(h), teacher)
    (_ce(h, w2, labels) + 0.0 * align).backward()
    assert torch.equal(w1.grad, plain)  # the probe never changes a gradient
    ratio, cos = gradient_stats(probe.take())
    assert ratio == 0.0 and math.isnan(cos)


def test_sampled_positions_are_next_token_targets() -> None:
    labels = torch.arange(24).reshape(2, 12)
    labels[1, 5] = -100
    rows, targets = sampled_positions(labels, n=6, offset=0)
    assert rows.tolist() == [0, 4, 8, 12, 16, 20]
    # row r = b * 12 + t predicts labels[b, t + 1]; t = 11 has no next token; labels[1, 5] is ignored.
    assert targets.tolist() == [1, 5, 9, 13, -100, 21]
    shifted, _ = sampled_positions(labels, n=6, offset=3)
    assert shifted.tolist() == [3, 7, 11, 15, 19, 23]
    every, _ = sampled_positions(labels, n=1000)
    assert every.tolist() == list(range(24))


def test_token_nll_masks_ignored_targets() -> None:
    logits = torch.randn(4, 7)
    targets = torch.tensor([1, -100, 6, 0])
    total, count = token_nll(logits, targets)
    keep = targets != -100
    assert count.item() == 3
    assert total.item() == pytest.approx(F.cross_entropy(logits[keep], targets[keep], reduction='sum').item())


def _metrics(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


def test_diagnostics_are_logged_and_match_across_microbatching(train) -> None:
    """The same batch split into 4 microbatches logs the unsplit batch's ratio, cosine and CEs."""
    # ce_tokens above the batch's 4 x 64 tokens: every position is sampled, so student_ce is the model's CE.
    run = ('max_duration=3ba', 'algorithms.let.stop=2ba', 'eval_interval=3ba', 'algorithms.let.ce_tokens=4096')
    whole = train('mpt-let', *run)
    split = train('mpt-let', *run, 'device_train_microbatch_size=1')
    ratios = _metrics(whole, 'let/grad_ratio')
    assert len(ratios) == 2 and all(0 < r < 10 for r in ratios)  # only while the teacher is active
    assert len(_metrics(whole, 'let/grad_cos')) == 2
    for key in ('let/grad_ratio', 'let/grad_cos'):
        assert _metrics(split, key) == pytest.approx(_metrics(whole, key), rel=1e-4, abs=1e-6), key
    for trainer in (whole, split):
        assert _metrics(trainer, 'let/student_ce') == pytest.approx(_metrics(trainer, 'loss/train/ce')[:2], rel=1e-5)
    assert _metrics(split, 'let/teacher_ce') == pytest.approx(_metrics(whole, 'let/teacher_ce'), rel=1e-5)
    # The random-init teacher predicts about uniformly: ln(vocab) = ln(512) = 6.24.
    assert all(abs(v - math.log(512)) < 0.3 for v in _metrics(whole, 'let/teacher_ce'))


def test_ce_tokens_zero_turns_the_ce_metrics_off(train) -> None:
    trainer = train('mpt-let', 'max_duration=2ba', 'algorithms.let.stop=2ba', 'algorithms.let.ce_tokens=0')
    assert _metrics(trainer, 'let/teacher_ce') == [] and _metrics(trainer, 'let/student_ce') == []
    assert len(_metrics(trainer, 'let/grad_ratio')) == 2
