"""Serialise streaming's shared-memory prefix registration between processes started on one host.

``StreamingDataset`` picks the first free prefix (``/000123_locals`` ...) and creates it in two steps,
so two processes building a dataset at the same moment can pick the same one and the second fails with
``FileExistsError: [Errno 17] File exists: '/000123_locals'`` (mosaicml/streaming#884, #901, open).
``bench/convergence.py --jobs 2`` starts two training runs at once, ``bench/overhead.py`` starts its
arms in lockstep, and ``scripts/test.sh`` runs two test files at a time: all hit it. ``install()`` wraps
the function that ``StreamingDataset`` calls so that the local leader holds an exclusive file lock from
the search to the creation. Every rank searches for the prefix on its own, so the other ranks start
their search only once their leader holds the lock (a barrier): otherwise another job can register the
prefix a rank chose before its leader does ("shared memory registered does not match local leader", seen
in CI). Nothing else of streaming changes. Installed by the benchmarks' training subprocesses,
``tests/conftest.py`` and the 2-process test workers.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import Any

LOCK = Path(tempfile.gettempdir()) / 'composer-let-streaming-prefix.lock'


def install() -> None:
    import streaming.base.dataset as dataset

    original = dataset.get_shm_prefix
    if getattr(original, 'serialised', False):
        return

    def get_shm_prefix(streams_local: Any, streams_remote: Any, world: Any, *args: Any, **kwargs: Any) -> Any:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if not world.is_local_leader:
            if distributed:
                dist.barrier()  # the leader holds the lock now: our search below is safe from other jobs
            return original(streams_local, streams_remote, world, *args, **kwargs)
        with open(LOCK, 'a') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if distributed:
                    dist.barrier()
                return original(streams_local, streams_remote, world, *args, **kwargs)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    get_shm_prefix.serialised = True  # type: ignore[attr-defined]
    dataset.get_shm_prefix = get_shm_prefix
