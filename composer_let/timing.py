"""``stop`` (S_stop) as a Composer ``Time``, and the run's progress towards it."""

from __future__ import annotations

from composer.core import State, Time, TimeUnit

_STOP_UNITS = (TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN, TimeUnit.EPOCH, TimeUnit.DURATION)


def parse_stop(stop: str | int | Time, key: str = 'stop', extra: str = '') -> Time:
    """Parse ``stop`` (``'2000ba'``, ``'5e8tok'``, ``'1ep'``, ``'0.25dur'``, ``'100sp'``).

    An int is a number of batches. Raises ``ValueError`` naming ``key`` if the value
    is unparsable, not positive, in wall-clock units, or a duration above 1. ``extra`` names
    further accepted values in the message (``'or auto'``).
    """
    fix = f"Set {key} to a positive Composer time string such as '2000ba', '5e8tok', '1ep' or '0.25dur'"
    fix += f' {extra}.' if extra else '.'
    if isinstance(stop, bool):
        raise ValueError(f'{key}={stop!r} is not a time. {fix}')
    try:
        if isinstance(stop, Time):
            parsed = stop
        elif isinstance(stop, int):
            parsed = Time(stop, TimeUnit.BATCH)
        elif isinstance(stop, str):
            parsed = Time.from_timestring(stop.strip())
        else:
            raise TypeError(type(stop).__name__)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f'{key}={stop!r} cannot be parsed ({e}). {fix}') from None
    if parsed.unit not in _STOP_UNITS:
        raise ValueError(f'{key}={stop!r} is in {parsed.unit.value!r}, which does not resume reproducibly. {fix}')
    if not parsed.value > 0:
        raise ValueError(f'{key}={stop!r} must be > 0. {fix}')
    if parsed.unit == TimeUnit.DURATION and parsed.value > 1:
        raise ValueError(f'{key}={stop!r} is more than the whole run (1dur). {fix}')
    return parsed


def check_stop_within(stop: Time, max_duration: Time | None, key: str = 'stop') -> None:
    """Raise if ``stop`` is beyond ``max_duration`` where the two can be compared.

    Same units compare directly; ``dur`` is always within the run. Other pairs (say
    tokens vs. batches) depend on the data and are left to the run.
    """
    if max_duration is None or stop.unit == TimeUnit.DURATION or stop.unit != max_duration.unit:
        return
    if stop.value > max_duration.value:
        raise ValueError(
            f'{key}={stop} is beyond max_duration={max_duration}: the schedule would never reach '
            f'its end. Set {key} <= {max_duration} (or a fraction of the run such as 0.25dur).',
        )


def progress_towards(stop: Time, state: State) -> float:
    """Return ``s / S_stop`` for the batch about to run, ``s`` counted in ``stop``'s unit."""
    if stop.unit == TimeUnit.DURATION:
        elapsed = state.get_elapsed_duration()
        done = 0.0 if elapsed is None else float(elapsed.value)
    elif stop.unit == TimeUnit.EPOCH:
        timestamp = state.timestamp
        done = float(timestamp.epoch.value)
        if state.dataloader_len is not None and int(state.dataloader_len) > 0:
            done += timestamp.batch_in_epoch.value / int(state.dataloader_len)
    else:
        done = float(state.timestamp.get(stop.unit).value)
    return done / float(stop.value)


def before_stop_at_fit_start(stop: Time, state: State, key: str = 'stop') -> bool:
    """At ``Event.FIT_START``: check ``stop`` against ``max_duration`` (which Composer sets
    after ``Event.INIT``) and say whether the run, perhaps resumed, is still before it."""
    check_stop_within(stop, state.max_duration, key=key)
    return progress_towards(stop, state) < 1
