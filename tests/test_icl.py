"""Downstream evaluation through llm-foundry's own evaluator with yamls/eval/icl.yaml (a few rows per task)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from conftest import ICL_TASKS, ROOT, SHARED_DATA, icl_subset

ICL = SHARED_DATA / 'icl'
needs_icl = pytest.mark.skipif(not ICL.is_dir(), reason=f'{ICL} is absent (it is beside the repo on dev machines/CI)')


def _evaluate(tmp_path: Path, *overrides: str, only: tuple[str, ...] = ICL_TASKS) -> dict[str, float]:
    """llm-foundry's ``eval_from_yaml`` on the shipped yamls/eval/icl.yaml (its task list cut to ``only``)."""
    from composer.loggers import InMemoryLogger
    from llmfoundry.command_utils import eval_from_yaml
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / 'yamls' / 'eval' / 'icl.yaml')
    config.icl_tasks = [task for task in config.icl_tasks if task.label in only]
    yaml_path = tmp_path / 'icl.yaml'
    OmegaConf.save(config, yaml_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # llm-foundry writes each task's jsonl copy to the working directory
    try:
        trainers, _ = eval_from_yaml(str(yaml_path), [*overrides, 'loggers={inmemory: {}}'])
    finally:
        os.chdir(cwd)
    logger = next(d for d in trainers[0].logger.destinations if isinstance(d, InMemoryLogger))
    metrics = {key: float(values[-1][1]) for key, values in logger.data.items() if key.startswith('metrics/')}
    # How many examples each ICL accuracy counted (their torchmetrics ``total`` state), as scored/<label>.
    for label, by_name in trainers[0].state.eval_metrics.items():
        metrics.update({f'scored/{label}': int(m.total) for m in by_name.values() if hasattr(m, 'total')})
    return metrics


@needs_icl
def test_every_task_and_heldout_perplexity_on_a_tiny_model(assets: dict[str, Path], tmp_path: Path):
    metrics = _evaluate(
        tmp_path,
        f'variables.model={assets["teacher"]}',
        f'variables.data_local={assets["data"]}',
        f'variables.icl_dir={icl_subset(tmp_path / "icl", rows=4)}',
        'variables.max_seq_len=256',  # the tiny tokenizer spends many tokens on English
        # 16 sequences per batch: 2 batches (eval_batches also caps each ICL task) hold all 4 rows of every task,
        # 4-choice ones included (4 sequences per row).
        'variables.batch=16',
        'variables.eval_batches=2',
    )
    kinds = {'lambada_openai': 'InContextLearningLMAccuracy'}
    for task in ICL_TASKS:
        key = f'metrics/{task}/0-shot/{kinds.get(task, "InContextLearningMultipleChoiceAccuracy")}'
        assert metrics[f'scored/{task}/0-shot'] == 4, task  # every row of the subset, each once
        assert (4 * metrics[key]).is_integer(), key  # correct / 4
    # A random-init model over a 512-token vocabulary: held-out cross-entropy near ln(512) = 6.24.
    assert abs(metrics['metrics/eval/LanguageCrossEntropy'] - math.log(512)) < 0.5


@pytest.mark.slow
@needs_icl
def test_smollm2_scores_above_chance(smollm2: Path, tmp_path: Path):
    metrics = _evaluate(
        tmp_path,
        f'variables.model={smollm2}',
        f'variables.icl_dir={icl_subset(tmp_path / "icl", rows=16)}',
        'variables.max_seq_len=128',
        'variables.batch=16',
        'eval_loader=null',
        only=('lambada_openai', 'arc_easy'),
    )
    lambada = metrics['metrics/lambada_openai/0-shot/InContextLearningLMAccuracy']
    arc_easy = metrics['metrics/arc_easy/0-shot/InContextLearningMultipleChoiceAccuracy']
    # A broken tokenizer or teacher scores ~0 on lambada and ~0.25 (chance) on arc_easy.
    assert lambada > 0.1 and arc_easy > 0.4, (lambada, arc_easy)
