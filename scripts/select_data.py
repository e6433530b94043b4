"""SALT_DS: keep the sequences a small LM finds hard but learnable, as new MDS shards.

    python scripts/select_data.py --teacher <hf folder> --data <mds folder> --split train \\
        --out <folder> --keep 0.5            # or: --band 0.5 1.0 (score quantiles)

Writes ``<out>/<split>/`` (llm-foundry ``text`` shards: the source columns plus ``score`` and
``source_index``), ``<out>/<split>.scores.npy`` (one score per source row, NaN = no learnable
token) and ``<out>/<split>.selection.json``. Interrupted? Run the same command again: scoring
continues from its last save. See ``composer_let/prep/selection.py`` for the definition of the score.
"""

from __future__ import annotations

import argparse
import json
import sys

from composer_let.prep.selection import SelectionError, select_data
from composer_let.teacher import TeacherError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--teacher', required=True, help='Hugging Face model folder of the small LM')
    parser.add_argument('--data', required=True, help='MDS dataset folder (with a `tokens` column)')
    parser.add_argument('--split', default='train', help='split folder under --data (default: train)')
    parser.add_argument('--out', required=True, help='output folder (the selection is written to <out>/<split>)')
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument('--keep', type=float, help='fraction of the highest-scoring sequences to keep, e.g. 0.5')
    choice.add_argument('--band', type=float, nargs=2, metavar=('LO', 'HI'), help='keep score quantiles LO..HI')
    parser.add_argument('--top-k', type=int, default=10, help='learnable: true token in the top k (default: 10)')
    parser.add_argument('--batch-size', type=int, default=8, help='sequences per teacher forward (default: 8)')
    parser.add_argument('--dtype', default='fp32', help='teacher dtype: fp32 | bf16 | fp16 (default: fp32)')
    parser.add_argument('--token-encoding', default='int64', help='dtype of `tokens` stored as bytes (default: int64)')
    parser.add_argument('--save-every', type=int, default=20, help='save scoring progress every N batches')
    parser.add_argument('--max-batches', type=int, help='stop after N batches (progress saved; rerun to continue)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    try:
        summary = select_data(
            args.teacher,
            args.data,
            args.split,
            args.out,
            keep=args.keep,
            band=None if args.band is None else tuple(args.band),
            top_k=args.top_k,
            batch_size=args.batch_size,
            dtype=args.dtype,
            token_encoding=args.token_encoding,
            save_every=args.save_every,
            max_batches=args.max_batches,
            progress=not args.no_progress,
        )
    except (SelectionError, TeacherError) as e:
        sys.exit(f'select_data.py: error: {e}')
    if summary is None:
        print('Stopped early; progress saved. Run the same command again to continue.')
    else:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
