"""The timing method (vitcompress/timing.py) on fake timers: warm-up, equal samples, bracketing, ratio of medians."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vitcompress.timing import TimingMethod, calls_per_timing, compare, local_timer, ratio, round_order, warm_up


class FakeMachine:
    """A clock that only moves when a fake model runs, and the round ``compare`` is in (from its progress calls)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.round = 0
        self.calls: list[tuple[str, int]] = []

    def clock(self) -> float:
        return self.now

    def progress(self, _: str) -> None:
        self.round += 1

    def model(self, name: str, ms: Callable[[int, int], float]) -> Callable:
        """A timer whose call at ``batch`` takes ``ms(batch, round)`` milliseconds."""

        def run_at(batch: int) -> Callable[[], None]:
            def run() -> None:
                self.calls.append((name, batch))
                self.now += ms(batch, self.round) / 1000

            return run

        return local_timer({1: run_at(1), 32: run_at(32)}, self.clock)


FAST = TimingMethod(rounds=5, seconds_per_timing=0.05)


def test_a_cold_first_round_does_not_move_the_ratio() -> None:
    machine = FakeMachine()
    timers = {"fp32": machine.model("fp32", lambda b, r: (30.0 if r == 1 else 10.0) * b),  # cold in round 1
              "int8": machine.model("int8", lambda b, r: 5.0 * b)}
    record = compare(timers, ["fp32"], [1, 32], FAST, machine.progress)
    for batch in ("1", "32"):
        got = record["ratios"]["int8"]["fp32"][batch]
        assert got["ratio"] == pytest.approx(2.0)  # the median of medians ignores the cold round
        assert got["per_round"][0] == pytest.approx(6.0)  # and the record keeps it
        assert got["iqr"] == [pytest.approx(2.0), pytest.approx(2.0)]
    assert len(record["variants"]["fp32"]["rounds_ms"]["1"]) == FAST.rounds


def test_bracketing_cancels_drift_of_the_machine() -> None:
    machine = FakeMachine()
    drift = lambda: 1 + machine.now / 2  # noqa: E731 -- the machine slows down steadily as time goes on
    timers = {"fp32": machine.model("fp32", lambda b, r: 10.0 * b * drift()),
              "int8": machine.model("int8", lambda b, r: 4.0 * b * drift())}
    record = compare(timers, ["fp32"], [1, 32], FAST, machine.progress)
    assert ratio(record, "int8", "fp32", 32) == pytest.approx(2.5, rel=0.03)


def test_every_variant_gets_the_same_number_of_calls_and_at_least_three() -> None:
    machine = FakeMachine()
    timers = {"slow": machine.model("slow", lambda b, r: 400.0 * b),  # 12.8 s a call at batch 32
              "fast": machine.model("fast", lambda b, r: 1.0 * b)}
    record = compare(timers, ["slow"], [1, 32], FAST, machine.progress)
    assert record["calls_per_timing"] == {"1": 3, "32": 3}
    rounds_calls = machine.calls[-sum(3 * 2 for _ in record["order"]):]  # the last round: 3 calls per batch and slot
    for name in ("slow", "fast"):
        per_slot = [c for c in rounds_calls if c[0] == name]
        assert per_slot.count((name, 32)) == 3 * record["order"].count(name)
    assert calls_per_timing(1.0, TimingMethod(seconds_per_timing=0.5)) == 50  # capped
    assert calls_per_timing(100.0, TimingMethod(seconds_per_timing=0.5)) == 5


def test_warm_up_runs_until_two_timings_agree_or_the_cap() -> None:
    machine = FakeMachine()
    costs = iter([100.0, 50.0, 30.0, 20.0, 10.0, 10.2, 99.0])
    settling = machine.model("m", lambda b, r: next(costs))
    assert len(warm_up(settling, 1, TimingMethod())) == 6
    flip = iter([10.0, 20.0] * 50)
    never = machine.model("m", lambda b, r: next(flip))
    assert len(warm_up(never, 1, TimingMethod(warmup_cap=7))) == 7
    swing = iter([4000.0, 5000.0] * 50)
    slow = machine.model("m", lambda b, r: next(swing))  # never settles, 4-5 s a call
    assert len(warm_up(slow, 1, TimingMethod(warmup_seconds=10))) == 3  # 12 s of warm-up is past the 10 s cap


def test_each_variant_is_bracketed_by_its_baseline() -> None:
    assert round_order(["a", "b", "c"], {"a": "a", "b": "a", "c": "a"}) == ["a", "b", "a", "c", "a"]
    per_runtime = {"fp32@ort": "fp32@ort", "int8@ort": "fp32@ort", "fp32@ov": "fp32@ov", "int8@ov": "fp32@ov"}
    assert round_order(list(per_runtime), per_runtime) == ["fp32@ort", "int8@ort", "fp32@ort", "fp32@ov", "int8@ov", "fp32@ov"]
    machine = FakeMachine()
    timers = {name: machine.model(name, lambda b, r: 1.0) for name in per_runtime}
    record = compare(timers, ["fp32@ort", "fp32@ov"], [1], FAST, bracket_of={"int8@ov": "fp32@ov"})
    assert record["order"] == ["fp32@ort", "int8@ort", "fp32@ort", "fp32@ov", "int8@ov", "fp32@ov"]
    assert record["bracketed_by"]["int8@ov"] == "fp32@ov" and record["bracketed_by"]["int8@ort"] == "fp32@ort"


def test_ratios_against_several_baselines_and_between_baselines() -> None:
    machine = FakeMachine()
    timers = {"ort": machine.model("ort", lambda b, r: 12.0), "ov": machine.model("ov", lambda b, r: 8.0),
              "int8": machine.model("int8", lambda b, r: 4.0)}
    record = compare(timers, ["ort", "ov"], [1], FAST, machine.progress)
    assert ratio(record, "int8", "ort", 1) == pytest.approx(3.0)
    assert ratio(record, "int8", "ov", 1) == pytest.approx(2.0)
    assert ratio(record, "ov", "ort", 1) == pytest.approx(1.5)
    assert ratio(record, "ort", "ort", 1) == 1.0
    assert "ort" not in record["ratios"]["ort"]


def test_baselines_must_be_timed() -> None:
    machine = FakeMachine()
    with pytest.raises(ValueError, match="baselines"):
        compare({"a": machine.model("a", lambda b, r: 1.0)}, ["b"], [1], FAST)
    with pytest.raises(ValueError, match="other than the baselines"):
        compare({"a": machine.model("a", lambda b, r: 1.0), "b": machine.model("b", lambda b, r: 1.0)}, ["a"], [1], FAST,
                bracket_of={"b": "b"})
    with pytest.raises(ValueError, match="impossible"):
        TimingMethod(min_calls=5, max_calls=3)
