"""Corpus -> MDS: real text with the real teacher tokenizer, read back by llm-foundry; reuse; bad input."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from composer_let.prep.corpus import (
    MANIFEST,
    STDLIB,
    CorpusError,
    expand_inputs,
    file_documents,
    hf_documents,
    stdlib_documents,
    write_corpus,
)

from conftest import ROOT, SHARED_DATA

TEXT = SHARED_DATA / 'text'
needs_text = pytest.mark.skipif(not TEXT.is_dir(), reason=f'{TEXT} is absent (it sits beside the repo on dev/CI)')
SEQ = 128


def _inputs(tmp_path: Path) -> list[Path]:
    """A text file and a 40-document jsonl slice of the Python docs (real text, two formats)."""
    docs = tmp_path / 'python_docs.jsonl'
    with open(TEXT / 'python_docs.jsonl', encoding='utf-8') as f:
        docs.write_text(''.join(next(f) for _ in range(40)), encoding='utf-8')
    return [TEXT / 'tinyshakespeare.txt', docs]


def _expected_rows(tokenizer, documents: list[str]) -> list[list[int]]:
    """Independent packing: every document's tokens then EOS, cut into SEQ-token rows."""
    stream: list[int] = []
    for text in documents:
        stream += tokenizer(text, add_special_tokens=False)['input_ids'] + [tokenizer.eos_token_id]
    return [stream[i : i + SEQ] for i in range(0, len(stream) - SEQ + 1, SEQ)]


@needs_text
def test_real_text_becomes_shards_that_llm_foundry_reads(smollm2: Path, tmp_path: Path):
    from llmfoundry.data.text_data import build_text_dataloader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    files = expand_inputs(_inputs(tmp_path))
    out = tmp_path / 'data'
    manifest = write_corpus(out, tokenizer, file_documents(files), SEQ, ['shakespeare+docs'], progress=False)

    rows = _expected_rows(tokenizer, list(file_documents(files)))
    val = rows[19::20]  # val_fraction 0.05: every 20th row
    train = [row for i, row in enumerate(rows) if i % 20 != 19]
    assert manifest['rows'] == {'train': len(train), 'val': len(val)} and len(val) > 10
    assert manifest['tokenizer']['eos_token_id'] == 2 and (out / MANIFEST).is_file()
    assert not (tmp_path / 'data.partial').exists()

    for split, expected in (('train', train), ('val', val)):
        spec = build_text_dataloader(
            tokenizer,
            device_batch_size=8,
            dataset={'local': str(out), 'split': split, 'shuffle': False, 'max_seq_len': SEQ},
            drop_last=False,
            num_workers=0,
            pin_memory=False,
            prefetch_factor=None,
            persistent_workers=False,
        )
        assert len(spec.dataloader.dataset) == len(expected)
        batches = iter(spec.dataloader)
        first, second = next(batches), next(batches)
        read = first['input_ids'].tolist() + second['input_ids'].tolist()
        assert read == expected[:16]
    assert tokenizer.decode(train[0]).startswith('First Citizen:\nBefore we proceed any further')


@needs_text
def test_same_settings_reuse_other_tokenizer_is_refused(smollm2: Path, assets: dict[str, Path], tmp_path: Path):
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(smollm2)
    text = (TEXT / 'tinyshakespeare.txt').read_text(encoding='utf-8')[:60_000]
    out = tmp_path / 'data'
    first = write_corpus(out, teacher, [text], SEQ, ['shakespeare'], progress=False)
    stamp = (out / 'train' / 'index.json').stat().st_mtime_ns
    said: list[str] = []
    assert write_corpus(out, teacher, [text], SEQ, ['shakespeare'], progress=False, log=said.append) == first
    assert 'reusing' in said[0] and (out / 'train' / 'index.json').stat().st_mtime_ns == stamp

    tiny = AutoTokenizer.from_pretrained(assets['tokenizer'])
    with pytest.raises(CorpusError, match='different tokenizer'):
        write_corpus(out, tiny, [text], SEQ, ['shakespeare'], progress=False)
    with pytest.raises(CorpusError, match=r'other settings.*max_seq_len=128'):
        write_corpus(out, teacher, [text], 64, ['shakespeare'], progress=False)
    assert (out / 'train' / 'index.json').stat().st_mtime_ns == stamp


def test_bad_input_is_refused_and_leaves_nothing(assets: dict[str, Path], tmp_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets['tokenizer'])
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'table.csv').write_text('a,b\n')
    (tmp_path / 'blank.txt').write_text('  \n\n')
    (tmp_path / 'short.txt').write_text('just a few words')
    (tmp_path / 'notjson.jsonl').write_text('{"text": "fine"}\nnot json\n')
    (tmp_path / 'notext.jsonl').write_text('{"body": "no text field"}\n')

    with pytest.raises(CorpusError, match=r'holds no .txt'):
        expand_inputs([tmp_path / 'empty'])
    with pytest.raises(CorpusError, match=r"unknown format '.csv'"):
        expand_inputs([tmp_path / 'table.csv'])
    with pytest.raises(CorpusError, match='no such file'):
        expand_inputs([tmp_path / 'missing.txt'])
    with pytest.raises(CorpusError, match=r'notjson.jsonl:2 is not JSON'):
        list(file_documents([tmp_path / 'notjson.jsonl']))
    with pytest.raises(CorpusError, match=r'notext.jsonl:1 has no string "text"'):
        list(file_documents([tmp_path / 'notext.jsonl']))

    out = tmp_path / 'out'
    for name, message in (('blank.txt', 'No text in'), ('short.txt', 'too little text')):
        with pytest.raises(CorpusError, match=message):
            write_corpus(out, tokenizer, file_documents([tmp_path / name]), 64, [name], progress=False)
        assert not out.exists() and not (tmp_path / 'out.partial').exists()

    if os.environ.get('HF_HUB_OFFLINE') == '1':  # conftest's default: a hub dataset fails clearly, writes nothing
        with pytest.raises(CorpusError, match=r"'monology/pile-uncopyrighted'.*could not be opened.*local text"):
            write_corpus(out, tokenizer, hf_documents('monology/pile-uncopyrighted'), 64, ['pile'], progress=False)
        assert not out.exists() and not (tmp_path / 'out.partial').exists()

    spec = importlib.util.spec_from_file_location('make_corpus_cli', ROOT / 'scripts' / 'make_corpus.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ['--tokenizer', str(assets['tokenizer']), '--out', str(out), '--no-progress']
    assert cli.main([*args, str(tmp_path / 'table.csv')]) == 2
    assert cli.main([*args, str(tmp_path / 'blank.txt')]) == 2
    assert not out.exists()


def test_embedded_default_corpus_is_the_python_stdlib(assets: dict[str, Path], tmp_path: Path):
    from transformers import AutoTokenizer

    documents = stdlib_documents()
    assert len(documents) > 300
    assert any('def namedtuple(' in d for d in documents)  # module sources, with their docstrings
    assert any('conditional execution' in d for d in documents)  # pydoc's reference prose
    tokenizer = AutoTokenizer.from_pretrained(assets['tokenizer'])
    manifest = write_corpus(tmp_path / 'd', tokenizer, documents, 64, [STDLIB], max_rows=200, progress=False)
    assert manifest['rows'] == {'train': 190, 'val': 10}
    assert json.loads((tmp_path / 'd' / MANIFEST).read_text())['sources'] == [STDLIB]
