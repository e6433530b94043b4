"""Benchmark runs that survive a killed process: Composer checkpoints, and a log that is in them.

A width-512 run of ``bench/convergence.py`` takes ~3 h on one thread, longer than a working session;
a run killed at the session's end used to be lost whole. Every run ``convergence.in_subprocess``
starts now checkpoints at each eval (``save_interval`` = ``eval_interval``, one checkpoint kept) and
autoresumes from it, so the next invocation of the same command continues it where it stopped:

    python bench/convergence.py --regime teacher-ahead --width 512 --jobs 2 ...   # killed at batch 410
    python bench/convergence.py --regime teacher-ahead --width 512 --jobs 2 ...   # resumes at batch 400

The series a run reports (``let/grad_ratio`` per batch, the eval curve) are read from an
``InMemoryLogger`` at the end; ``CheckpointedLog`` is one whose data is part of the checkpoint, so a
resumed run reports every batch, not only those after the resume. ``tests/test_bench_smoke.py``
checks that a run killed after its first checkpoint and resumed reports what the uninterrupted run did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from composer.core import Callback, State, Timestamp
from composer.loggers import InMemoryLogger, Logger


class CheckpointedLog(InMemoryLogger):
    """``InMemoryLogger`` whose logged series are saved in, and restored from, Composer checkpoints.

    ``resumed_at``: the batch of each checkpoint this run resumed from (empty: never resumed).
    """

    name = 'bench_inmemory'

    def __init__(self) -> None:
        super().__init__()
        self.resumed_at: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        data = {key: [(ts.state_dict(), float(v)) for ts, v in values] for key, values in self.data.items()}
        return {'data': data, 'resumed_at': list(self.resumed_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data = {key: [(_timestamp(ts), v) for ts, v in values] for key, values in state['data'].items()}
        batches = [int(ts.batch) for values in self.data.values() for ts, _ in values]
        self.resumed_at = [*state['resumed_at'], max(batches, default=0)]


def _timestamp(state: dict[str, Any]) -> Timestamp:
    timestamp = Timestamp()
    timestamp.load_state_dict(state)
    return timestamp


class ExitAt(Callback):
    """Ends the process as a kill would (``os._exit``, no cleanup) at the start of batch ``batch + 1``:
    after the checkpoint of batch ``batch``. For the resume test only."""

    name = 'bench_exit_at'

    def __init__(self, batch: int):
        self.batch = int(batch)

    def batch_start(self, state: State, logger: Logger) -> None:
        del logger
        if int(state.timestamp.batch) == self.batch:
            os._exit(75)


def checkpoint_args(folder: Path) -> list[str]:
    """``train_from_yaml`` overrides: one checkpoint in ``folder`` at each eval, resumed from if present."""
    return [
        f'save_folder={folder}',
        'save_interval=${eval_interval}',
        'save_num_checkpoints_to_keep=1',
        'autoresume=true',
    ]


def drop_unfinished(folder: Path) -> None:
    """Delete every checkpoint in ``folder`` but the one ``latest-rank0.pt`` points to (all if none does).

    Composer moves that link only once a checkpoint is written, so any other file is older (a process keeps
    only its own checkpoints rotated) or one a killed process was writing, and Composer refuses to resume
    beside a checkpoint later than the one it loads.
    """
    latest = folder / 'latest-rank0.pt'
    keep = latest.resolve() if latest.is_symlink() and latest.exists() else None
    for path in folder.glob('*.pt'):
        if path != latest and path.resolve() != keep:
            path.unlink()
    if keep is None:
        latest.unlink(missing_ok=True)


def register() -> None:
    """Make ``loggers: {bench_inmemory: {}}`` and ``callbacks: {bench_exit_at: ...}`` buildable by llm-foundry."""
    from llmfoundry.registry import callbacks, loggers

    if CheckpointedLog.name not in loggers.get_all():
        loggers.register(CheckpointedLog.name, func=CheckpointedLog)
    if ExitAt.name not in callbacks.get_all():
        callbacks.register(ExitAt.name, func=ExitAt)
