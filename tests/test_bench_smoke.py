"""Smoke tests of the benchmark kit: both scripts run end to end at tiny sizes (not for numbers)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / 'bench'))


def _bench(name: str):
    return importlib.import_module(name)


def test_speedup_reads_steps_to_the_baseline_final_loss() -> None:
    convergence = _bench('convergence')
    baseline = [{'step': s, 'train_s': 2.0 * s, 'loss': loss} for s, loss in ((10, 5.0), (20, 4.0), (30, 3.0))]
    faster = [{'step': s, 'train_s': 3.0 * s, 'loss': loss} for s, loss in ((10, 4.0), (20, 3.0), (30, 2.5))]
    slower = [{'step': s, 'train_s': 2.0 * s, 'loss': loss} for s, loss in ((10, 5.5), (20, 4.5), (30, 3.5))]
    assert convergence.first_reach(baseline, 3.5) == pytest.approx(25.0)
    assert convergence.first_reach(baseline, 2.0) is None
    fast = convergence.speedup(baseline, faster)
    assert fast['reached'] and fast['speedup'] == pytest.approx(1.5)
    assert convergence.speedup(baseline, faster, 'train_s')['speedup'] == pytest.approx(1.0)  # 1.5x slower steps
    slow = convergence.speedup(baseline, slower)
    assert not slow['reached'] and slow['speedup'] == pytest.approx(25.0 / 30.0)


def test_overhead_smoke(tmp_path: Path) -> None:
    overhead = _bench('overhead')
    out = tmp_path / 'overhead.json'
    result = overhead.main(
        [
            '--smoke',
            '--families',
            'llama',
            '--dtypes',
            'fp32',
            '--threads',
            '1',
            '--out',
            str(out),
            '--cache',
            str(tmp_path / 'cache'),
        ]
    )
    assert json.loads(out.read_text())['config'] == result['config']
    steps = result['config']['warmup'] + result['config']['rounds']
    for family in ('llama',):  # the MPT path is the same code with another YAML; too slow to add here
        res = result[family]
        let, base = res['let-fp32'], res['baseline']
        assert let['teacher_active_steps'] == steps  # active exactly until S_stop ...
        assert not let['teacher_active_at_end'] and base['teacher_active_steps'] == 0  # ... then released
        assert (
            len(let['step_times_s'])
            == len(base['step_times_s'])
            == steps + result['config']['settle'] + result['config']['after']
        )
        for window in ('teacher_active', 'after_stop'):
            assert 0 < let[f'ratio_{window}']['median'] < math.inf
        assert 0 < res['flops_floor'] < 1
        assert let['peak_rss_mb'] > 0 and base['peak_rss_mb'] > 0
    comp = result['components']
    assert comp['flops']['teacher_lm_head_fwd'] > 0  # the head LET skips is real work
    assert all(
        comp[k]['median_ms'] > 0 for k in ('teacher_backbone_fp32', 'teacher_backbone_bf16', 'interpolate_width')
    )
    assert len(result['machine_start']['loadavg_1_5_15']) == 3


@pytest.mark.skipif(not (SHARED_DATA / 'text').is_dir(), reason=f'the real corpus {SHARED_DATA / "text"} is absent')
def test_convergence_smoke(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    convergence = _bench('convergence')
    argv = ['--smoke', '--results', str(tmp_path)]
    result = convergence.main(argv)
    teacher = AutoModelForCausalLM.from_pretrained(result['teacher']['folder'])
    assert teacher.config.vocab_size == result['config']['vocab']
    assert result['teacher']['eval_loss'] < math.log(result['config']['vocab'])  # pretraining learned something
    runs = {r['arm']['name']: r for r in result['runs']}
    assert set(runs) == {'baseline', 'let'}
    steps = result['config']['target']['steps']
    for run in runs.values():
        assert [p['step'] for p in run['eval_curve']] == list(range(5, steps + 1, 5))
    assert runs['let']['let_cosine_first_last'] is not None and runs['baseline']['let_cosine_first_last'] is None
    assert runs['baseline']['eval_curve'] != runs['let']['eval_curve']
    assert result['summary']['let']['speedup_steps']['n'] == 1
    assert (tmp_path / 'convergence-smoke' / 'convergence.png').stat().st_size > 10_000
    again = convergence.main(argv)  # everything cached: same numbers, no training
    assert again['runs'] == result['runs'] and again['teacher'] == result['teacher']
