"""SALT end to end through llm-foundry's train_from_yaml, real MDS shards, a real (tiny) HF teacher.

Also the worker of the one 2-process test: ``composer -n 2 tests/test_salt.py <out_dir> <yaml> [k=v ...]``
runs ``train_from_yaml`` unchanged and writes ``<out_dir>/rank<r>.json`` with the logged metrics.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import sys
import weakref
from pathlib import Path
from typing import ClassVar

import pytest
from composer.core import Callback, State
from composer.loggers import Logger

METRICS = ('loss/train/total', 'loss/train/ce', 'loss/train/salt_kd', 'salt/weight')


def values(trainer, key: str) -> list[float]:
    from conftest import in_memory

    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


def salt_of(trainer):
    from composer_let import SALT

    return next(a for a in trainer.state.algorithms if isinstance(a, SALT))


def test_constructor_refuses_bad_input() -> None:
    from composer_let import SALT

    good = {'teacher': 'some/teacher'}
    for kwargs, message in [
        ({}, 'algorithms.salt.teacher is required'),
        ({**good, 'weight': 1.5}, r'algorithms.salt.weight=1.5 must be a number in \[0.0, 1.0\]'),
        ({**good, 'weight': True}, 'algorithms.salt.weight=True'),
        ({**good, 'temperature': 0}, r'algorithms.salt.temperature=0 must be a number in \(0.0, inf\)'),
        ({**good, 'temperature': float('nan')}, 'algorithms.salt.temperature=nan'),
        ({**good, 'stop': '-3ba'}, 'algorithms.salt.stop'),
        ({**good, 'stop': '10sec'}, 'algorithms.salt.stop'),
        ({**good, 'schedule': 'abrupt'}, "algorithms.salt.schedule='abrupt' is not one of linear, constant"),
        ({**good, 'teacher_dtype': 'int8'}, "algorithms.salt.teacher_dtype='int8'"),
        ({**good, 'chunk_tokens': 0}, 'algorithms.salt.chunk_tokens=0'),
        ({**good, 'omega': 0.5}, 'Unknown key.*omega.*Valid keys: teacher, weight'),
    ]:
        with pytest.raises(ValueError, match=message):
            SALT(**kwargs)


class TeacherSpy(Callback):
    """After every batch: the teacher runner each algorithm holds, the forwards and the layers it runs."""

    seen: ClassVar[list[dict]] = []

    def batch_end(self, state: State, logger: Logger) -> None:
        from composer_let import LET, SALT

        from conftest import runner_of

        runners = {type(a).__name__: runner_of(a) for a in state.algorithms if isinstance(a, (LET, SALT))}
        salt = runners.get('SALT')
        live = next((r for r in runners.values() if r is not None), None)
        TeacherSpy.seen.append(
            {
                'ids': {name: None if r is None else id(r) for name, r in runners.items()},
                'forwards': None if salt is None else salt.forwards,
                'model': None if salt is None else weakref.ref(salt.model),
                'layers': None if live is None else sorted(live.layers),
            },
        )


@pytest.fixture
def spy():
    from llmfoundry import registry

    registry.callbacks.register('salt_teacher_spy', func=TeacherSpy)
    TeacherSpy.seen = []
    return TeacherSpy


def test_salt_trains_mpt_with_a_padded_vocabulary(train, spy) -> None:
    """ω = 0.5 until stop (3 of 6 batches), then plain CE and the teacher freed; student vocab 576 > teacher 512."""
    trainer = train(
        'mpt-salt',
        'variables.vocab_size=576',  # padded to a multiple of 64 beyond the teacher's 512
        'device_train_microbatch_size=2',
        'callbacks={salt_teacher_spy: {}}',
    )
    assert trainer.state.model.model.transformer.wte.weight.shape[0] == 576
    assert values(trainer, 'salt/weight') == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    kd, ce, total = (values(trainer, f'loss/train/{k}') for k in ('salt_kd', 'ce', 'total'))
    assert len(kd) == len(ce) == 3 and len(total) == 6
    assert all(math.isfinite(k) and k > 0 for k in kd)
    for k, c, t in zip(kd, ce, total[:3], strict=True):
        assert t == pytest.approx(0.5 * c + 0.5 * k, rel=1e-5)
    # One width probe at start, then two microbatches per batch: two teacher forwards per active batch.
    assert [s['forwards'] for s in spy.seen[:3]] == [3, 5, 7]
    assert all(s['ids']['SALT'] is None for s in spy.seen[3:])
    salt = salt_of(trainer)
    assert not salt.active and salt._runner is None
    gc.collect()
    assert spy.seen[0]['model']() is None  # nothing holds the teacher's weights any more


def test_salt_linear_schedule_on_llama(train) -> None:
    trainer = train('llama-salt', 'algorithms.salt.schedule=linear', 'algorithms.salt.stop=3ba', 'max_duration=4ba')
    assert values(trainer, 'salt/weight') == pytest.approx([0.5, 0.5 * 2 / 3, 0.5 / 3, 0.0])
    kd, ce, total = (values(trainer, f'loss/train/{k}') for k in ('salt_kd', 'ce', 'total'))
    assert len(kd) == 3
    for w, k, c, t in zip(values(trainer, 'salt/weight')[:3], kd, ce, total[:3], strict=True):
        assert t == pytest.approx((1 - w) * c + w * k, rel=1e-5)


def test_let_and_salt_share_one_teacher_forward_per_microbatch(train, spy) -> None:
    trainer = train('llama-let-salt', 'device_train_microbatch_size=2', 'callbacks={salt_teacher_spy: {}}')
    active = spy.seen[:3]
    assert all(s['ids']['LET'] == s['ids']['SALT'] is not None for s in active)  # one loaded teacher
    forwards = [s['forwards'] for s in active]
    assert [b - a for a, b in itertools.pairwise(forwards)] == [2, 2]  # 2 microbatches -> 2 forwards, not 4
    assert forwards[0] <= 3  # at most LET's one width probe before the first batch's 2 forwards
    assert all(set(s['ids'].values()) == {None} for s in spy.seen[3:])

    weights, lambdas = values(trainer, 'salt/weight'), values(trainer, 'let/lambda')
    kd, align = values(trainer, 'loss/train/salt_kd'), values(trainer, 'loss/train/let_align')
    ce, total = values(trainer, 'loss/train/ce'), values(trainer, 'loss/train/total')
    assert weights == [0.5] * 3 + [0.0] * 3 and len(kd) == len(align) == 3
    for w, lam, k, a, c, t in zip(weights[:3], lambdas[:3], kd, align, ce, total[:3], strict=True):
        assert t == pytest.approx((1 - w) * c + w * k + lam * a, rel=1e-5)


@pytest.mark.parametrize('first', ['let', 'salt'])
def test_the_first_to_stop_withdraws_its_layer_from_the_shared_teacher(train, spy, first: str) -> None:
    """LET on teacher block 0 (no CEs) and SALT on the final block (1) share one runner; once one stops, the
    other's forwards no longer compute (nor copy) its layer."""
    stops = {'let': 2, 'salt': 4} if first == 'let' else {'let': 4, 'salt': 2}
    train(
        'llama-let-salt',
        'algorithms.let.teacher_layer=0',
        'algorithms.let.ce_tokens=0',
        f'algorithms.let.stop={stops["let"]}ba',
        f'algorithms.salt.stop={stops["salt"]}ba',
        'max_duration=4ba',
        'eval_interval=4ba',
        'eval_subset_num_batches=1',
        'callbacks={salt_teacher_spy: {}}',
    )
    kept = [1] if first == 'let' else [0]
    assert [s['layers'] for s in spy.seen] == [[0, 1], [0, 1], kept, kept]


def test_resume_is_exact_and_the_teacher_stays_out_of_checkpoints(train, tmp_path: Path) -> None:
    import torch

    common = ('max_duration=4ba', 'algorithms.salt.stop=3ba', 'eval_interval=4ba')
    full = train('mpt-salt', *common, f'save_folder={tmp_path}/ckpt', 'save_interval=1ba')
    full_total = values(full, 'loss/train/total')
    saved = torch.load(tmp_path / 'ckpt' / 'ep0-ba1-rank0.pt', weights_only=False)['state']['model']
    assert set(saved) == set(full.state.model.state_dict())  # student only: no teacher tensors

    # Resumed before stop: the teacher is loaded again and the run continues bit for bit.
    early = train('mpt-salt', *common, f'load_path={tmp_path}/ckpt/ep0-ba1-rank0.pt')
    assert values(early, 'salt/weight') == [0.5, 0.5, 0.0]
    assert len(values(early, 'loss/train/salt_kd')) == 2
    assert values(early, 'loss/train/total') == full_total[1:]

    # Resumed at stop: the teacher is never loaded.
    late = train('mpt-salt', *common, f'load_path={tmp_path}/ckpt/ep0-ba3-rank0.pt')
    assert salt_of(late)._runner is None and not values(late, 'loss/train/salt_kd')
    assert values(late, 'loss/train/total') == full_total[3:]


@pytest.fixture(scope='module')
def padded_teacher(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher with its vocabulary padded to 576 rows (like Pythia's 50304 for 50277 tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp('padded-teacher')
    config = LlamaConfig.from_pretrained(assets['teacher'])
    config.vocab_size = 576
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets['teacher']).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ('override', 'message'),
    [
        ('variables.teacher={padded}', r'student has 512 logits but the teacher 576.*model.vocab_size >= 576'),
        ('algorithms.salt.stop=7ba', r'algorithms.salt.stop=7ba is beyond max_duration=6ba'),
    ],
)
def test_bad_runs_fail_before_training(train, padded_teacher, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train('mpt-salt', override.format(padded=padded_teacher), f'save_folder={tmp_path}/ckpt')
    assert not (tmp_path / 'ckpt').exists() or not any((tmp_path / 'ckpt').iterdir())


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(train, assets, tmp_path: Path) -> None:
    """SALT under FSDP2 on 2 CPU processes logs the same losses as one process (same global batches)."""
    from conftest import composer_two_processes, tiny_variables, yaml_path

    overrides = ['max_duration=3ba', 'algorithms.salt.stop=2ba', 'eval_interval=3ba']
    single = train('mpt-salt', *overrides)
    out = tmp_path / 'dist'
    result, logs = composer_two_processes(
        tmp_path,
        __file__,
        str(out),
        yaml_path('mpt-salt'),
        *tiny_variables(assets),
        'loggers={inmemory: {}}',
        'fsdp_config={mixed_precision: FULL, state_dict_type: full}',
        'device_train_microbatch_size=2',
        *overrides,
        env={'FSDP_VERSION': '2'},
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:] + logs
    ranks = [json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert all(r['world_size'] == 2 and r['fsdp'] for r in ranks)
    for key in METRICS:
        assert ranks[0]['metrics'][key] == ranks[1]['metrics'][key]  # all-reduced: identical on both ranks
        assert ranks[0]['metrics'][key] == pytest.approx(values(single, key), rel=1e-4), key
    assert len(ranks[0]['metrics']['loss/train/salt_kd']) == 2


def _worker(out_dir: str, yaml: str, overrides: list[str]) -> None:
    import streaming_prefix_lock

    streaming_prefix_lock.install()
    from composer.loggers import InMemoryLogger
    from composer.utils import dist
    from llmfoundry.command_utils import train_from_yaml

    trainer = train_from_yaml(yaml, overrides)
    memory = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    facts = {
        'world_size': dist.get_world_size(),
        'fsdp': any('FSDP' in type(m).__name__ for m in trainer.state.model.modules()),
        'metrics': {k: [float(v) for _, v in memory.data.get(k, [])] for k in METRICS},
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f'rank{dist.get_global_rank()}.json').write_text(json.dumps(facts))


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2], sys.argv[3:])
