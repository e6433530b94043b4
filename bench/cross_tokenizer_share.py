"""How many student positions does ``cross_tokenizer: true`` align? The rule before issue 25 and the sound one.

On the benchmark corpus (``../shared/data/text``) with the benchmark's tokenizers: the student's
2,048-token byte-level BPE and the cross-tokenizer teacher's 4,096-token one (``convergence.py``'s
``CORPUS`` and ``CROSS_VOCAB``; read from ``bench/results/cache`` when built there, else trained the
same way in a temporary folder), and SmolLM2's tokenizer when it is prepared under ``work/teacher``.
The rows are the student's 128-token training rows (``pack_rows``, as in the shards), every
``--step``-th, up to ``--rows``; teacher rows are not truncated (both teachers' rows are shorter).

* old: student position ``i`` -> the last teacher token ``j`` such that teacher tokens ``0..j`` all
  end by the end of student token ``i``, anywhere in the row (``TokenBridge`` before issue 25);
* sound: ``TokenBridge`` now (``composer_let/cross_tokenizer.py``, module docstring).

Prints, per teacher: the share of student positions each rule aligns; of the positions both align,
how many the sound rule aligns with another teacher position; of those only the old rule aligned,
how many it aligned with a token inside a teacher word (whose ids depend on the bytes after the
student token) rather than with a whole word before it (one word behind); how many it aligned across
a document boundary; and the bridge's CPU time per batch of 16 rows::

    python bench/cross_tokenizer_share.py              # ~2 min on 2 idle cores
    python bench/cross_tokenizer_share.py --rows 256   # quicker
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, shared_corpus
from convergence import CORPUS, CROSS_VOCAB, signature

BATCH = 16


def corpus_tokenizer(vocab: int, train_docs: list[str], scratch: Path) -> tuple[Any, str]:
    """The benchmark's BPE of ``vocab`` tokens: its cached folder if built, else trained as ``prepare_corpus`` does."""
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import build_tokenizer

    cached = RESULTS / 'cache' / f'corpus-{signature({"layout": 2, **CORPUS, "vocab": vocab})}' / 'tokenizer'
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(cached), str(cached.relative_to(ROOT))
    return build_tokenizer(scratch / f'bpe{vocab}', train_docs, vocab_size=vocab), f'trained here ({vocab} tokens)'


def old_rule(ends_teacher: np.ndarray, ends_student: np.ndarray) -> np.ndarray:
    """The rule before issue 25: for each student end, the last ``j`` with teacher tokens ``0..j`` all ending by it."""
    if len(ends_teacher) == 0:
        return np.full(len(ends_student), -1)
    return np.searchsorted(np.maximum.accumulate(ends_teacher), ends_student, side='right') - 1


def measure(bridge: Any, rows: list[np.ndarray], eos: int) -> dict[str, Any]:
    keys = ('positions', 'old', 'sound', 'both', 'moved', 'dropped', 'dropped_mid_word', 'added', 'old_across')
    counts = dict.fromkeys(keys, 0)
    seconds = 0.0
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        began = time.process_time()  # CPU time: the machine may be shared
        aligned = bridge.align(chunk)
        seconds += time.process_time() - began
        for row, a in zip(chunk, aligned, strict=True):
            old, sound = old_rule(a.teacher_spans[:, 1], a.student_spans[:, 1]), a.teacher_index
            is_eos = (row == eos).astype(np.int64)
            docs = np.cumsum(is_eos) - is_eos  # the EOS belongs to the document it ends, as the teacher's
            counts['positions'] += len(row)
            counts['old'] += int((old >= 0).sum())
            counts['sound'] += int((sound >= 0).sum())
            both = (old >= 0) & (sound >= 0)
            counts['both'] += int(both.sum())
            counts['moved'] += int((both & (old != sound)).sum())
            dropped = (old >= 0) & (sound < 0)
            counts['dropped'] += int(dropped.sum())
            counts['dropped_mid_word'] += int((dropped & ~a.teacher_closing[np.maximum(old, 0)]).sum())
            counts['added'] += int(((old < 0) & (sound >= 0)).sum())
            counts['old_across'] += int(((old >= 0) & (a.teacher_sequence_id[np.maximum(old, 0)] != docs)).sum())
    n = counts['positions']
    return {
        **counts,
        'share_old': counts['old'] / n,
        'share_sound': counts['sound'] / n,
        'ms_per_batch': 1e3 * seconds / -(-len(rows) // BATCH),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=1024, help='student rows measured (default 1024)')
    parser.add_argument('--step', type=int, default=32, help='every step-th training row (default 32)')
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from composer_let.cross_tokenizer import TokenBridge
    from composer_let.prep.corpus import pack_rows

    texts = shared_corpus(CORPUS['corpus_chars'])
    if texts is None:
        raise SystemExit('cross_tokenizer_share: the corpus ../shared/data/text is absent.')
    train_docs = texts[: int(len(texts) * (1 - CORPUS['val_share']))]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        student, student_from = corpus_tokenizer(CORPUS['vocab'], train_docs, Path(scratch))
        teachers = {f'bpe{CROSS_VOCAB}': corpus_tokenizer(CROSS_VOCAB, train_docs, Path(scratch))}
        smollm2 = ROOT / 'work' / 'teacher'
        if (smollm2 / 'tokenizer.json').is_file():
            teachers['smollm2'] = (AutoTokenizer.from_pretrained(smollm2), 'work/teacher')
        rows = list(itertools.islice(pack_rows(student, train_docs, CORPUS['seq']), 0, None, args.step))[: args.rows]
        print(f'student: {len(student)}-token BPE ({student_from}); {len(rows)} rows of {CORPUS["seq"]} tokens')
        for name, (teacher, source) in teachers.items():
            bridge = TokenBridge(student, teacher, max_length=1 << 20)
            results[name] = {'teacher': source, **measure(bridge, rows, student.eos_token_id)}
    for name, r in results.items():
        print(
            f'{name} ({r["teacher"]}): aligned {r["share_old"]:.1%} (old rule) -> {r["share_sound"]:.1%} (sound) of '
            f'{r["positions"]} positions; of the {r["both"]} both align, {r["moved"]} moved to another teacher '
            f'position; {r["dropped"]} dropped ({r["dropped_mid_word"]} of them the old rule aligned inside a teacher '
            f'word, the rest a whole word behind), {r["added"]} added; the old rule aligned {r["old_across"]} across '
            f'a document boundary; bridge {r["ms_per_batch"]:.1f} ms CPU per {BATCH} rows'
        )
    print(json.dumps(results))
    return results


if __name__ == '__main__':
    main()
