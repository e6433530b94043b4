"""Capture one module's output per training microbatch, without changing what flows on.

The functional piece under ``LET``; usable on any ``nn.Module``::

    capture = OutputCapture(model.model.layers[3], transform=probe.watch)
    capture.arm()            # before the forward
    logits = model(batch)
    hidden = capture.pop()   # the block's output of this forward (transformed), or None
    capture.remove()

The hook returns ``None``, so the module's output is never replaced, and it keeps only the
first call after :meth:`arm`: activation checkpointing may run the module again during the
backward, and that recomputation must not overwrite the tensor the loss was built on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def first_tensor(output: Any) -> torch.Tensor:
    """A block's hidden state: the output itself or its first element (MPT: 3-tuple, HF: 1-tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class OutputCapture:
    """Keeps ``transform(first tensor of module's output)`` for the first forward after :meth:`arm`."""

    def __init__(self, module: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self._transform = transform
        self._armed = False
        self._value: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._armed or self._value is not None:
            return
        hidden = first_tensor(output)
        # The transform runs inside the module's forward, where FSDP still has its weights gathered.
        self._value = hidden if self._transform is None else self._transform(hidden)

    def arm(self) -> None:
        self._armed, self._value = True, None

    def disarm(self) -> None:
        self._armed = False

    def pop(self) -> torch.Tensor | None:
        value, self._value = self._value, None
        return value

    def remove(self) -> None:
        self._handle.remove()
        self._armed, self._value = False, None
