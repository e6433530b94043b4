"""``projection: linear``: a learned ``d_S -> d_T`` map from the student's hooked state into the teacher's width.

It lives on the Composer model as ``let_projection``, so DDP/FSDP wrap it, the run's optimizer trains it
and checkpoints save it::

    projection = attach_projection(state, width_s=2048, width_t=576)   # at Event.INIT
    aligned = projection(h_student)                                      # (batch, seq, 576)
"""

from __future__ import annotations

import math

import torch
from composer.core import State
from torch import nn


class SeededLinear(nn.Linear):
    """A bias-free ``nn.Linear`` initialised from the run's rank-zero seed on every rank.

    Composer seeds every rank differently (seed + rank), and with ``init_device: meta`` FSDP calls
    ``reset_parameters`` on each rank's shard after sharding: drawing the full weight from one seed
    and keeping this rank's part gives the same weight for any world size and init device.
    """

    def __init__(self, width_in: int, width_out: int, seed: int, device: torch.device | str | None = None):
        self.seed = seed
        super().__init__(width_in, width_out, bias=False, device=device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return  # materialised later (FSDP's meta init calls this again on the real shard)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            full = nn.init.kaiming_uniform_(torch.empty(self.weight.shape), a=math.sqrt(5))
        weight = self.weight
        if hasattr(weight, 'device_mesh'):  # an FSDP2 shard (DTensor): this rank's rows of the same draw
            from torch.distributed.tensor import distribute_tensor

            shard = distribute_tensor(full, weight.device_mesh, weight.placements, src_data_rank=None).to_local()
            weight.to_local().copy_(shard)
        else:
            weight.copy_(full.to(weight.device, weight.dtype))

    def param_init_fn(self, module: nn.Module) -> None:  # Composer prefers a module's own over the model's
        module.reset_parameters()


def attach_projection(state: State, width_s: int, width_t: int, key: str) -> SeededLinear:
    """Put a :class:`SeededLinear` on ``state.model`` as ``let_projection`` and in the optimizer (``Event.INIT``)."""
    if not state.optimizers:
        raise ValueError(f'{key}=linear needs an optimizer to train the projection.')
    device = next(state.model.parameters()).device
    projection = SeededLinear(width_s, width_t, seed=state.rank_zero_seed, device=device)
    state.model.let_projection = projection
    optimizer = state.optimizers[0] if isinstance(state.optimizers, (list, tuple)) else state.optimizers
    optimizer.add_param_group({'params': list(projection.parameters())})
    return projection
