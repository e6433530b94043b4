"""The alignment loss and width matching, as pure tensor functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from composer_let.alignment import alignment_loss, interpolate_width


def test_identical_directions_give_minus_one() -> None:
    h = torch.randn(2, 5, 16)
    loss, cos = alignment_loss(h, 3.0 * h)  # same direction, other norm
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    opposite, _ = alignment_loss(h, -h)
    assert opposite.item() == pytest.approx(1.0, abs=1e-6)


def test_cosine_matches_torch_per_token_mean() -> None:
    s, t = torch.randn(3, 7, 8), torch.randn(3, 7, 8)
    loss, _ = alignment_loss(s, t)
    assert loss.item() == pytest.approx(-F.cosine_similarity(s, t, dim=-1).mean().item(), abs=1e-6)


def test_mask_leaves_padding_out() -> None:
    s, t = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    garbage = t.clone()
    garbage[0, 3:] = torch.randn(3, 8) * 100  # padded positions may hold anything
    loss_a, cos_a = alignment_loss(s, t, mask)
    loss_b, cos_b = alignment_loss(s, garbage, mask)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    assert cos_a.item() == pytest.approx(cos_b.item(), abs=1e-6)
    real = mask.bool()
    expected = -F.cosine_similarity(s[real], t[real], dim=-1).mean()
    assert loss_a.item() == pytest.approx(expected.item(), abs=1e-6)


def test_all_padding_and_zero_vectors_stay_finite() -> None:
    s = torch.zeros(1, 4, 8, requires_grad=True)
    loss, cos = alignment_loss(s, torch.zeros(1, 4, 8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos) and torch.isfinite(s.grad).all()
    empty, _ = alignment_loss(torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.zeros(1, 4))
    assert empty.item() == 0.0


def test_mse_and_smooth_l1_are_zero_at_alignment_and_grow_apart() -> None:
    h = torch.randn(2, 4, 16)
    for kind in ('mse', 'smooth_l1'):
        same, _ = alignment_loss(h, 2 * h, kind=kind)
        apart, _ = alignment_loss(h, -h, kind=kind)
        assert same.item() == pytest.approx(0.0, abs=1e-5)
        assert apart.item() > 0.1
    mse, cos = alignment_loss(h, torch.randn(2, 4, 16), kind='mse')
    assert mse.item() == pytest.approx(2 - 2 * cos.item(), abs=1e-5)  # ||a-b||² = 2 - 2cos on unit vectors


def test_low_precision_inputs_give_fp32_loss_with_grad() -> None:
    s = torch.randn(2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(2, 4, 8, dtype=torch.bfloat16) * 1e4  # large but finite in bf16
    loss, _ = alignment_loss(s, t)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and s.grad is not None


def test_shape_mismatch_and_unknown_kind_are_errors() -> None:
    with pytest.raises(ValueError, match='differ in shape'):
        alignment_loss(torch.randn(1, 2, 8), torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match='loss='):
        alignment_loss(torch.randn(1, 2, 8), torch.randn(1, 2, 8), kind='kl')


def test_interpolate_identity_when_widths_match() -> None:
    h = torch.randn(2, 3, 12)
    assert interpolate_width(h, 12) is h


def test_interpolate_resizes_linearly_along_hidden() -> None:
    ramp = torch.linspace(0, 1, 5).expand(2, 3, 5)
    up = interpolate_width(ramp, 9)
    assert up.shape == (2, 3, 9)
    torch.testing.assert_close(up[0, 0], torch.linspace(0, 1, 9))  # a line stays a line, corners aligned
    down = interpolate_width(torch.randn(4, 7, 576), 64)
    assert down.shape == (4, 7, 64)


def test_pool_width_reads_every_teacher_feature_where_interpolate_skips_most() -> None:
    from composer_let.alignment import pool_width, resize_width

    hidden = torch.randn(2, 3, 576, dtype=torch.float64)
    pooled = pool_width(hidden, 128)
    # 576 = 128 bins of 4.5 features: output j averages features floor(4.5 j) .. ceil(4.5 (j + 1)) - 1.
    for j in (0, 1, 64, 127):
        lo, hi = (j * 576) // 128, -((-(j + 1) * 576) // 128)
        assert torch.allclose(pooled[..., j], hidden[..., lo:hi].mean(-1))

    # Every teacher feature moves the pooled vector; interpolation (the paper's) ignores most of them.
    def used(resize: str) -> int:
        x = hidden[:1, :1].clone().requires_grad_(True)
        resize_width(x, 128, resize).sum().backward()
        return int((x.grad != 0).sum())

    assert used('pool') == 576
    assert used('interpolate') <= 256
    # Widening has nothing to average: pool is the paper's interpolation there.
    small = torch.randn(4, 32)
    assert torch.equal(pool_width(small, 64), interpolate_width(small, 64))
    with pytest.raises(ValueError, match='resize mode'):
        resize_width(small, 64, 'nearest')


def test_standardize_features_uses_only_real_tokens_and_removes_the_common_direction() -> None:
    from composer_let.alignment import standardize_features

    torch.manual_seed(0)
    common = torch.randn(16) * 10
    hidden = common + torch.randn(2, 8, 16) * torch.linspace(0.1, 5.0, 16)  # one direction, unequal scales
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # padding
    padded = hidden.clone()
    padded[1, 5:] = 1e6  # padding values must not move the statistics
    out = standardize_features(padded, mask)
    real = out[mask]
    assert torch.allclose(real.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(real.std(0, unbiased=False), torch.ones(16), atol=1e-4)
    assert torch.allclose(out[mask], standardize_features(hidden, mask)[mask])
    cos = torch.nn.functional.cosine_similarity(real[:, None], real[None], dim=-1)
    off_diagonal = cos[~torch.eye(len(real), dtype=torch.bool)]
    assert off_diagonal.mean().abs() < 0.1  # raw: every pair points along `common`
    raw_cos = torch.nn.functional.cosine_similarity(hidden[mask][:, None], hidden[mask][None], dim=-1)
    assert raw_cos[~torch.eye(len(real), dtype=torch.bool)].mean() > 0.5
