"""Shared helpers of the benchmarks: machine facts, the real corpus, parameter and FLOP counts, JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

ROOT = Path(__file__).resolve().parents[1]
BENCH_YAMLS = ROOT / 'yamls' / 'bench'
RESULTS = ROOT / 'bench' / 'results'
SHARED_TEXT = ROOT.parent / 'shared' / 'data' / 'text'


def machine_facts() -> dict[str, Any]:
    """CPU, cores, load, library versions and the git commit: what makes two runs comparable."""
    import composer
    import llmfoundry
    import streaming
    import torch
    import transformers

    import composer_let

    cpu = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ['git', 'status', '--porcelain'], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = '', False
    return {
        'cpu': cpu,
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'loadavg_1_5_15': list(os.getloadavg()),
        'cuda': torch.cuda.is_available(),
        'platform': platform.platform(),
        'python': sys.version.split()[0],
        'versions': {
            'torch': torch.__version__,
            'transformers': transformers.__version__,
            'composer': composer.__version__,
            'llm-foundry': llmfoundry.__version__,
            'streaming': streaming.__version__,
            'composer-let': composer_let.__version__,
        },
        'git_commit': commit,
        'git_dirty': dirty,
        'argv': repo_relative(sys.argv),
    }


def repo_relative(data: Any) -> Any:
    """``data`` (JSON-like) with every string that is an absolute path inside the repository made relative to it.

    Records under ``bench/reported/`` are committed: they hold no path of the machine that made them::

        repo_relative({'folder': f'{ROOT}/bench/results/cache/corpus-1'})  # {'folder': 'bench/results/cache/corpus-1'}
    """
    if isinstance(data, dict):
        return {key: repo_relative(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [repo_relative(value) for value in data]
    if isinstance(data, (str, Path)) and os.path.isabs(data) and Path(data).is_relative_to(ROOT):
        return Path(data).relative_to(ROOT).as_posix()
    return data


def write_json(path: Path, data: Any) -> None:
    """Write atomically (tmp file + rename), so an interrupted run never leaves half a JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def shared_corpus(limit_chars: int | None = None) -> list[str] | None:
    """Documents of the three real corpora in ``../shared/data/text`` (None when the folder is absent).

    Wikipedia (WikiText-2 valid, one document per article), Shakespeare (one per ~3,000 characters,
    cut at blank lines) and the Python docs (one per .rst file). The order is a fixed shuffle, so any
    prefix mixes the three domains and the held-out split (the last rows) is unseen documents.
    """
    import random

    wiki, plays, docs = (SHARED_TEXT / n for n in ('wikitext2-valid.txt', 'tinyshakespeare.txt', 'python_docs.jsonl'))
    if not all(p.is_file() for p in (wiki, plays, docs)):
        return None
    texts: list[str] = []
    article: list[str] = []
    for line in wiki.read_text(encoding='utf-8').splitlines(keepends=True):
        if line.startswith(' = ') and not line.startswith(' = = ') and article:
            texts.append(''.join(article).strip())
            article = []
        article.append(line)
    texts.append(''.join(article).strip())
    chunk = ''
    for part in plays.read_text(encoding='utf-8').split('\n\n'):
        chunk += part + '\n\n'
        if len(chunk) >= 3000:
            texts.append(chunk.strip())
            chunk = ''
    texts.append(chunk.strip())
    with docs.open(encoding='utf-8') as f:
        texts.extend(json.loads(line)['text'] for line in f if line.strip())
    texts = [t for t in texts if t]
    random.Random(0).shuffle(texts)
    if limit_chars is not None:
        kept, total = [], 0
        for t in texts:
            kept.append(t)
            total += len(t)
            if total >= limit_chars:
                break
        texts = kept
    return texts


def param_counts(model: Any) -> dict[str, int]:
    """Total, embedding (input embeddings + untied LM head) and non-embedding parameter counts."""
    seen: set[int] = set()
    total = embedding = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if any(k in name for k in ('embed', 'wte', 'lm_head', 'wpe')):
            embedding += p.numel()
    return {'total': total, 'embedding': embedding, 'non_embedding': total - embedding}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` counted by torch's ``FlopCounterMode`` (matmuls, attention; elementwise ops are free)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
    except OSError:
        return float('nan')
