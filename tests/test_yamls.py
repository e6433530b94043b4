"""Every shipped YAML passes llm-foundry's own config validation and builds its algorithms."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmfoundry.command_utils.eval import allow_toplevel_keys
from llmfoundry.command_utils.train import TRAIN_CONFIG_KEYS, TrainConfig
from llmfoundry.utils.builders import build_algorithm
from llmfoundry.utils.config_utils import EVAL_CONFIG_KEYS, EvalConfig, make_dataclass_and_log_config
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
EVAL_YAMLS = sorted((ROOT / 'yamls' / 'eval').glob('*.yaml'))
TRAIN_YAMLS = sorted(p for p in (ROOT / 'yamls').glob('**/*.yaml') if p not in EVAL_YAMLS)


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / 'yamls'))


@pytest.mark.parametrize('path', TRAIN_YAMLS, ids=_id)
def test_train_yaml_validates_and_builds_algorithms(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('WORLD_SIZE', '64' if 'gpu' in path.parts else '1')  # batch math checks divisibility
    cfg = OmegaConf.load(path)
    _, train_cfg = make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')
    algorithms = {name: build_algorithm(name, kwargs) for name, kwargs in (train_cfg.algorithms or {}).items()}
    if '-let' in path.name or 'gpu' in path.parts:
        assert 'let' in algorithms
    if 'baseline' in path.name:
        assert not algorithms
    if 'gpu' in path.parts:
        assert train_cfg.precision == 'amp_bf16' and train_cfg.fsdp_config is not None
        let = train_cfg.algorithms['let']
        assert let['strength'] == 'relative' and let['teacher_norm'] == 'standardize' and let['strategy'] == 'L2E'


@pytest.mark.parametrize('path', EVAL_YAMLS, ids=_id)
def test_eval_yaml_validates(path: Path) -> None:
    """The same validation ``scripts/eval.py`` (llm-foundry's ``eval_from_yaml``) applies before it runs."""
    cfg = OmegaConf.load(path)
    _, eval_cfg = make_dataclass_and_log_config(
        cfg, EvalConfig, EVAL_CONFIG_KEYS, transforms=[allow_toplevel_keys], icl_tasks_required=False
    )
    assert eval_cfg.models and eval_cfg.icl_tasks and eval_cfg.eval_loader is not None
