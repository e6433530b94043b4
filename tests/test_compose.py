"""LET together with the Composer speedups llm-foundry users enable.

* ``gradient_clipping`` and ``low_precision_layernorm`` are in llm-foundry's algorithm registry; ``ema``
  and ``seq_length_warmup`` are Composer algorithms a user registers (an entry point in
  ``llmfoundry_algorithms``, as this package does for ``let``); the test registers ``ema`` the same way.
* ``seq_length_warmup`` cannot run on llm-foundry 0.22's text loader with or without LET: its batches
  carry list-valued token counts (``total_tokens``) that Composer's ``SeqLengthWarmup`` tries to
  ``torch.clone``. It is tested with a Composer ``Trainer`` on an llm-foundry MPT model instead.
* ``low_precision_layernorm`` only acts under ``amp_*`` precision, which Composer refuses on CPU: here
  it is a no-op (Composer warns so); LET never hooks a LayerNorm, so its surgery leaves LET's hook alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from composer.algorithms import EMA, SeqLengthWarmup
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Callback, State
from composer.loggers import InMemoryLogger, Logger
from llmfoundry import registry

from composer_let import LET

from conftest import in_memory, let_of

if 'ema' not in registry.algorithms.get_all():
    registry.algorithms.register('ema', func=EMA)


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


def test_let_with_gradient_clipping_ema_and_low_precision_layernorm(train) -> None:
    threshold = 0.05
    with pytest.warns(NoEffectWarning, match='Low Precision LayerNorm only applies to AMP_FP16 and AMP_BF16'):
        trainer = train(
            'mpt-let',
            'max_duration=4ba',
            'algorithms.let.stop=3ba',
            'algorithms.let.projection=linear',
            f'algorithms.gradient_clipping={{clipping_type: norm, clipping_threshold: {threshold}}}',
            'algorithms.ema={half_life: 2ba}',
            'algorithms.low_precision_layernorm={}',
            'callbacks={optimizer_monitor: {batch_log_interval: 1}}',
        )
    # LET ran as usual ...
    assert len(values(trainer, 'loss/train/let_align')) == 3
    assert all(math.isfinite(v) for v in values(trainer, 'loss/train/total'))
    # ... every step's gradient (student + LET's projection) was clipped to the threshold ...
    norms = values(trainer, 'l2_norm/grad/global')
    assert len(norms) == 4 and all(threshold * 0.99 <= n <= threshold * 1.0001 for n in norms), norms
    # ... and EMA averages LET's projection with the student (EMA weights differ from the trained ones).
    ema = next(a for a in trainer.state.algorithms if isinstance(a, EMA))
    averaged = ema.ema_model.named_parameters_dict
    assert 'let_projection.weight' in averaged
    assert not torch.equal(averaged['let_projection.weight'], trainer.state.model.let_projection.weight.detach())
    assert values(trainer, 'metrics/eval/LanguageCrossEntropy')  # eval ran on the EMA weights


class TeacherInputs(Callback):
    """After LET's BEFORE_FORWARD: did the teacher run on exactly the (truncated) ids the student gets?"""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        let = next(a for a in state.algorithms if isinstance(a, LET))
        input_ids = state.batch['input_ids']
        assert let.guidance.runner._cache_key[0] is input_ids  # the very tensor SeqLengthWarmup produced
        assert let.guidance.teacher_hidden.shape[:2] == input_ids.shape
        self.lengths.append(input_ids.shape[1])


def mpt_trainer(assets: dict[str, Path], teacher: Path, *algorithms, callbacks=()):
    """A Composer Trainer on llm-foundry's MPT and the tiny MDS rows, batches of plain tensors."""
    from composer import Trainer
    from composer.optim import DecoupledAdamW
    from llmfoundry.models.mpt import ComposerMPTCausalLM
    from streaming import StreamingDataset
    from transformers import AutoTokenizer

    torch.manual_seed(17)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = ComposerMPTCausalLM(
        tokenizer=tokenizer,
        d_model=64,
        n_heads=4,
        n_layers=4,
        expansion_ratio=4,
        max_seq_len=64,
        vocab_size=len(tokenizer),
        loss_fn='torch_crossentropy',
        attn_config={'attn_impl': 'torch'},
    )
    dataset = StreamingDataset(local=str(assets['data']), split='train', shuffle=False, batch_size=4)

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.stack([r['tokens'] for r in rows]).astype(np.int64))
        return {'input_ids': ids, 'labels': ids.clone(), 'attention_mask': torch.ones_like(ids)}

    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    return Trainer(
        model=model,
        train_dataloader=loader,
        max_duration='6ba',
        algorithms=list(algorithms),
        optimizers=DecoupledAdamW(model.parameters(), lr=1e-3),
        loggers=[InMemoryLogger()],
        callbacks=list(callbacks),
        device='cpu',
        progress_bar=False,
        seed=17,
    )


def warmup() -> SeqLengthWarmup:
    # 6 batches, warm up over the first half: 16, 32, 48 tokens, then the full 64.
    return SeqLengthWarmup(duration=0.5, min_seq_length=16, max_seq_length=64, step_size=16)


def test_seq_length_warmup_feeds_the_teacher_the_truncated_ids(assets) -> None:
    probe = TeacherInputs()
    trainer = mpt_trainer(
        assets,
        assets['teacher'],
        warmup(),
        LET(teacher=str(assets['teacher']), stop='1dur', teacher_dtype='fp32'),
        callbacks=[probe],
    )
    trainer.fit()
    assert probe.lengths == [16, 32, 48, 64, 64, 64]
    cosines = values(trainer, 'let/cosine')
    assert len(cosines) == 6 and all(math.isfinite(c) for c in cosines)
    assert let_of(trainer).guidance is None  # released at FIT_END
    trainer.close()


def test_seq_length_warmup_past_the_teachers_positions_is_an_error(assets, tmp_path: Path) -> None:
    """A teacher with 32 positions: fine at 16 and 32 tokens, a clear error when warmup reaches 48."""
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import save_llama

    tokenizer = AutoTokenizer.from_pretrained(assets['teacher'])
    short = tmp_path / 'short-teacher'
    save_llama(short, tokenizer, hidden=32, layers=2, heads=2, max_positions=32)
    trainer = mpt_trainer(assets, short, warmup(), LET(teacher=str(short), stop='1dur', teacher_dtype='fp32'))
    with pytest.raises(ValueError, match=r"48 tokens exceed the teacher's max_position_embeddings \(32\)"):
        trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2
    trainer.close()
