"""Training for a wall-clock budget instead of a fixed number of epochs (``--time-budget``).

After every epoch the Trainer asks how many whole epochs still fit, from the measured time of the
latest epochs (validation and checkpoint included), and stretches or shrinks its cosine schedule to
end with them. Re-planning every epoch absorbs what a one-off estimate cannot: the first epoch's
compile, and steps that slow down or speed up as a run goes on (a launch-bound GPU step's time moves
with the host's load).
"""

from __future__ import annotations

from statistics import fmean

# Epochs the estimate averages: recent enough to follow drift, more than one to damp noise.
RECENT_EPOCHS = 3


def planned_epochs(budget_seconds: float, max_epochs: int, epoch_seconds: list[float]) -> int:
    """The total number of epochs to run, given the wall time of each epoch so far (their sum is the time spent).

    It is the epochs done plus as many as fit in the time left, never fewer than done (equal means
    stop now) nor more than ``max_epochs``. The first epoch pays for compiling and warming up, so it
    is left out of the estimate once a second exists (see :func:`schedule_can_follow`).
    """
    done = len(epoch_seconds)
    if done == 0:
        return max_epochs
    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = fmean(steady[-RECENT_EPOCHS:])
    fits = int(max(0.0, budget_seconds - sum(epoch_seconds)) // per_epoch) if per_epoch > 0 else max_epochs
    return max(done, min(max_epochs, done + fits))


def schedule_can_follow(epochs_measured: int) -> bool:
    """Whether the LR schedule may be re-planned: not from the first epoch alone, which may hold a compile
    (a schedule planned from it would decay too early); the run can still stop after it if nothing fits."""
    return epochs_measured >= 2
