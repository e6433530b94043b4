"""Benchmark-only knobs on a target model, as Composer callbacks that llm-foundry builds from ``callbacks:``.

ScaleEmbedding.register()   # in the training process, before train_from_yaml
train_from_yaml(yaml, [..., 'callbacks.bench_scale_embedding.factor=16'])
"""

from __future__ import annotations

import torch
from composer.core import Callback, State
from composer.loggers import Logger


class ScaleEmbedding(Callback):
    """Multiplies the model's input embedding (tied: also its LM head) by ``factor`` at ``Event.INIT``.

    The width-free control of the strength study (issue 29): with pre-norm blocks and a tied head, the
    residual stream at the hooked block grows ``factor``-fold while the CE's gradient there stays about
    the same (the head grows as the final norm divides), so the cosine alignment's pull per unit of λ,
    ``∝ 1 / ‖h‖``, falls about ``factor``-fold at a fixed width.
    """

    name = 'bench_scale_embedding'

    def __init__(self, factor: float):
        self.factor = float(factor)

    def init(self, state: State, logger: Logger) -> None:
        del logger
        model = getattr(state.model, 'model', state.model)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(self.factor)

    @classmethod
    def register(cls) -> None:
        from llmfoundry.registry import callbacks

        if cls.name not in callbacks.get_all():
            callbacks.register(cls.name, func=cls)
