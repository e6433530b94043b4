"""Text corpora -> train/val streaming MDS shards that llm-foundry's ``text`` loader reads.

Documents are tokenized with the teacher's tokenizer, joined with its EOS and cut into
``max_seq_len`` rows (llm-foundry's own ``ConcatTokensDataset``), and written with
``streaming.MDSWriter`` in a ``tokens`` column::

    python scripts/make_corpus.py --tokenizer work/teacher --out work/data               # Python stdlib
    python scripts/make_corpus.py --tokenizer work/teacher --out work/data notes/ a.jsonl
    python scripts/make_corpus.py --tokenizer work/teacher --out work/pile \\
        --hf-dataset monology/pile-uncopyrighted --max-rows 200000                       # needs the hub

    train_loader:
      name: text
      dataset: {local: work/data, split: train, max_seq_len: 256}

Every ``round(1 / val_fraction)``-th row goes to ``val/`` and the others to ``train/``, so the
split is deterministic and both sides come from the whole corpus. Shards are written to
``<out>.partial`` and renamed when complete, with a manifest (``corpus.json``) recording the
tokenizer's fingerprint, ``max_seq_len``, the sources and the row counts: a second run with the
same settings reuses the folder, and a folder built with another tokenizer is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = ('.txt', '.text', '.md', '.rst', '.py')
JSONL_SUFFIXES = ('.jsonl',)
MANIFEST = 'corpus.json'
STDLIB = 'python-stdlib'
_STDLIB_SKIP = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__', 'lib2to3', 'ensurepip'}


class CorpusError(ValueError):
    """Input that cannot become a corpus, with the fix in the message."""


# Sources -----------------------------------------------------------------------------------


def stdlib_documents() -> list[str]:
    """The running Python's standard library: every module's source (code, comments, docstrings),
    then the reference manual's topics that ``pydoc`` ships (English prose). Tests are left out.

    A fresh machine always has it, so it is the corpus the quickstart needs no network for.
    """
    root = Path(sysconfig.get_paths()['stdlib'])
    paths = sorted(p for p in root.rglob('*.py') if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]))
    documents = [p.read_text(encoding='utf-8', errors='replace') for p in paths]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions drop pydoc_data
        topics = {}
    return documents + [topics[name] for name in sorted(topics)]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and directories (searched recursively) -> the text/jsonl files to read, in a stable order."""
    supported = ', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
            if not found:
                raise CorpusError(f'{path} holds no {supported} files.')
            files.extend(found)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
                raise CorpusError(f'{path}: unknown format {path.suffix!r}. Supported: {supported} (jsonl: "text").')
            files.append(path)
        else:
            raise CorpusError(f'{path}: no such file or directory.')
    if not files:
        raise CorpusError('No input files given.')
    return files


def file_documents(files: Iterable[Path]) -> Iterator[str]:
    """One document per text file, one per jsonl line (its ``text`` field)."""
    for path in files:
        if path.suffix in JSONL_SUFFIXES:
            with open(path, encoding='utf-8') as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CorpusError(f'{path}:{number} is not JSON ({e}).') from None
                    if not isinstance(record, dict) or not isinstance(record.get('text'), str):
                        raise CorpusError(f'{path}:{number} has no string "text" field; jsonl input needs one.')
                    yield record['text']
        else:
            yield path.read_text(encoding='utf-8', errors='replace')


def hf_documents(name: str, split: str = 'train', config: str | None = None, text_key: str = 'text') -> Iterator[str]:
    """Stream a Hugging Face dataset's ``text_key`` column (needs the hub), e.g. ``monology/pile-uncopyrighted``."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise CorpusError(
            f'Hugging Face dataset {name!r} (split {split!r}) could not be opened ({type(e).__name__}: {e}). '
            'It needs the hub; offline, pass local text/jsonl files instead.',
        ) from e
    for record in dataset:
        if text_key not in record:
            raise CorpusError(f'{name!r} has no {text_key!r} column ({", ".join(record)}); set --text-key.')
        yield record[text_key]


# Tokenize and pack -------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the token -> id map and the EOS id: equal exactly when shards are interchangeable."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([vocab, tokenizer.eos_token_id]).encode()).hexdigest()[:16]


def pack_rows(tokenizer: Any, documents: Iterable[str], seq_len: int) -> Iterator[np.ndarray]:
    """Documents -> ``seq_len`` int32 rows, EOS after each document (llm-foundry's ``ConcatTokensDataset``).

    Empty documents are skipped; the last partial row is dropped.
    """
    from llmfoundry.data import ConcatTokensDataset

    if tokenizer.eos_token is None:
        raise CorpusError('The tokenizer has no eos token: documents cannot be separated.')
    records = ({'text': text} for text in documents if text.strip())  # skip empty documents
    dataset = ConcatTokensDataset(
        hf_dataset=records,  # any iterable of {'text': ...} works
        tokenizer=tokenizer,
        max_length=seq_len,
        bos_text='',
        eos_text=tokenizer.eos_token,
        no_wrap=False,
    )
    for sample in dataset:
        yield sample['tokens']


# Write -------------------------------------------------------------------------------------


def read_corpus_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise CorpusError(
            f'{folder} exists but has no readable {MANIFEST}: it is not a complete corpus. '
            'Delete it or rerun with --force.',
        ) from e
    for split in manifest.get('rows', {}):
        if not (folder / split / 'index.json').is_file():
            raise CorpusError(f'{folder}/{split}/index.json is missing. Delete {folder} or rerun with --force.')
    return manifest


def write_corpus(
    out: str | Path,
    tokenizer: Any,
    documents: Iterable[str],
    seq_len: int,
    sources: list[str],
    val_fraction: float = 0.05,
    max_rows: int | None = None,
    force: bool = False,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Write (or reuse) ``<out>/{train,val}`` MDS shards; returns the manifest."""
    from streaming import MDSWriter
    from tqdm import tqdm

    if not isinstance(seq_len, int) or seq_len < 2:
        raise CorpusError(f'max_seq_len={seq_len!r} must be an integer >= 2.')
    if not 0 < val_fraction < 1:
        raise CorpusError(f'val_fraction={val_fraction!r} must be between 0 and 1 (e.g. 0.05).')
    out = Path(out)
    wanted = {
        'max_seq_len': seq_len,
        'sources': sources,
        'val_fraction': val_fraction,
        'max_rows': max_rows,
        'tokenizer': {
            'name': str(getattr(tokenizer, 'name_or_path', '')),
            'fingerprint': tokenizer_fingerprint(tokenizer),
            'eos_token_id': tokenizer.eos_token_id,
            'vocab_size': len(tokenizer),
        },
    }
    if out.exists() and not force:
        manifest = read_corpus_manifest(out)
        if manifest['tokenizer']['fingerprint'] != wanted['tokenizer']['fingerprint']:
            raise CorpusError(
                f'{out} was tokenized with {manifest["tokenizer"]["name"]!r}, a different tokenizer than '
                f'{wanted["tokenizer"]["name"]!r}: a student trained on it would not match the teacher. '
                'Choose another --out or rerun with --force.',
            )
        differ = [key for key in ('max_seq_len', 'sources', 'val_fraction', 'max_rows') if manifest[key] != wanted[key]]
        if differ:
            raise CorpusError(
                f'{out} was built with other settings ({", ".join(f"{k}={manifest[k]!r}" for k in differ)}). '
                'Choose another --out or rerun with --force.',
            )
        log(f'[corpus] reusing {out} ({manifest["rows"]["train"]} train / {manifest["rows"]["val"]} val rows)')
        return manifest

    period = max(2, round(1 / val_fraction))
    partial = out.with_name(out.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    counts = {'train': 0, 'val': 0}
    columns = {'tokens': 'ndarray:int32'}
    documents_read = 0

    def counted(items: Iterable[str]) -> Iterator[str]:
        nonlocal documents_read
        bar = tqdm(items, desc='[corpus] tokenizing', unit='doc', disable=not progress, mininterval=2)
        for text in bar:
            if text.strip():
                documents_read += 1
                yield text
            bar.set_postfix(rows=counts['train'] + counts['val'], refresh=False)

    try:
        with (
            MDSWriter(out=str(partial / 'train'), columns=columns, compression=None) as train,
            MDSWriter(out=str(partial / 'val'), columns=columns, compression=None) as val,
        ):
            for index, row in enumerate(pack_rows(tokenizer, counted(documents), seq_len)):
                if max_rows is not None and index >= max_rows:
                    break
                split = 'val' if index % period == period - 1 else 'train'
                (val if split == 'val' else train).write({'tokens': row})
                counts[split] += 1
        if documents_read == 0:
            raise CorpusError(f'No text in {", ".join(sources)}: no documents, or only empty ones.')
        if counts['val'] == 0:
            raise CorpusError(
                f'{", ".join(sources)} gave {counts["train"]} rows of {seq_len} tokens: too little text for a '
                f'validation split (one row in {period}). Add text or lower max_seq_len.',
            )
        manifest = {**wanted, 'rows': counts, 'tokens': {k: v * seq_len for k, v in counts.items()}}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log(f'[corpus] wrote {out}: {counts["train"]} train / {counts["val"]} val rows of {seq_len} tokens')
    return manifest
