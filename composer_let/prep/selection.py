"""SALT_DS: score an MDS dataset with the small LM and keep the "hard but learnable" sequences.

For each sequence the small LM predicts every next token. A token is *learnable* when its
true id is among the model's ``top_k`` predictions (fewer than ``top_k`` ids score strictly
higher, so ties count in its favour); the sequence's *score* is the median of the per-token
losses ``−log p(x_{t+1} | x_{≤t})`` over its learnable tokens (*hard*). Sequences without a
learnable token get NaN and are never kept. The highest-scoring fraction (or a quantile
band of the scores) is written to new MDS shards, with every source column plus
``score`` and ``source_index``, for llm-foundry's ``text`` loader::

    python scripts/select_data.py --teacher <hf folder> --data <mds folder> --split train \\
        --out <folder> --keep 0.5

Scoring is the slow part: it saves its progress every ``save_every`` batches to
``<out>/<split>.scores.partial.npz`` and a restart with the same settings continues from
there (bit-identical, batches keep their boundaries). The final scores go to
``<out>/<split>.scores.npy``; changing only ``--keep``/``--band`` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streaming import LocalDataset, MDSWriter

from composer_let.distill import head_rescaling
from composer_let.teacher import DTYPES, TeacherRunner, load_teacher, load_teacher_config, teacher_shape

SCORE_COLUMNS = {'score': 'float64', 'source_index': 'int64'}
_LOGITS_BUDGET = 1 << 25  # elements of teacher logits alive at once (128 MB in fp32)


class SelectionError(ValueError):
    """Bad input to the data selection, with the fix in the message."""


# Functional core -------------------------------------------------------------------------


def sequence_scores(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, top_k: int) -> torch.Tensor:
    """Median loss over learnable tokens, per sequence; NaN where none is learnable.

    Args:
        logits: ``(batch, seq, vocab)``, position ``t`` predicting ``tokens[:, t + 1]``.
        tokens: ``(batch, seq)`` token ids.
        lengths: ``(batch,)`` real lengths (positions from ``length - 1`` on predict nothing).
        top_k: a token is learnable if fewer than ``top_k`` ids have a strictly higher logit.
    """
    logits = logits[:, :-1].float()
    targets = tokens[:, 1:]
    target_logit = logits.gather(-1, targets.unsqueeze(-1))
    rank = (logits > target_logit).sum(-1)
    loss = torch.logsumexp(logits, -1) - target_logit.squeeze(-1)
    positions = torch.arange(targets.shape[1], device=tokens.device)
    real = positions.unsqueeze(0) < (lengths.unsqueeze(1) - 1)
    learnable = real & (rank < top_k)
    return torch.nanquantile(loss.double().masked_fill(~learnable, float('nan')), 0.5, dim=1)


def choose(scores: np.ndarray, keep: float | None = None, band: tuple[float, float] | None = None) -> np.ndarray:
    """Indices of the sequences to keep, in source order.

    ``keep=f``: the ``round(f · n_scored)`` highest scores (ties broken by source order).
    ``band=(lo, hi)``: scores between the ``lo`` and ``hi`` quantiles of the scored
    sequences, inclusive (``(0.5, 1.0)`` is the harder half, ``(0.2, 0.8)`` drops both tails).
    """
    if (keep is None) == (band is None):
        raise SelectionError('Give exactly one of --keep (top fraction) or --band LO HI (score quantiles).')
    scored = np.flatnonzero(~np.isnan(scores))
    if keep is not None:
        if not 0 < keep <= 1:
            raise SelectionError(f'--keep={keep} must be in (0, 1].')
        order = scored[np.lexsort((scored, -scores[scored]))]  # score descending, then source order
        return np.sort(order[: round(keep * len(scored))])
    lo, hi = band  # type: ignore[misc]
    if not 0 <= lo < hi <= 1:
        raise SelectionError(f'--band {lo} {hi} must satisfy 0 <= LO < HI <= 1.')
    if len(scored) == 0:
        return scored
    low, high = np.quantile(scores[scored], [lo, hi])
    return scored[(scores[scored] >= low) & (scores[scored] <= high)]


# Reading and writing MDS -----------------------------------------------------------------


def open_split(data: str | Path, split: str) -> LocalDataset:
    """The MDS split as a random-access dataset; it must be uncompressed and have a ``tokens`` column."""
    index = Path(data) / split / 'index.json'
    if not index.is_file():
        raise SelectionError(f'{index} does not exist: --data must be an MDS folder with a {split!r} split.')
    shards = json.loads(index.read_text())['shards']
    if not shards:
        raise SelectionError(f'{index} lists no shards.')
    if any(shard.get('compression') for shard in shards):
        raise SelectionError(f'{index}: compressed shards are not supported; write the dataset with compression=None.')
    if shards[0].get('format') != 'mds' or 'tokens' not in shards[0].get('column_names', []):
        raise SelectionError(
            f'{index}: SALT_DS scores pre-tokenized MDS with a `tokens` column (ndarray or bytes), '
            "as llm-foundry's convert_dataset_hf --concat_tokens writes.",
        )
    return LocalDataset(str(data), split)


def read_tokens(sample: dict[str, Any], token_encoding: str) -> np.ndarray:
    tokens = sample['tokens']
    if isinstance(tokens, np.ndarray):
        return tokens.astype(np.int64)
    return np.frombuffer(tokens, dtype=np.dtype(token_encoding)).astype(np.int64)


def batches(dataset: LocalDataset, start: int, batch_size: int, token_encoding: str) -> Iterator[list[np.ndarray]]:
    for first in range(start, len(dataset), batch_size):
        last = min(first + batch_size, len(dataset))
        yield [read_tokens(dataset[i], token_encoding) for i in range(first, last)]


def write_selection(
    dataset: LocalDataset, data: str | Path, split: str, out: str | Path, chosen: np.ndarray, scores: np.ndarray
) -> Path:
    """Write the chosen rows (all source columns + score + source_index) to ``<out>/<split>``, atomically."""
    shard = json.loads((Path(data) / split / 'index.json').read_text())['shards'][0]
    columns = dict(zip(shard['column_names'], shard['column_encodings'], strict=True))
    clash = set(columns) & set(SCORE_COLUMNS)
    if clash:
        raise SelectionError(f'The source already has column(s) {sorted(clash)}; select from the unscored dataset.')
    final, partial = Path(out) / split, Path(out) / f'.{split}.writing'
    shutil.rmtree(partial, ignore_errors=True)
    with MDSWriter(out=str(partial), columns={**columns, **SCORE_COLUMNS}, compression=None) as writer:
        for i in chosen.tolist():
            writer.write({**dataset[i], 'score': float(scores[i]), 'source_index': i})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


# Scoring with resumable progress ---------------------------------------------------------


def _fingerprint(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _save_partial(path: Path, scores: list[float], fingerprint: str) -> None:
    tmp = path.with_suffix('.tmp.npz')
    np.savez(tmp, scores=np.asarray(scores, dtype=np.float64), fingerprint=fingerprint)
    os.replace(tmp, path)


@torch.no_grad()
def score_dataset(
    teacher: str | Path,
    data: str | Path,
    split: str,
    out: str | Path,
    top_k: int = 10,
    batch_size: int = 8,
    dtype: str = 'fp32',
    token_encoding: str = 'int64',
    save_every: int = 20,
    max_batches: int | None = None,
    progress: bool = True,
) -> np.ndarray | None:
    """Score every sequence of ``<data>/<split>``; returns all scores, or ``None`` if stopped early.

    ``max_batches`` stops after that many batches (progress saved), to split the work.
    """
    from tqdm import tqdm

    if top_k < 1 or batch_size < 1 or save_every < 1:
        raise SelectionError('--top-k, --batch-size and --save-every must be >= 1.')
    if dtype not in DTYPES:
        raise SelectionError(f'--dtype={dtype!r} is not one of {", ".join(DTYPES)}.')
    out = Path(out)
    final, partial = out / f'{split}.scores.npy', out / f'{split}.scores.partial.npz'
    dataset = open_split(data, split)
    fingerprint = _fingerprint(
        teacher=os.path.realpath(teacher),
        data=os.path.realpath(data),
        split=split,
        rows=len(dataset),
        top_k=top_k,
        batch_size=batch_size,
        dtype=dtype,
        token_encoding=token_encoding,
    )
    if final.is_file() and (out / f'{split}.scores.json').is_file():
        if json.loads((out / f'{split}.scores.json').read_text()).get('fingerprint') == fingerprint:
            return np.load(final)
    scores: list[float] = []
    if partial.is_file():
        saved = np.load(partial)
        if str(saved['fingerprint']) != fingerprint:
            raise SelectionError(
                f'{partial} was written with other settings (teacher, data, top-k, batch size, dtype). '
                'Rerun with the same settings to continue, or delete it to start over.',
            )
        scores = saved['scores'].tolist()

    config = load_teacher_config(str(teacher))
    rescaled = head_rescaling(config)
    if rescaled:
        raise SelectionError(f'The teacher rescales its logits outside the LM head ({", ".join(rescaled)}).')
    shape = teacher_shape(config)
    runner = TeacherRunner(load_teacher(str(teacher), DTYPES[dtype], torch.device('cpu')), shape.num_layers)
    runner.request(shape.num_layers - 1)  # final-norm hidden state; the head runs one sequence at a time
    head = runner.model.get_output_embeddings()
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(dataset), initial=len(scores), unit='seq', desc=f'scoring {split}', disable=not progress)
    done = 0
    for rows in batches(dataset, len(scores), batch_size, token_encoding):
        lengths = torch.tensor([len(r) for r in rows])
        tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.from_numpy(row)
        if int(tokens.max()) >= shape.vocab_size:
            raise SelectionError(
                f"Token id {int(tokens.max())} is outside the teacher's vocabulary ({shape.vocab_size}): "
                "the data was not tokenized with the teacher's tokenizer.",
            )
        mask = (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)).long()
        hidden = runner(tokens, mask)[shape.num_layers - 1]
        step = max(1, _LOGITS_BUDGET // (tokens.shape[1] * shape.vocab_size))  # sequences of logits at a time
        for i in range(0, len(rows), step):
            part = slice(i, i + step)
            scores.extend(sequence_scores(head(hidden[part]), tokens[part], lengths[part], top_k).tolist())
        bar.update(len(rows))
        done += 1
        if done % save_every == 0:
            _save_partial(partial, scores, fingerprint)
        if max_batches is not None and done >= max_batches and len(scores) < len(dataset):
            _save_partial(partial, scores, fingerprint)
            bar.close()
            return None
    bar.close()
    result = np.asarray(scores, dtype=np.float64)
    np.save(final, result)
    (out / f'{split}.scores.json').write_text(json.dumps({'fingerprint': fingerprint, 'rows': len(result)}))
    partial.unlink(missing_ok=True)
    return result


def select_data(
    teacher: str | Path,
    data: str | Path,
    split: str,
    out: str | Path,
    keep: float | None = None,
    band: tuple[float, float] | None = None,
    **scoring: Any,
) -> dict[str, Any] | None:
    """Score (or reuse scores), choose, and write ``<out>/<split>``; returns a summary, ``None`` if stopped early."""
    choose(np.zeros(1), keep, band)  # validate the choice before the slow part
    if Path(out).resolve() == Path(data).resolve():
        raise SelectionError('--out must differ from --data: the selection is written as a new dataset.')
    scores = score_dataset(teacher, data, split, out, **scoring)
    if scores is None:
        return None
    chosen = choose(scores, keep, band)
    dataset = open_split(data, split)
    folder = write_selection(dataset, data, split, out, chosen, scores)
    finite = scores[~np.isnan(scores)]
    quantiles = np.quantile(finite, [0, 0.25, 0.5, 0.75, 1]).tolist() if len(finite) else []
    summary = {
        'rows': len(scores),
        'scored': len(finite),
        'kept': len(chosen),
        'keep': keep,
        'band': band,
        'min_kept_score': float(scores[chosen].min()) if len(chosen) else None,
        'score_quantiles': dict(zip(('min', 'q25', 'median', 'q75', 'max'), quantiles, strict=False)),
        'output': str(folder),
    }
    (Path(out) / f'{split}.selection.json').write_text(json.dumps(summary, indent=2))
    return summary
