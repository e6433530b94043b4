"""Where an eval curve first reaches a loss: the speedup measure of the quickstart and of ``bench/``.

Pure and free of the training stack, so ``bench/analysis.py`` can import it without loading Composer.
"""

from __future__ import annotations


def first_reach(curve: list[dict[str, float]], loss: float | None, axis: str = 'step') -> float | None:
    """Where ``curve`` (``[{axis: ..., 'loss': ...}]``) first reaches ``loss``, linearly interpolated between points.

    None when it never does, or when ``loss`` is None (a teacher whose loss is over other tokens)::

        first_reach([{'step': 0, 'loss': 5.0}, {'step': 10, 'loss': 3.0}], 4.0)  # 5.0
    """
    if loss is None:
        return None
    previous = None
    for point in curve:
        if point['loss'] <= loss:
            if previous is None or previous['loss'] == point['loss']:
                return point[axis]
            share = (previous['loss'] - loss) / (previous['loss'] - point['loss'])
            return previous[axis] + share * (point[axis] - previous[axis])
        previous = point
    return None
