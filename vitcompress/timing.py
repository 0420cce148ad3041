"""The one way vitcompress compares speeds: ``vitcompress bench``, every script in ``benchmarks/``, and anything that
chooses by latency use :func:`compare`.

1. **Warm-up until stable.** Every variant, at every batch size, is called until two consecutive timings agree
   within ``warmup_tolerance`` (5 %), at most ``warmup_cap`` calls: a cold cache, a lazy allocation or a
   just-in-time compile is paid before anything counts.
2. **Equal samples.** At each batch size every variant is timed with the same number of calls per timing, set
   once from the slowest variant's warm time (about ``seconds_per_timing``, never fewer than ``min_calls``), so a
   slow baseline does not get one sample where a fast variant gets the median of many.
3. **Interleaved, bracketed rounds.** A round times each variant between two timings of its baseline (the first
   baseline unless ``bracket_of`` names another), and the variant is compared with the mean of those two, taken
   seconds apart: drift of the machine's speed then hits both sides of a ratio alike. Against the other
   baselines a variant is compared with their timings in the same round.
4. **Ratio of medians.** The figure is the median baseline time over the rounds divided by the variant's median
   time, with the interquartile range of the per-round ratios beside it; the record keeps every round. One slow
   round (a cold baseline, a burst of load) moves neither median.

A variant is timed through a :data:`Timer`: a function that makes ``calls`` calls at ``batch`` and returns each
call's milliseconds. It measures where the model runs (in a process of its own for ``bench``), so the timings
contain no inter-process overhead; :func:`local_timer` makes one of in-process callables.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Timer = Callable[[int, int], list[float]]  # (batch, calls) -> milliseconds of each call
Clock = Callable[[], float]  # seconds


@dataclass(frozen=True)
class TimingMethod:
    """The method's settings; a record stores them beside its timings."""

    rounds: int = 10
    warmup_tolerance: float = 0.05  # two consecutive warm-up timings within 5 % of each other end the warm-up
    warmup_cap: int = 20  # calls at most, per variant and batch
    warmup_seconds: float = 10.0  # and no new warm-up call after this long
    seconds_per_timing: float = 0.5  # what the slowest variant's timing takes, roughly
    min_calls: int = 3  # per timing, at every batch size
    max_calls: int = 50

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_calls < 1 or self.max_calls < self.min_calls or self.warmup_cap < 2:
            raise ValueError(f"an impossible timing method: {self}")


def local_timer(runs: Mapping[int, Callable[[], object]], clock: Clock = time.perf_counter) -> Timer:
    """A :data:`Timer` of in-process callables, one per batch size (each returns when its work is done)."""

    def timer(batch: int, calls: int) -> list[float]:
        run = runs[batch]
        times = []
        for _ in range(calls):
            started = clock()
            run()
            times.append((clock() - started) * 1000)
        return times

    return timer


def warm_up(timer: Timer, batch: int, method: TimingMethod) -> list[float]:
    """Single calls until two consecutive ones agree within the method's tolerance (or its caps): their timings."""
    times = timer(batch, 1)
    while len(times) < method.warmup_cap and sum(times) < method.warmup_seconds * 1000:
        times += timer(batch, 1)
        previous, last = times[-2:]
        if abs(last - previous) <= method.warmup_tolerance * min(last, previous):
            break
    return times


def calls_per_timing(slowest_ms: float, method: TimingMethod) -> int:
    """Calls per timing when the slowest variant takes ``slowest_ms`` a call."""
    wanted = math.ceil(method.seconds_per_timing * 1000 / max(slowest_ms, 1e-6))
    return min(max(wanted, method.min_calls), method.max_calls)


def round_order(names: Sequence[str], bracket_of: Mapping[str, str]) -> list[str]:
    """One round: each baseline, then each variant it brackets followed by that baseline again."""
    order: list[str] = []
    for base in dict.fromkeys(bracket_of.values()):
        order.append(base)
        for name in names:
            if bracket_of[name] == base and name != base:
                order += [name, base]
    return order


def compare(timers: Mapping[str, Timer], baselines: Sequence[str], batches: Sequence[int],
            method: TimingMethod = TimingMethod(), progress: Callable[[str], None] | None = None,
            bracket_of: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Time every variant against every baseline by the method above; a record of every round and the ratios.

    ``bracket_of`` maps a variant to the baseline timed on either side of it (default: the first baseline); a
    baseline brackets itself.

    Returns a dict with ``method``, ``baselines``, ``order`` (one round), ``calls_per_timing`` and ``warmup_calls``
    per batch, per variant ``rounds_ms`` (the median of each timing; a baseline times several times a round) and
    ``median_ms``, and ``ratios[variant][baseline][batch]``: how many times faster the variant ran (``ratio``, the
    ratio of medians), the interquartile range of the per-round ratios (``iqr``) and those ratios (``per_round``).
    """
    missing = [b for b in baselines if b not in timers]
    if not baselines or missing:
        raise ValueError(f"baselines {list(baselines)} must be among the variants timed ({list(timers)})")
    brackets = {name: name if name in baselines else (bracket_of or {}).get(name, baselines[0]) for name in timers}
    if any(base not in baselines for base in brackets.values()):
        raise ValueError(f"a variant is bracketed by something other than the baselines {list(baselines)}: {brackets}")
    order = round_order(list(timers), brackets)
    warmups = {name: {b: len(warm_up(timer, b, method)) for b in batches} for name, timer in timers.items()}
    slowest = {b: max(statistics.median(timers[name](b, 1)) for name in timers) for b in batches}
    calls = {b: calls_per_timing(slowest[b], method) for b in batches}
    # slots[r][i][b]: the median ms of the i-th timing of round r at batch b
    slots: list[list[dict[int, float]]] = []
    for r in range(method.rounds):
        if progress:
            progress(f"round {r + 1} of {method.rounds}")
        slots.append([{b: statistics.median(timers[name](b, calls[b])) for b in batches} for name in order])
    per_variant = {name: {b: [_own_time(slots[r], order, name, b) for r in range(method.rounds)] for b in batches}
                   for name in timers}
    ratios = {name: {base: {str(b): _ratio([_bracket_time(slots[r], order, name, base, b) if brackets[name] == base
                                            else per_variant[base][b][r] for r in range(method.rounds)],
                                           per_variant[name][b])
                            for b in batches}
                     for base in baselines if base != name}
              for name in timers}
    return {"method": asdict(method), "baselines": list(baselines), "bracketed_by": brackets, "order": order,
            "calls_per_timing": {str(b): n for b, n in calls.items()},
            "warmup_calls": {name: {str(b): n for b, n in w.items()} for name, w in warmups.items()},
            "variants": {name: {"rounds_ms": {str(b): [round(t, 4) for t in times] for b, times in v.items()},
                                "median_ms": {str(b): round(statistics.median(times), 4) for b, times in v.items()}}
                         for name, v in per_variant.items()},
            "ratios": ratios}


def _own_time(round_slots: list[dict[int, float]], order: list[str], name: str, batch: int) -> float:
    """A variant's time in one round: its timing, or for a baseline the mean of its timings that round."""
    return statistics.fmean(slot[batch] for slot, who in zip(round_slots, order, strict=True) if who == name)


def _bracket_time(round_slots: list[dict[int, float]], order: list[str], variant: str, baseline: str,
                  batch: int) -> float:
    """``baseline``'s time to compare ``variant`` with in one round: the mean of its timings just before and just
    after the variant's."""
    at = order.index(variant)
    before = max(i for i in range(at) if order[i] == baseline)
    after = min(i for i in range(at + 1, len(order)) if order[i] == baseline)
    return (round_slots[before][batch] + round_slots[after][batch]) / 2


def _ratio(baseline_ms: list[float], variant_ms: list[float]) -> dict[str, Any]:
    per_round = [b / v for b, v in zip(baseline_ms, variant_ms, strict=True)]
    q1, q3 = np.percentile(per_round, [25, 75])
    return {"ratio": round(statistics.median(baseline_ms) / statistics.median(variant_ms), 4),
            "iqr": [round(float(q1), 4), round(float(q3), 4)], "per_round": [round(r, 4) for r in per_round]}


def ratio(record: dict[str, Any], variant: str, baseline: str, batch: int | str) -> float:
    """How many times faster ``variant`` ran than ``baseline`` at ``batch`` in a :func:`compare` record (1.0 for
    the baseline itself)."""
    if variant == baseline:
        return 1.0
    return record["ratios"][variant][baseline][str(batch)]["ratio"]
