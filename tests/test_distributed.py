"""LET across processes on CPU (gloo), launched as users launch: ``composer -n 2 <train script> <yaml>``.

The 2-process runs (``tests/dist_worker.py`` = ``scripts/train.py`` + a JSON dump per rank) are
compared with the same YAML trained in one process with the same global batch:

* DDP, with gradient accumulation (1 row per microbatch) and ``projection: linear`` across ``stop``;
  the teacher given as a hub id (the hub faked, no network) to see local rank 0 download first.
* FSDP2 (``FSDP_VERSION=2`` + llm-foundry's ``fsdp_config``): MPT with activation checkpointing and
  ``projection: linear``; Llama without.
* FSDP1, the GPU path: Composer's own FSDP1 wrapping with reentrant activation checkpointing. Composer
  passes ``device_id=torch.cuda.current_device()``, so the worker points that one call at the CPU
  (``LET_TEST_FSDP1_ON_CPU``); everything else is Composer's and torch's FSDP1 unchanged.

Single-process tests: gradient accumulation (microbatches vs the whole batch) and mixed precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import composer_let.guidance

from conftest import ROOT, composer_two_processes, in_memory, tiny_variables, yaml_path

KEYS = ('loss/train/total', 'loss/train/let_align', 'let/lambda', 'let/cosine', 'let/grad_ratio')
# 4 batches of 4 rows; λ from 0.1 to 0 at batch 2, so batches 3-4 run after stop with an idle projection.
# No warmup: Composer's warmup gives lr 0 to the first two steps, which would leave the projection untrained.
MPT_RUN = ('max_duration=4ba', 'algorithms.let.stop=2ba', 'algorithms.let.projection=linear', 'eval_interval=4ba')
MPT_RUN = (*MPT_RUN, 'scheduler.t_warmup=0ba')
LLAMA_RUN = ('max_duration=4ba', 'algorithms.let.stop=2ba', 'eval_interval=4ba', 'scheduler.t_warmup=0ba')
# Relative; the ranks reduce in another order than one process. Measured: DDP/FSDP1 <= 8e-8, FSDP2 <= 5e-6.
LOSS_TOLERANCE = 1e-4
ALIGN_TOLERANCE = 1e-6  # absolute, on values ~0.01 (measured <= 1.5e-7)


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


def run_in_process(assets: dict[str, Path], workdir: Path, name: str, *overrides: str):
    """llm-foundry's train_from_yaml in this process (the conftest ``train`` fixture, usable module-wide)."""
    from llmfoundry.command_utils import train_from_yaml

    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return train_from_yaml(yaml_path(name), [*base_overrides(assets), *overrides])
    finally:
        os.chdir(cwd)


def base_overrides(assets: dict[str, Path]) -> list[str]:
    return [
        *tiny_variables(assets),
        'loggers={inmemory: {}}',
    ]


@pytest.fixture(scope='module')
def single(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One-process references (same YAML, same global batch of 4), with checkpoints after every batch."""
    references = {}
    for name, run in (('mpt-let', MPT_RUN), ('llama-let', LLAMA_RUN)):
        workdir = tmp_path_factory.mktemp(name)
        trainer = run_in_process(assets, workdir, name, *run, f'save_folder={workdir}/ckpt', 'save_interval=1ba')
        projection = getattr(trainer.state.model, 'let_projection', None)
        references[name] = {
            'metrics': {k: values(trainer, k) for k in KEYS},
            'param_names': sorted(n for n, _ in trainer.state.model.named_parameters()),
            'projection': None if projection is None else projection.weight.detach().clone(),
            'ckpt': workdir / 'ckpt',
        }
    return references


def launch(tmp_path: Path, name: str, *overrides: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``composer -n 2 tests/dist_worker.py <yaml> ...``; returns each rank's JSON facts."""
    out = tmp_path / 'ranks'
    result, logs = composer_two_processes(
        tmp_path, ROOT / 'tests' / 'dist_worker.py', str(out), yaml_path(name), *overrides, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    return [json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1)]


def clean(name: str) -> str:
    from composer_let.layers import clean_path

    return clean_path(name)


def assert_matches_one_process(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Both ranks log the one-process losses, λ and (averaged over ranks) cosines; same trainable parameters."""
    assert [r['world_size'] for r in ranks] == [2, 2]
    metrics = [r['metrics'] for r in ranks]
    expected = reference['metrics']
    for key in ('loss/train/total', 'loss/train/let_align'):
        assert metrics[0][key] == metrics[1][key], key  # all-reduced by Composer: identical on the ranks
    assert metrics[0]['loss/train/total'] == pytest.approx(expected['loss/train/total'], rel=LOSS_TOLERANCE)
    # After stop, DDP logs the zero term that keeps the idle projection in its gradient reduction.
    align, active = metrics[0]['loss/train/let_align'], len(expected['loss/train/let_align'])
    assert align[:active] == pytest.approx(expected['loss/train/let_align'], abs=ALIGN_TOLERANCE)
    assert align[active:] == (
        [0.0] * (len(align) - active) if ranks[0]['model_class'] == 'DistributedDataParallel' else []
    )
    assert metrics[0]['let/lambda'] == metrics[1]['let/lambda'] == expected['let/lambda']
    # LET reduces its statistics across ranks: both log the whole batch's cosine and gradient ratio.
    for key in ('let/cosine', 'let/grad_ratio'):
        assert metrics[0][key] == metrics[1][key], key
    assert metrics[0]['let/cosine'] == pytest.approx(expected['let/cosine'], abs=ALIGN_TOLERANCE)
    assert metrics[0]['let/grad_ratio'] == pytest.approx(expected['let/grad_ratio'], rel=LOSS_TOLERANCE)
    for rank in ranks:
        # The teacher: loaded once per rank, never part of the wrapped (DDP/FSDP) model.
        assert len(rank['teacher_loads']) == 1
        assert sorted(clean(n) for n in rank['param_names']) == reference['param_names']
        assert not rank['active_at_end']  # released after stop


def assert_projection(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """The learned projection is the same on both ranks and equals the one-process one."""
    first, second = (torch.tensor(r['projection']) for r in ranks)
    assert torch.equal(first, second)
    # Adam turns reduction-order noise into ~1e-5 weight differences (measured 2e-5 under FSDP2).
    assert torch.allclose(first, reference['projection'], atol=1e-4), (first - reference['projection']).abs().max()


def assert_checkpoint(path: Path, reference: dict[str, Any], projection: list | None) -> dict[str, Any]:
    """Rank 0's checkpoint holds exactly the one-process model keys (no teacher) and the final projection."""
    state = torch.load(path, weights_only=False)['state']
    expected = torch.load(reference['ckpt'] / path.name, weights_only=False)['state']
    assert set(state['model']) == set(expected['model'])
    if projection is not None:
        assert torch.equal(state['model']['let_projection.weight'], torch.tensor(projection))
    saved_let = dict(state['algorithms'])['LET']  # LET keeps no tensors of its own
    assert not any(isinstance(v, torch.Tensor) for v in saved_let.values())
    return state


@pytest.mark.slow
def test_ddp_matches_one_process(assets, single, tmp_path: Path) -> None:
    """``composer -n 2`` with DDP: same losses as one process, projection in sync and restorable."""
    ranks = launch(
        tmp_path,
        'mpt-let',
        *base_overrides(assets),
        *MPT_RUN,
        'device_train_microbatch_size=1',  # 2 rows per rank -> 2 microbatches (DDP no_sync + accumulation)
        f'save_folder={tmp_path}/ckpt',
        'save_interval=1ba',
        'algorithms.let.teacher=tiny-org/tiny-teacher',  # a hub id; the worker fakes the hub
        f'tokenizer.name={assets["teacher"]}',
        env={'LET_TEST_FAKE_HUB': str(assets['teacher'])},
    )
    reference = single['mpt-let']
    assert all(r['model_class'] == 'DistributedDataParallel' for r in ranks)
    assert_matches_one_process(ranks, reference)
    assert_projection(ranks, reference)  # trained before stop, untouched after it (like one process)
    assert all(r['teacher_loads'] == [str(assets['teacher'])] for r in ranks)

    # The hub download: local rank 0 first, the other rank only after it finished (no race on the cache).
    (call0,), (call1,) = (r['hub_calls'] for r in ranks)
    assert call0['repo_id'] == call1['repo_id'] == 'tiny-org/tiny-teacher'
    assert call1['start'] >= call0['end']

    assert_checkpoint(tmp_path / 'ckpt' / 'ep0-ba4-rank0.pt', reference, ranks[0]['projection'])

    def saved_projection(folder: Path, batch: int) -> torch.Tensor:
        state = torch.load(folder / f'ep0-ba{batch}-rank0.pt', weights_only=False)['state']
        return state['model']['let_projection.weight']

    for folder in (reference['ckpt'], tmp_path / 'ckpt'):  # one process, then DDP
        assert not torch.equal(saved_projection(folder, 1), saved_projection(folder, 2))  # trains while λ > 0
        assert torch.equal(saved_projection(folder, 2), saved_projection(folder, 4))  # then frozen: no drift

    # The DDP checkpoint after batch 1 (λ still > 0) restores the projection: one process resumes it
    # and logs the 2-process losses of batches 2-4.
    resumed = run_in_process(
        assets, tmp_path / 'resume', 'mpt-let', *MPT_RUN, f'load_path={tmp_path}/ckpt/ep0-ba1-rank0.pt'
    )
    logged = ranks[0]['metrics']
    assert values(resumed, 'loss/train/total') == pytest.approx(logged['loss/train/total'][1:], rel=LOSS_TOLERANCE)
    resumed_align = values(resumed, 'loss/train/let_align')
    assert resumed_align == pytest.approx(logged['loss/train/let_align'][1:2], abs=ALIGN_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize(
    ('name', 'run', 'fsdp', 'block'),
    [
        (
            'mpt-let',
            MPT_RUN,
            '{mixed_precision: FULL, activation_checkpointing: true, state_dict_type: full}',
            'CheckpointWrapper',
        ),
        ('llama-let', LLAMA_RUN, '{mixed_precision: FULL, state_dict_type: full}', 'FSDPLlamaDecoderLayer'),
    ],
    ids=['mpt-activation-checkpointing-linear', 'llama'],
)
def test_fsdp2_matches_one_process(
    assets, single, tmp_path: Path, name: str, run: tuple, fsdp: str, block: str
) -> None:
    """FSDP2 (``FSDP_VERSION=2``): same losses as one process; the hook sits on the outermost block wrapper."""
    ranks = launch(
        tmp_path,
        name,
        *base_overrides(assets),
        *run,
        f'fsdp_config={fsdp}',
        f'save_folder={tmp_path}/ckpt',
        'save_interval=4ba',
        env={'FSDP_VERSION': '2'},
    )
    reference = single[name]
    assert all(r['block_class'] == block for r in ranks)
    assert_matches_one_process(ranks, reference)
    if reference['projection'] is not None:
        assert_projection(ranks, reference)
    assert_checkpoint(tmp_path / 'ckpt' / 'ep0-ba4-rank0.pt', reference, ranks[0]['projection'])


@pytest.mark.slow
def test_fsdp1_with_reentrant_activation_checkpointing(assets, single, tmp_path: Path) -> None:
    """Composer's FSDP1 wrapping (what GPU users get): block k is FSDP(CheckpointWrapper(block), reentrant)."""
    ranks = launch(
        tmp_path,
        'mpt-let',
        *base_overrides(assets),
        *MPT_RUN,
        'fsdp_config={mixed_precision: FULL, activation_checkpointing: true, '
        'activation_checkpointing_reentrant: true, state_dict_type: full}',
        env={'LET_TEST_FSDP1_ON_CPU': '1'},
    )
    assert all(r['block_class'] == 'FullyShardedDataParallel' for r in ranks)
    assert all('_checkpoint_wrapped_module' in ''.join(r['param_names']) for r in ranks)
    assert_matches_one_process(ranks, single['mpt-let'])
    assert_projection(ranks, single['mpt-let'])


def test_gradient_accumulation_runs_the_teacher_per_microbatch(train, monkeypatch: pytest.MonkeyPatch) -> None:
    """``device_train_microbatch_size`` 1 (4 microbatches) logs the losses of the unsplit batch of 4."""
    runners = []

    def spy(*args, **kwargs):
        runners.append(acquire(*args, **kwargs))
        return runners[-1]

    acquire = composer_let.guidance.start_teacher
    monkeypatch.setattr(composer_let.guidance, 'start_teacher', spy)
    run = ('max_duration=3ba', 'algorithms.let.stop=2ba', 'eval_interval=3ba', 'algorithms.let.teacher_dtype=bf16')
    whole = train('mpt-let', *run)
    split = train('mpt-let', *run, 'device_train_microbatch_size=1')
    for key in ('loss/train/total', 'loss/train/let_align', 'let/cosine'):
        assert values(split, key) == pytest.approx(values(whole, key), rel=LOSS_TOLERANCE, abs=1e-6), key
    # One probe forward at start, then one per microbatch until stop (2 batches): 1 + 2 and 1 + 2 * 4.
    assert [r.forwards for r in runners] == [3, 9]


def test_mixed_precision_on_cpu_is_refused_by_composer(train) -> None:
    """Composer 0.32 refuses ``amp_bf16``/``amp_fp16`` on CPU before LET is involved (no CPU autocast)."""
    with pytest.raises(ValueError, match='not supported for CPU training'):
        train('mpt-let', 'precision=amp_bf16')
