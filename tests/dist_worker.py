"""``scripts/train.py`` plus a per-rank JSON dump of what the distributed tests check.

Launched by the tests exactly as users launch training, with Composer's launcher::

    composer -n 2 tests/dist_worker.py <out_dir> <config>.yaml [key=value ...]

It runs llm-foundry's ``train_from_yaml`` unchanged (pass ``loggers={inmemory: {}}``) and
then writes ``<out_dir>/rank<r>.json``: the logged metrics at full precision, the
student's parameter names, the LET projection weight (gathered under FSDP), the class
of the wrapped student block and how often each rank loaded the teacher.

``LET_TEST_FAKE_HUB=<folder>`` stands in for the Hugging Face hub (there is no network in
CI): ``snapshot_download`` sleeps briefly and returns ``<folder>``, recording when each
rank called it, so a test can see that local rank 0 downloads before the others.

``LET_TEST_FSDP1_ON_CPU=1`` lets Composer's FSDP1 path run on CPU: its only CUDA call,
``device_id=torch.cuda.current_device()`` in ``prepare_fsdp_module``, returns the CPU
device instead (torch's FSDP1 itself runs on CPU with gloo). Nothing else is changed.

``LET_TEST_RANK1_AUTO_STOP='{"warmup": 1000}'`` gives rank 1's ``stop: auto`` rule other settings
than rank 0's (``AutoStop`` fields), so the ranks decide differently from the same all-reduced
numbers and only LET's broadcast of rank 0's decision makes them agree.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

METRICS = (
    'loss/train/total',
    'loss/train/let_align',
    'let/lambda',
    'let/cosine',
    'let/grad_ratio',
    'let/stop_fired_at',
)
_events: dict[str, list[Any]] = {'teacher_loads': [], 'hub_calls': []}


def _spy_teacher_loads() -> None:
    import composer_let.teacher as teacher

    load = teacher.load_teacher

    def counted(*args: Any, **kwargs: Any):
        _events['teacher_loads'].append(str(args[0]))
        return load(*args, **kwargs)

    teacher.load_teacher = counted


def _fake_hub(folder: str) -> None:
    import huggingface_hub

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        start = time.time()
        time.sleep(1.0)
        _events['hub_calls'].append({'repo_id': repo_id, 'start': start, 'end': time.time()})
        return folder

    huggingface_hub.snapshot_download = snapshot_download


def _rank1_auto_stop(settings: dict[str, Any]) -> None:
    """On rank 1 only: ``AutoStop`` with ``settings`` overriding its fields (after the YAML's)."""
    if os.environ.get('RANK') != '1':
        return
    import composer_let.algorithm as algorithm

    class Rank1AutoStop(algorithm.AutoStop):
        def __post_init__(self) -> None:
            super().__post_init__()
            for name, value in settings.items():
                setattr(self, name, value)

    algorithm.AutoStop = Rank1AutoStop


def _projection(model: Any) -> list | None:
    """The full ``let_projection`` weight; gathering it is a collective under FSDP, so every rank calls this."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    from composer_let.layers import find_module

    try:
        module = find_module(model, 'let_projection')
    except ValueError:
        return None
    if isinstance(module, FullyShardedDataParallel):  # FSDP1: the flat shard, gathered for the read
        with FullyShardedDataParallel.summon_full_params(module):
            return module.module.weight.detach().clone().tolist()
    weight = module.weight
    if hasattr(weight, 'full_tensor'):  # FSDP2: a DTensor shard
        weight = weight.full_tensor()
    return weight.detach().cpu().tolist()


def main(out_dir: str, yaml_path: str, overrides: list[str]) -> None:
    import streaming_prefix_lock

    streaming_prefix_lock.install()
    _spy_teacher_loads()
    if os.environ.get('LET_TEST_FAKE_HUB'):
        _fake_hub(os.environ['LET_TEST_FAKE_HUB'])
    if os.environ.get('LET_TEST_RANK1_AUTO_STOP'):
        _rank1_auto_stop(json.loads(os.environ['LET_TEST_RANK1_AUTO_STOP']))
    if os.environ.get('LET_TEST_FSDP1_ON_CPU'):
        import torch

        torch.cuda.current_device = lambda: torch.device('cpu')

    from composer.loggers import InMemoryLogger
    from composer.utils import dist
    from llmfoundry.command_utils import train_from_yaml

    from composer_let import LET
    from composer_let.layers import find_module

    trainer = train_from_yaml(yaml_path, overrides)
    state = trainer.state
    memory = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    let = next(a for a in state.algorithms if isinstance(a, LET))
    model = state.model
    facts = {
        'rank': dist.get_global_rank(),
        'world_size': dist.get_world_size(),
        'metrics': {k: [float(v) for _, v in memory.data.get(k, [])] for k in METRICS},
        'param_names': [n for n, _ in model.named_parameters()],
        'model_class': type(model).__name__,
        'block_class': type(find_module(model, let.wiring.student_path)).__name__,
        'projection': _projection(model),
        'active_at_end': let.active,
        **_events,
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f'rank{facts["rank"]}.json').write_text(json.dumps(facts))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
