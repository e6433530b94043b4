"""How hard LET pulls and when it lets go, decided from the run's own measurements.

Pure Python state machines, fed once per batch with the batch's whole-batch diagnostics (already
summed over microbatches and ranks, so every rank feeds the same numbers), and saved in
checkpoints through ``state_dict`` so that resumption is exact (``load_state_dict`` restores the
running state only: the settings are the resumed run's own)::

    strength = RelativeStrength()                 # λ such that ‖λ·∇L_align‖ ≈ target · ‖∇L_rest‖
    lam = strength.weight(target=0.1)             # None until one batch has been measured
    strength.observe(rest_norm, align_norm, lam_used)

    stop = AutoStop()
    stop.observe(batch=s, teacher_ce=..., student_ce=..., grad_cos=...)
    stop.fired_at                                 # the batch at which the guidance ended, or None
    stop.factor(batch=s)                          # 1 before, a linear ramp to 0 after the decision
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Ema:
    """Exponential moving average with bias correction (Adam's), robust to a missing first value."""

    beta: float = 0.9
    value: float = 0.0
    weight: float = 0.0

    def update(self, x: float) -> None:
        self.value = self.beta * self.value + (1 - self.beta) * x
        self.weight = self.beta * self.weight + (1 - self.beta)

    @property
    def mean(self) -> float | None:
        return self.value / self.weight if self.weight > 0 else None


@dataclass
class RelativeStrength:
    """Sets λ each batch so that the alignment's gradient at the hooked block is a chosen share of the rest's.

    ``observe`` takes the batch's ``‖∇_h L_rest‖``, ``‖λ·∇_h L_align‖`` and the λ that produced
    it; the alignment's pull per unit of λ is ``p = align_norm / (λ · rest_norm)``. ``weight(target)``
    returns ``target / p̂``, the λ that would give ``let/grad_ratio == target`` on the next batch:

    * feed-forward: ``p̂₀ = EMA(‖∇L_align‖ per unit λ) / EMA(‖∇L_rest‖)`` (short memory, ``beta``):
      early in training both norms fall by 2x within ~5 batches, and this follows them;
    * feedback: ``p̂ = p̂₀ · exp(EMA(log p − log p̂₀))`` (``bias_beta``). A ratio of means is not
      the mean of a ratio and lags a falling norm, so at small batch the feed-forward alone
      overshot its target by ~1.4x on (geometric) average; the log-residual EMA removes that bias,
      so the achieved ratio's geometric mean tracks the target.
    """

    beta: float = 0.5  # short memory: early in training the norms fall by 2x within ~5 batches
    bias_beta: float = 0.8
    rest: Ema | None = None
    unit_align: Ema | None = None
    log_bias: Ema | None = None

    def __post_init__(self) -> None:
        self.rest = self.rest or Ema(self.beta)
        self.unit_align = self.unit_align or Ema(self.beta)
        self.log_bias = self.log_bias or Ema(self.bias_beta)

    def _feed_forward(self) -> float | None:
        """``p̂₀``: the pull per unit of λ relative to the rest, from the averaged norms."""
        rest, unit = self.rest.mean, self.unit_align.mean  # type: ignore[union-attr]
        if rest is None or unit is None or rest <= 0 or unit <= 0:
            return None
        return unit / rest

    def observe(self, rest_norm: float, align_norm: float, weight_used: float) -> None:
        if not (weight_used > 0 and math.isfinite(rest_norm) and math.isfinite(align_norm)):
            return
        if rest_norm <= 0 or align_norm <= 0:
            return
        predicted = self._feed_forward()
        if predicted is not None:  # how far off the feed-forward was on this batch (in log space)
            self.log_bias.update(math.log(align_norm / (weight_used * rest_norm)) - math.log(predicted))  # type: ignore[union-attr]
        self.rest.update(rest_norm)  # type: ignore[union-attr]
        self.unit_align.update(align_norm / weight_used)  # type: ignore[union-attr]

    def weight(self, target: float) -> float | None:
        pull = self._feed_forward()
        if pull is None:
            return None
        bias = self.log_bias.mean  # type: ignore[union-attr]
        return target / (pull * math.exp(bias or 0.0))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> list[str]:
        """Restore the running state (the averages) from a checkpoint; keep this object's settings.

        Returns the settings in which the checkpoint differs (``'beta: 0.5 -> 0.7'``) for the caller to
        warn about: on resume the YAML's settings win. A checkpoint written before the feedback has no
        ``log_bias``, which then starts afresh.
        """
        for name in ('rest', 'unit_align', 'log_bias'):
            if isinstance(d.get(name), dict):
                ema = getattr(self, name)
                ema.value, ema.weight = d[name]['value'], d[name]['weight']
        return _changed(self, d, ('beta', 'bias_beta'))


@dataclass
class AutoStop:
    """Ends the guidance once it stops helping, then ramps λ to 0 over ``ramp_share`` of the batches done.

    Signals, each smoothed by an EMA over batches (``beta``) and read after ``warmup`` batches:

    * ``ce``: the student's CE comes within ``ce_gap`` nats of the teacher's on the same tokens
      (``student − teacher < ce_gap``; 0: the student has passed its teacher). With ``horizon`` > 0
      also when it is on course to: at the gap's smoothed rate of closing, it would get there within
      ``horizon`` × the batches trained so far. Measured (bench/README.md): projecting (``horizon``
      1) fired too early with a weak teacher, where λ0 = 3 then ended behind the baseline, and at
      best as well as waiting in the other regimes, so the default waits for the crossing (0).
    * ``conflict``: the alignment's gradient at the hooked block opposes the rest of the loss's
      (``let/grad_cos`` below ``-cos_threshold``) persistently.

    ``signals`` picks which of them may fire; the default is ``ce`` alone. On the bench's logged runs
    ``let/grad_cos`` stays within ±0.03 of 0 in every regime, so ``conflict`` fired on noise (batch 10 of
    a teacher-ahead run) and never where the teacher had stopped helping (bench/README.md).

    The decision is a pure function of the fed values, so ranks fed the same all-reduced numbers
    decide alike; the algorithm still broadcasts rank 0's decision.
    """

    signals: tuple[str, ...] = ('ce',)
    beta: float = 0.9
    warmup: int = 10
    ce_gap: float = 0.0
    horizon: float = 0.0
    cos_threshold: float = 0.0
    ramp_share: float = 0.1
    gap_ema: Ema | None = None
    slope_ema: Ema | None = None
    last_gap: float | None = None
    cos_ema: Ema | None = None
    seen: int = 0
    fired_at: int | None = None
    fired_by: str | None = None
    ramp_batches: int = 0

    def __post_init__(self) -> None:
        self.gap_ema = self.gap_ema or Ema(self.beta)
        self.slope_ema = self.slope_ema or Ema(self.beta)
        self.cos_ema = self.cos_ema or Ema(self.beta)
        self.signals = tuple(self.signals)

    def observe(self, batch: int, teacher_ce: float | None, student_ce: float | None, grad_cos: float | None) -> None:
        """Feed batch ``batch``'s diagnostics (``None``/NaN: not measured); may decide to stop."""
        if self.fired_at is not None:
            return
        self.seen += 1
        if teacher_ce is not None and student_ce is not None and math.isfinite(teacher_ce - student_ce):
            self.gap_ema.update(student_ce - teacher_ce)  # type: ignore[union-attr]
            gap = self.gap_ema.mean  # type: ignore[union-attr]
            if self.last_gap is not None:
                self.slope_ema.update(gap - self.last_gap)  # type: ignore[union-attr,operator]
            self.last_gap = gap
        if grad_cos is not None and math.isfinite(grad_cos):
            self.cos_ema.update(grad_cos)  # type: ignore[union-attr]
        if self.seen < self.warmup:
            return
        reason = self.reason(batch)
        if reason is not None:
            self.fire(batch, reason)

    def reason(self, batch: int) -> str | None:
        gap, cos = self.gap_ema.mean, self.cos_ema.mean  # type: ignore[union-attr]
        slope = self.slope_ema.mean  # type: ignore[union-attr]
        if 'ce' in self.signals and gap is not None:
            if gap < self.ce_gap:
                return 'ce'
            if slope is not None and slope < 0 and gap - self.ce_gap < -slope * self.horizon * batch:
                return 'ce-trend'
        if 'conflict' in self.signals and cos is not None and cos < -self.cos_threshold:
            return 'conflict'
        return None

    def fire(self, batch: int, reason: str) -> None:
        self.fired_at, self.fired_by = batch, reason
        self.ramp_batches = max(1, round(self.ramp_share * batch))

    def signal(self) -> float:
        """The smoothed quantity closest to firing, for logging: the CE gap (nats) or the gradient cosine."""
        gap, cos = self.gap_ema.mean, self.cos_ema.mean  # type: ignore[union-attr]
        if 'ce' in self.signals and gap is not None:
            return gap
        return cos if cos is not None else math.nan

    def factor(self, batch: int) -> float:
        """λ's multiplier at ``batch``: 1 before the decision, then linear to 0 over the ramp."""
        if self.fired_at is None:
            return 1.0
        return max(0.0, 1.0 - (batch - self.fired_at) / self.ramp_batches)

    def state_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['signals'] = list(self.signals)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> list[str]:
        """Restore the running state (averages, count, decision) from a checkpoint; keep this object's settings.

        Returns the settings in which the checkpoint differs (``'horizon: 1 -> 0'``) for the caller
        to warn about: on resume the YAML's settings win.
        """
        for name in ('gap_ema', 'slope_ema', 'cos_ema'):
            ema = getattr(self, name)
            ema.value, ema.weight = d[name]['value'], d[name]['weight']
        for name in ('last_gap', 'seen', 'fired_at', 'fired_by', 'ramp_batches'):
            setattr(self, name, d[name])
        return _changed(self, {**d, 'signals': tuple(d['signals'])}, AUTO_STOP_SETTINGS)


AUTO_STOP_SETTINGS = ('signals', 'beta', 'warmup', 'ce_gap', 'horizon', 'cos_threshold', 'ramp_share')


def _changed(current: Any, saved: dict[str, Any], settings: tuple[str, ...]) -> list[str]:
    """``'name: saved -> current'`` for each setting that differs between a checkpoint and ``current``."""
    return [
        f'{name}: {saved[name]!r} -> {getattr(current, name)!r}'
        for name in settings
        if name in saved and saved[name] != getattr(current, name)
    ]
