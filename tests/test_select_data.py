"""SALT_DS (composer_let.prep.selection, scripts/select_data.py): scores by hand, then real text to trainable shards."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from composer_let.prep.selection import SelectionError, choose, sequence_scores

from conftest import ROOT, SEQ_LEN, SHARED_DATA, in_memory


def select_main(argv: list[str]) -> dict | None:
    """``python scripts/select_data.py <argv>``, in process."""
    spec = importlib.util.spec_from_file_location('select_data', ROOT / 'scripts' / 'select_data.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


TEXT = SHARED_DATA / 'text' / 'wikitext2-valid.txt'


def test_sequence_score_is_the_median_loss_of_learnable_tokens():
    # Vocab 4, tokens 0 1 2 3 0: four predictions; the targets rank 0, 2, 0 and 3.
    logits = torch.tensor(
        [
            [
                [0.0, 2.0, 1.0, -1.0],  # target 1: rank 0 -> learnable for k=2
                [3.0, 2.0, 1.0, 0.0],  # target 2: rank 2 -> not learnable for k=2
                [0.0, 0.0, 0.0, 5.0],  # target 3: rank 0 -> learnable
                [0.0, 1.0, 2.0, 3.0],  # target 0: rank 3 -> not learnable
                [9.0, 9.0, 9.0, 9.0],  # last position predicts nothing
            ]
        ]
    )
    tokens = torch.tensor([[0, 1, 2, 3, 0]])

    def nll(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    rows = logits[0].tolist()
    learnable = [nll(rows[0], 1), nll(rows[2], 3)]
    score = sequence_scores(logits, tokens, torch.tensor([5]), top_k=2)
    assert score.item() == pytest.approx(statistics.median(learnable), rel=1e-6)
    # k = 4: every token is learnable, the median of four losses (mean of the middle two).
    all_four = [nll(rows[0], 1), nll(rows[1], 2), nll(rows[2], 3), nll(rows[3], 0)]
    assert sequence_scores(logits, tokens, torch.tensor([5]), top_k=4).item() == pytest.approx(
        statistics.median(all_four), rel=1e-6
    )
    # Length 3: only the first two predictions are real; of those only the first is learnable at k=2.
    assert sequence_scores(logits, tokens, torch.tensor([3]), top_k=2).item() == pytest.approx(learnable[0], rel=1e-6)
    # Ties count in the target's favour (rank = ids strictly above it): a flat row is learnable at k=1.
    flat = torch.zeros(1, 3, 4)
    assert sequence_scores(flat, torch.tensor([[0, 1, 2]]), torch.tensor([3]), top_k=1).item() == pytest.approx(
        math.log(4)
    )
    # No learnable token: NaN (such a sequence is never kept).
    assert math.isnan(sequence_scores(logits, tokens, torch.tensor([5]), top_k=0).item())


def test_choose_keeps_the_hardest_or_a_band():
    scores = np.array([1.0, np.nan, 3.0, 2.0, 3.0, 0.5])
    assert choose(scores, keep=0.4).tolist() == [2, 4]  # 2 of 5 scored, in source order
    assert choose(scores, keep=0.6).tolist() == [2, 3, 4]
    assert choose(scores, keep=1.0).tolist() == [0, 2, 3, 4, 5]  # NaN is never kept
    assert choose(scores, band=(0.0, 0.5)).tolist() == [0, 3, 5]  # quantiles 0..0.5 of [0.5, 1, 2, 3, 3]
    assert choose(scores, band=(0.5, 1.0)).tolist() == [2, 3, 4]
    with pytest.raises(SelectionError, match='exactly one'):
        choose(scores)
    with pytest.raises(SelectionError, match='--keep=0'):
        choose(scores, keep=0)
    with pytest.raises(SelectionError, match=r'--band 0\.6 0\.2'):
        choose(scores, band=(0.6, 0.2))


@pytest.fixture(scope='module')
def real_text_mds(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WikiText-2 (real text), tokenized with the tiny teacher's tokenizer into 64-token MDS rows."""
    if not TEXT.is_file():
        pytest.skip(f'{TEXT} is absent (the shared data folder beside the repository; see its README)')
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import write_token_shards

    text = TEXT.read_text(encoding='utf-8')[:40_000]
    docs = [d for d in text.split('\n \n') if d.strip()]
    folder = tmp_path_factory.mktemp('wikitext-mds')
    tokenizer = AutoTokenizer.from_pretrained(assets['teacher'])
    counts = write_token_shards(folder, tokenizer, docs, seq_len=SEQ_LEN, splits={'train': 1.0})
    assert counts['train'] > 150
    return folder


def _args(assets, data: Path, out: Path, *extra: str) -> list[str]:
    return ['--teacher', str(assets['teacher']), '--data', str(data), '--out', str(out), '--no-progress', *extra]


def _rows(folder: Path) -> list[dict]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(folder), 'train')
    return [dataset[i] for i in range(len(dataset))]


def test_selection_on_real_text_writes_shards_llmfoundry_trains_on(assets, real_text_mds, tmp_path, train):
    from transformers import AutoModelForCausalLM

    out = tmp_path / 'selected'
    summary = select_main(_args(assets, real_text_mds, out, '--keep', '0.25', '--top-k', '50', '--batch-size', '16'))
    scores = np.load(out / 'train.scores.npy')
    source = _rows(real_text_mds)
    kept = _rows(out)
    assert len(scores) == len(source) == summary['rows']
    scored = ~np.isnan(scores)
    assert scored.sum() > 0.5 * len(scores)  # most 64-token rows have a token in a random model's top 50
    assert len(kept) == summary['kept'] == round(0.25 * scored.sum())

    # Each kept row is the source row, with its score; every kept score >= every dropped one.
    chosen = [row['source_index'] for row in kept]
    assert chosen == sorted(chosen)
    for row in kept:
        assert np.array_equal(row['tokens'], source[row['source_index']]['tokens'])
        assert row['score'] == scores[row['source_index']]
    dropped = np.setdiff1d(np.flatnonzero(scored), chosen)
    assert min(row['score'] for row in kept) >= scores[dropped].max()

    # The scores are those of the teacher's full forward (its own LM head), not only of our backbone + head path.
    teacher = AutoModelForCausalLM.from_pretrained(assets['teacher'], torch_dtype=torch.float32).eval()
    sample = torch.from_numpy(np.stack([source[i]['tokens'] for i in range(8)]).astype(np.int64))
    with torch.no_grad():
        logits = teacher(sample).logits
    expected = sequence_scores(logits, sample, torch.full((8,), sample.shape[1]), top_k=50).numpy()
    np.testing.assert_allclose(scores[:8], expected, rtol=1e-5)

    # llm-foundry trains on the selection (the KD phase of SALT, here with the salt algorithm on).
    trainer = train('mpt-salt', f'train_loader.dataset.local={out}', 'max_duration=2ba', 'eval_interval=2ba')
    kd = [float(v) for _, v in in_memory(trainer).data.get('loss/train/salt_kd', [])]
    assert trainer.state.timestamp.batch.value == 2
    assert len(kd) == 1 and math.isfinite(kd[0])  # stop 0.5dur of 2 batches: KD on the first


def test_restart_continues_and_gives_identical_output(assets, real_text_mds, tmp_path):
    args = ('--band', '0.5', '1.0', '--top-k', '50', '--batch-size', '16')
    clean = tmp_path / 'clean'
    select_main(_args(assets, real_text_mds, clean, *args))

    resumed = tmp_path / 'resumed'
    assert select_main(_args(assets, real_text_mds, resumed, *args, '--max-batches', '3')) is None
    partial = np.load(resumed / 'train.scores.partial.npz')
    assert len(partial['scores']) == 48 and not (resumed / 'train').exists()
    with pytest.raises(SystemExit, match='other settings'):
        select_main(_args(assets, real_text_mds, resumed, *args[:-1], '8'))  # another batch size
    select_main(_args(assets, real_text_mds, resumed, *args))

    np.testing.assert_array_equal(np.load(clean / 'train.scores.npy'), np.load(resumed / 'train.scores.npy'))
    assert not (resumed / 'train.scores.partial.npz').exists()
    for name in sorted(p.name for p in (clean / 'train').iterdir()):
        assert (clean / 'train' / name).read_bytes() == (resumed / 'train' / name).read_bytes(), name
    summary = json.loads((clean / 'train.selection.json').read_text())
    assert summary['band'] == [0.5, 1.0] and summary['kept'] >= summary['scored'] // 2


def test_bad_input_is_refused_before_scoring(assets, real_text_mds, tmp_path):
    with pytest.raises(SystemExit, match=r"does not exist: --data must be an MDS folder with a 'nope' split"):
        select_main(_args(assets, real_text_mds, tmp_path / 'o', '--keep', '0.5', '--split', 'nope'))
    with pytest.raises(SystemExit, match=r'--keep=1\.5'):
        select_main(_args(assets, real_text_mds, tmp_path / 'o', '--keep', '1.5'))
    with pytest.raises(SystemExit, match='--out must differ from --data'):
        select_main(_args(assets, real_text_mds, real_text_mds, '--keep', '0.5'))
    assert not (tmp_path / 'o').exists()
