"""scripts/gpu_check.py: one line without CUDA; ``--cpu-smoke`` runs the GPU path for real at tiny sizes on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT

SCRIPT = ROOT / 'scripts' / 'gpu_check.py'


def gpu_check() -> ModuleType:
    if 'gpu_check' not in sys.modules:
        spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
        sys.modules['gpu_check'] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules['gpu_check']


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The script as users run it (``scripts/gpu_check.sh`` execs it), with no CUDA device visible."""
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_without_cuda_it_says_so_in_one_line_and_fails(tmp_path: Path) -> None:
    result = run(tmp_path, '--out', str(tmp_path / 'out'))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2
    assert lines == [gpu_check().NO_CUDA] and '--cpu-smoke' in lines[0]
    assert not (tmp_path / 'out').exists()  # nothing was started


def test_cpu_smoke_runs_the_gpu_path_and_its_checks_pass(tmp_path: Path) -> None:
    out = tmp_path / 'out'
    result = run(tmp_path, '--cpu-smoke', '--out', str(out))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    plan = report['plan']
    stop, total = plan['warmup'] + plan['active'], plan['total']
    assert set(report) == {
        'mode', 'plan', 'peak_tflops', 'seconds', 'errors', 'environment', 'teacher', 'assets', 'student',
        'fsdp_enabled', 'arms', 'overhead', 'checks', 'ok',
    }  # fmt: skip
    assert report['mode'] == 'cpu-smoke' and report['ok'] and report['errors'] == {}
    env = report['environment']
    assert env['cuda'] is False and env['attention'] == 'sdpa' and env['versions']['llm-foundry'] == '0.22.0'
    assert {'installed', 'usable'} <= env['flash_attn'].keys()

    # Three real train_from_yaml runs of the 1.4B YAML (shrunk by overrides): baseline, LET, LET with λ0 = 0.
    arms = report['arms']
    assert set(arms) == {'baseline', 'let', 'let-lambda0'}
    assert [arms[a]['teacher_active_steps'] for a in ('baseline', 'let', 'let-lambda0')] == [0, stop, stop]
    for arm in arms.values():
        assert len(arm['step_times_s']) == len(arm['memory_mb_at_batch_end']) == total
        assert arm['precision'] == 'fp32' and arm['attention'] == 'sdpa' and arm['fsdp_enabled'] is False
        assert any('FSDP is not applicable for single-GPU training' in w for w in arm['warnings'])
        # 6 x matmul weights + 12 x layers x width x seq, by hand: 4 blocks of 64 (MLP 128), LM head 512 x 64.
        assert arm['student_flops_per_token'] == 6 * (4 * (4 * 64 * 64 + 3 * 64 * 128) + 512 * 64) + 12 * 4 * 64 * 64
        tokens = plan['batch'] * plan['seq']
        median = statistics.median(arm['step_times_s'][plan['warmup'] : stop])
        assert arm['tokens_per_s_teacher_active'] == pytest.approx(tokens / median)
        assert arm['mfu_teacher_active'] == pytest.approx(
            arm['student_flops_per_token'] * tokens / median / (report['peak_tflops'] * 1e12)
        )
        assert arm['peak_memory_mb'] > 0

    # The cost: medians of per-turn LET / baseline ratios over each window.
    cost, let, base = report['overhead'], arms['let']['step_times_s'], arms['baseline']['step_times_s']
    windows = {'teacher_active': range(plan['warmup'], stop), 'after_stop': range(stop + plan['settle'], total)}
    for window, turns in windows.items():
        ratios = [let[i] / base[i] for i in turns]
        assert cost[f'step_ratio_{window}']['n'] == len(ratios)
        assert cost[f'step_ratio_{window}']['median'] == pytest.approx(statistics.median(ratios))
    assert 0 < cost['teacher_share_of_let_step'] < 1 and cost['teacher_s_per_step'] > 0
    assert len(cost['grad_ratio_first_batches']) == 5 and all(g > 0 for g in cost['grad_ratio_first_batches'])
    assert cost['teacher_params'] > 0

    checks = report['checks']
    zero = checks['lambda0_zero_matches_baseline']
    assert zero['passed'] and zero['max_relative_difference'] == 0.0 and zero['steps_compared'] == total  # fp32 CPU
    cosine = checks['cosine_rises']
    assert cosine['passed'] and len(cosine['values']) == stop
    assert cosine['last_quarter_mean'] > max(cosine['first_quarter_mean'], cosine['lambda0_zero_last_quarter_mean'])
    freed = checks['teacher_freed']
    assert freed['passed'] and freed['teacher_alive_after_stop'] is False and freed['teacher_active_steps'] == stop

    table = (out / 'gpu_check.md').read_text()
    assert table.count('| PASS |') == 3 and 'FAIL' not in table and '| let-lambda0 |' in table
    assert 'CPU smoke' in table and 'Reverting to DDP' in table
    assert table in result.stdout


def test_checks_fail_when_the_runs_disagree() -> None:
    """The three checks on hand-made records: each fails on the fault it is there to catch."""
    module = gpu_check()
    plan = module.CPU_SMOKE
    stop, total = plan.stop, plan.total

    def record(losses: list[float], cosine: list[float], active: int, alive: bool | None, memory: float) -> dict:
        series = {'loss/train/total': losses, 'let/cosine': cosine}
        facts = {'series': series, 'teacher_alive_after_stop': alive, 'teacher_mb': 100.0, 'let_active_at_end': False}
        return {'facts': facts, 'active': [i < active for i in range(total)], 'memory_mb': [memory] * total}

    losses = [5.0 - 0.1 * i for i in range(total)]
    rising = [0.01 * i for i in range(stop)]
    good = {
        'baseline': record(losses, [], 0, None, 0.0),
        'let': record([x + 0.01 for x in losses], rising, stop, False, 0.0),
        module.LAMBDA0_ZERO: record(losses, [0.0] * stop, stop, False, 0.0),
    }
    assert all(c['passed'] for c in module.checks(good, plan, cuda=False).values())
    bad = {**good, module.LAMBDA0_ZERO: record([x * (1 + 1e-4) for x in losses], [0.0] * stop, stop, False, 0.0)}
    assert not module.checks(bad, plan, cuda=False)['lambda0_zero_matches_baseline']['passed']
    bad = {**good, 'let': record(losses, rising[::-1], stop, False, 0.0)}
    assert not module.checks(bad, plan, cuda=False)['cosine_rises']['passed']
    bad = {**good, module.LAMBDA0_ZERO: record(losses, [1.0] * stop, stop, False, 0.0)}  # λ0 = 0 aligns better
    assert not module.checks(bad, plan, cuda=False)['cosine_rises']['passed']
    bad = {**good, 'let': record(losses, rising, stop, True, 0.0)}
    assert not module.checks(bad, plan, cuda=False)['teacher_freed']['passed']
    # On CUDA the allocated memory must drop by the teacher's size at the release: here it does not move.
    assert not module.checks(good, plan, cuda=True)['teacher_freed']['passed']
