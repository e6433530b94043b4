"""λ(s): how strongly the teacher pulls on the student at training time s.

Every schedule is a pure function of ``progress = s / S_stop`` (``s`` and
``S_stop`` in the same unit) and is exactly 0 from ``progress >= 1`` on, which
is what lets the algorithm release the teacher after ``S_stop``.
"""

from __future__ import annotations

import math

SCHEDULES = ('linear', 'constant', 'cosine', 'step')
_STEP_STAIRS = 4


def schedule_weight(schedule: str, weight0: float, progress: float) -> float:
    """Return the loss weight at ``progress = s / S_stop``.

    * ``linear`` (the LET paper): ``λ0 · max(0, 1 - progress)``.
    * ``constant``: ``λ0`` until ``S_stop``, then 0 (SALT's abrupt switch).
    * ``cosine``: ``λ0 · (1 + cos(π · progress)) / 2`` until ``S_stop``, then 0.
    * ``step``: four equal stairs, ``λ0, ¾λ0, ½λ0, ¼λ0``, then 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f'schedule={schedule!r} is not one of {SCHEDULES}.')
    if progress < 0:
        raise ValueError(f'progress must be >= 0, got {progress}.')
    if progress >= 1:
        return 0.0
    if schedule == 'linear':
        return weight0 * (1.0 - progress)
    if schedule == 'constant':
        return weight0
    if schedule == 'cosine':
        return weight0 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return weight0 * (1.0 - math.floor(progress * _STEP_STAIRS) / _STEP_STAIRS)
