"""Build train/val MDS shards (``tokens`` column) for llm-foundry's ``text`` loader with the teacher's tokenizer.

    python scripts/make_corpus.py --tokenizer work/teacher --out work/data          # the Python stdlib (offline)
    python scripts/make_corpus.py --tokenizer work/teacher --out work/mine notes/ books.txt docs.jsonl
    python scripts/make_corpus.py --tokenizer work/teacher --out work/pile \\
        --hf-dataset monology/pile-uncopyrighted --max-rows 200000                   # needs the hub

Inputs: text files (.txt .text .md .rst .py, one document each), jsonl files (one document per line, in
its "text" field) and directories of those (recursive). No inputs and no --hf-dataset: the running
Python's standard library (module sources and pydoc's reference topics).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from composer_let.prep.corpus import (
    STDLIB,
    CorpusError,
    expand_inputs,
    file_documents,
    hf_documents,
    stdlib_documents,
    write_corpus,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='*', help='text/jsonl files or directories (default: the Python stdlib)')
    parser.add_argument('--tokenizer', required=True, help="the teacher's folder (or any tokenizer folder/hub id)")
    parser.add_argument('--out', required=True, help='output folder; gets train/, val/ and corpus.json')
    parser.add_argument('--max-seq-len', type=int, default=256, help='tokens per row (default 256)')
    parser.add_argument('--val-fraction', type=float, default=0.05, help='share of rows for val/ (default 0.05)')
    parser.add_argument('--max-rows', type=int, help='stop after this many rows (train + val)')
    parser.add_argument('--hf-dataset', help='a Hugging Face dataset name, streamed (needs the hub)')
    parser.add_argument('--hf-split', default='train')
    parser.add_argument('--hf-config')
    parser.add_argument('--text-key', default='text', help='text column of --hf-dataset')
    parser.add_argument('--force', action='store_true', help='rebuild even if --out exists')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    try:
        if args.hf_dataset and args.inputs:
            raise CorpusError('Give either input files or --hf-dataset, not both.')
        if args.hf_dataset:
            sources = [f'hf:{args.hf_dataset}:{args.hf_config or ""}:{args.hf_split}']
            documents = hf_documents(args.hf_dataset, args.hf_split, args.hf_config, args.text_key)
        elif args.inputs:
            files = expand_inputs(args.inputs)
            sources = [str(Path(i).expanduser().resolve()) for i in args.inputs]
            documents = file_documents(files)
        else:
            sources, documents = [STDLIB], stdlib_documents()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        write_corpus(
            args.out,
            tokenizer,
            documents,
            args.max_seq_len,
            sources,
            val_fraction=args.val_fraction,
            max_rows=args.max_rows,
            force=args.force,
            progress=not args.no_progress,
        )
    except CorpusError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
