"""--time-budget: whole epochs re-planned from their measured time, the schedule ending with the last."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_trainer
from vitcompress import train
from vitcompress.budget import DecayTimeline, planned_epochs, schedule_can_follow
from vitcompress.config import PruneConfig, TrainConfig
from vitcompress.errors import UserError


def test_plan_before_any_epoch_is_the_cap() -> None:
    assert planned_epochs(60, max_epochs=100, epoch_seconds=[]) == 100


def test_one_epoch_plans_the_stop_but_not_the_schedule() -> None:
    # epoch 1 (compile included) took 30 s: a plan to stop by (re-planned after epoch 2), not a schedule
    assert planned_epochs(60, max_epochs=100, epoch_seconds=[30]) == 2
    assert planned_epochs(50, max_epochs=100, epoch_seconds=[30]) == 1  # none fits: stop
    assert not schedule_can_follow(1) and schedule_can_follow(2)


def test_plan_leaves_out_the_compiling_first_epoch() -> None:
    # epoch 1 took 30 s (compile), epoch 2 took 2 s: 60 - 32 = 28 s left fit 14 more
    assert planned_epochs(60, max_epochs=100, epoch_seconds=[30, 2]) == 16


def test_plan_follows_recent_epochs_and_stops_when_nothing_fits() -> None:
    walls = [5, 1, 1, 1, 3, 3, 3]  # slowed down: the last three say 3 s an epoch
    assert planned_epochs(26, 100, walls) == 7 + 3  # 9 s left
    assert planned_epochs(18, 100, walls) == 7  # 1 s left: stop now
    assert planned_epochs(10, 100, [6, 6]) == 2  # over budget already: never below the epochs done


def test_plan_never_exceeds_the_epoch_cap() -> None:
    assert planned_epochs(1000, max_epochs=5, epoch_seconds=[1, 1]) == 5


def test_trainer_stops_within_the_budget(tmp_path: Path) -> None:
    one_epoch = tiny_trainer(tmp_path / "probe").fit().wall_seconds  # this machine's pace now (about 0.1 s unloaded)
    budget = max(4.0, 30 * one_epoch)
    trainer = tiny_trainer(tmp_path, epochs=10_000, time_budget=budget)
    fit = trainer.fit()
    walls = trainer.epoch_wall_seconds
    assert 2 < len(fit.history) < 10_000  # stopped by the clock, not by the cap
    assert fit.wall_seconds == pytest.approx(sum(walls))
    assert budget - 2 * max(walls) <= fit.wall_seconds <= budget + 2 * max(walls)  # used the budget, overran by < 1 epoch or so
    assert trainer.planned_epochs == len(fit.history)


def test_timeline_without_a_replan_is_the_schedulers_own() -> None:
    timeline = DecayTimeline.fixed(warmup=10, length=90)
    assert [timeline.scheduler_time(u) for u in range(0, 101, 5)] == [float(u) for u in range(0, 101, 5)]


def test_a_replan_keeps_the_progress_made_and_ends_the_decay_at_the_new_end() -> None:
    timeline = DecayTimeline.fixed(warmup=10, length=90)  # planned: decay over updates 10..100
    before = timeline.scheduler_time(40)  # a third of the way
    timeline.replan(40, end=60)  # the budget says: stop at update 60
    assert timeline.scheduler_time(40) == pytest.approx(before)  # no jump at the re-plan
    assert timeline.scheduler_time(60) == pytest.approx(100)  # the decay's end, at the new last update
    times = [timeline.scheduler_time(u) for u in range(40, 61)]
    assert times == sorted(times)  # onward only: the LR never rises
    timeline.replan(50, end=200)  # a longer run after all: still continuous, still onward
    assert timeline.scheduler_time(50) == pytest.approx(times[10])
    assert timeline.scheduler_time(200) == pytest.approx(100) and timeline.scheduler_time(120) < 100


def test_a_replan_in_the_warmup_leaves_the_warmup_alone() -> None:
    timeline = DecayTimeline.fixed(warmup=10, length=990)
    timeline.replan(4, end=50)
    assert [timeline.scheduler_time(u) for u in range(10)] == [float(u) for u in range(10)]
    assert timeline.scheduler_time(10) == pytest.approx(10) and timeline.scheduler_time(50) == pytest.approx(1000)


class SteadyClock:
    """``time.perf_counter`` for a machine whose epochs all take the same time: each reading is 1 s after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_budget_schedule_ends_at_min_lr_with_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With steady epochs the plan holds from epoch 2 on, so the cosine decay must reach --min-lr exactly
    # at the last update. (On a real, noisy clock a last epoch slower than planned can end it a little short.)
    monkeypatch.setattr(train, "time", SteadyClock())
    trainer = tiny_trainer(tmp_path, epochs=10_000, time_budget=100, warmup_epochs=1, min_lr=1e-5)
    fit = trainer.fit()
    assert 2 < len(fit.history) < 10_000 and trainer.planned_epochs == len(fit.history)
    assert 100 - max(trainer.epoch_wall_seconds) < fit.wall_seconds <= 100  # steady epochs: no overrun
    lrs = [row["lr"] for row in fit.history]
    assert lrs[-1] == pytest.approx(1e-5) and lrs[1] > lrs[len(lrs) // 2] > lrs[-1]  # a decay, ending at --min-lr


def test_fixed_epochs_also_end_the_schedule_at_min_lr(tmp_path: Path) -> None:
    fit = tiny_trainer(tmp_path, epochs=3, warmup_epochs=1, min_lr=1e-5).fit()
    lrs = [row["lr"] for row in fit.history]
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(1e-5)


def test_prune_refuses_a_time_budget() -> None:
    cfg = PruneConfig(src="x", out="y", heads=0.5, finetune_epochs=1, train=TrainConfig(time_budget=60))
    with pytest.raises(UserError, match="time budget"):
        cfg.validate()


class _Crash(Exception):
    pass


def test_resume_counts_the_time_spent_before_the_stop(tmp_path: Path) -> None:
    first = tiny_trainer(tmp_path, epochs=6, time_budget=1000)
    train_epoch = first._train_epoch

    def crash_at_fourth(epoch: int) -> dict:
        if epoch == 3:
            raise _Crash
        return train_epoch(epoch)

    first._train_epoch = crash_at_fourth
    with pytest.raises(_Crash):
        first.fit()
    spent = sum(first.epoch_wall_seconds)  # three epochs, checkpointed
    resumed = tiny_trainer(tmp_path, epochs=6, time_budget=spent)  # the budget is already spent
    resumed.load_checkpoint()
    assert resumed.start_epoch == 3 and resumed.epoch_wall_seconds == pytest.approx(first.epoch_wall_seconds)
    assert resumed.timeline == first.timeline and resumed.timeline.anchor > resumed.timeline.warmup  # re-planned, restored
    fit = resumed.fit()
    assert len(fit.history) == 4  # the plan is checked after each epoch: one more runs, then it stops
    assert fit.wall_seconds > spent


class SpeedsUpClock(SteadyClock):
    """A host that frees up: 1 s a reading for the first epochs, then 0.1 s. The plan grows several-fold.

    An epoch of ``tiny_trainer`` reads the clock about 14 times (two readings a step time the wait for data)."""

    readings = 0

    def perf_counter(self) -> float:
        self.readings += 1
        self.now += 1.0 if self.readings <= 40 else 0.1
        return self.now


def test_a_growing_plan_never_raises_the_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Moving the scheduler's decay length instead would put the LR back up near its peak when the plan grows.
    monkeypatch.setattr(train, "time", SpeedsUpClock())
    trainer = tiny_trainer(tmp_path, epochs=10_000, time_budget=60, warmup_epochs=1, min_lr=1e-5)
    fit = trainer.fit()
    plans = [row["planned_epochs"] for row in fit.history]
    assert 2 * plans[2] < plans[-1] == len(fit.history)  # the plan grew several-fold once the epochs sped up
    lrs = [row["lr"] for row in fit.history[1:]]  # after the warmup epoch
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:], strict=False))  # down only, never up
    assert lrs[-1] == pytest.approx(1e-5)
