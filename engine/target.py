"""Time to accuracy: the command's clock, when a run evaluates, which figure picks best.pt, and the
stop at `--target-acc`.

The clock of `engine train` starts when the process did (read from /proc; a Python caller's at its
train() call), so a time to target counts interpreter start-up, imports, data loading and every
evaluation: the wall time a user waits. Evaluations happen at the end of each epoch and, with
`--eval-every X` below 1, every X of an epoch; with a whole X above 1 only after every X-th epoch
and the last (a metrics entry without test figures marks an epoch that did not evaluate).

With a target, an evaluation within an epoch reads the test set in four fixed parts (a tenth, then
two, three and four tenths more: `SCREEN_PARTS`) and stops after any of the first three when the
images read so far are too far below the target for the whole set to reach it (`short_of`); an
evaluation that reads all four is the whole set's, and its accuracy decides as without a screen.
"""

import math
import os
import time

EVAL_EVERY_WITH_TARGET = 0.25  # --eval-every's default under --target-acc: a stop is late by 1/8 epoch on average
FIRST_EPOCH_EVERY_WITH_TARGET = 0.125  # ... but in the first epoch, where accuracy climbs fastest, every eighth
SCREEN_PARTS = ((0,), (1, 2), (3, 4, 5), (6, 7, 8, 9))  # test image i's part: i % 10 in one of these
SCREEN_FROM = 5000  # test sets of this many images or more are screened (the first part: 500 or more)
SCREEN_SE = 3.3  # a screen stops this many standard errors below the target
_IMPORTED = time.perf_counter()  # the fallback origin: engine.cli imports this module at its own import


def process_age():
    """Seconds since this process started, from /proc (None where there is no /proc).

    /proc/self/stat's starttime (clock ticks after boot) and /proc/uptime (seconds after boot,
    to 0.01 s) read the same boot clock, so their difference is the process's age to a tick;
    /proc/stat's btime would add up to a second of rounding.
    """
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
        starttime = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22
        return max(uptime - starttime / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def command_started():
    """time.perf_counter() at the start of the process, or when engine.cli was imported without /proc."""
    age = process_age()
    return _IMPORTED if age is None else time.perf_counter() - age


_CALLS = []  # time.perf_counter() at each train() call of this process (note_call)
_COMMAND = []  # set by `engine train` (command_line): its run counts from the process's start


def command_line():
    """Mark this process as the `engine train` command: its run's clock starts with the process."""
    _COMMAND.append(True)


def note_call():
    """Note a train() call: its run's clock (run_started) starts there, but for the command line's."""
    _CALLS.append(time.perf_counter())


def run_started():
    """Where a run's clock starts: the command's start (command_started) for `engine train`'s run, so its
    time counts interpreter start-up and imports; a Python caller's train() call itself otherwise (a notebook
    started hours ago, or a script training run after run, would count all that went before)."""
    if (_COMMAND and len(_CALLS) <= 1) or not _CALLS:
        return command_started()
    return _CALLS[-1]


def eval_steps(steps, every):
    """The step counts (1 .. steps - 1) after which an epoch of `steps` steps evaluates within
    itself, every `every` (a fraction of an epoch, 0 < every <= 1) of it; the epoch's end always
    evaluates, so it is not listed."""
    if every * steps <= 1:  # at least every step: each one (the loop below would run 1/every times)
        return set(range(1, steps))
    points, k = set(), 1
    while k * every < 1 - 1e-9:
        point = round(k * every * steps)
        if 0 < point < steps:
            points.add(point)
        k += 1
    return points


def screened(total):
    """Whether a test set of `total` images is evaluated in SCREEN_PARTS within an epoch under
    --target-acc; a smaller one is cheap to read whole."""
    return total >= SCREEN_FROM


def short_of(target, correct, seen, total):
    """Whether `correct` of the `seen` test images read so far (of `total`) put the whole set's
    accuracy out of the reach of `target` percent: their accuracy more than SCREEN_SE standard errors
    below it, the error of `seen` images drawn from `total` (with the finite-population correction)
    at an accuracy of exactly the target. A whole set at the target is cut this way about once in
    2,000 looks (the normal tail beyond 3.3 errors), once in 700 over an evaluation's three."""
    p = target / 100
    error = math.sqrt(p * (1 - p) / seen * (total - seen) / (total - 1))
    return correct / seen < p - SCREEN_SE * error


def score(m):
    """The accuracy that chooses best.pt: validation accuracy when the run holds out a split, else test."""
    return m["val_acc"] if "val_acc" in m else m["test_acc"]


def evaluated(metrics):
    """The entries of evaluations (--eval-every N > 1 leaves epochs without one)."""
    return [m for m in metrics if "test_acc" in m]


def evaluates_after(epoch, every, epochs):
    """Whether the end of `epoch` (0-based) of `epochs` evaluates with --eval-every `every`: every
    epoch's, or with a whole `every` above 1 every `every`-th epoch's and the last one's."""
    return every <= 1 or (epoch + 1) % round(every) == 0 or epoch + 1 >= epochs


def best_score(metrics):
    return max((score(m) for m in evaluated(metrics)), default=-1.0)


def reached_in(metrics):
    """The metrics entry at which the run reached its --target-acc, or None."""
    return next((m for m in metrics if "time_to_target" in m), None)


class Watch:
    """A run's evaluation cadence and its target.

    target: --target-acc in percent, or None; every: --eval-every, or its default (1; with a target
    EVAL_EVERY_WITH_TARGET, and FIRST_EPOCH_EVERY_WITH_TARGET in the first epoch); steps: training
    steps per epoch; before: seconds the run's earlier commands took to its last evaluation (a
    resumed run: its clock runs on from there, as the run never stops; the time a kill lost after
    that evaluation and the pause between commands are not counted).
    """

    def __init__(self, target, every, steps, epochs, before=0.0):
        self.target = target
        self.every = every if every is not None else EVAL_EVERY_WITH_TARGET if target is not None else 1.0
        self.points = eval_steps(steps, self.every)
        first = FIRST_EPOCH_EVERY_WITH_TARGET if every is None and target is not None else self.every
        self.first_points = eval_steps(steps, first)
        self.epochs = epochs
        self.started = run_started()
        self.before = before

    def evaluations(self, start_epoch):
        """How many evaluations the epochs from `start_epoch` (0-based) on make: those within each
        epoch, at most one a step, and the epoch ends that evaluate."""
        if self.every > 1:
            return sum(self.evaluates(e) for e in range(start_epoch, self.epochs))
        return sum(len(self.first_points if e == 0 else self.points) + 1 for e in range(start_epoch, self.epochs))

    def note(self, every, steps):
        """A line for an --eval-every `every` (as given) finer than one of the epoch's `steps` steps,
        which evaluates after every step instead; else None."""
        if every is None or every > 1 or every * steps >= 1:
            return None
        return (f"--eval-every {every:g}: an epoch here is {steps} step{'s' * (steps != 1)}, so it evaluates after "
                f"every step ({steps} evaluation{'s' * (steps != 1)} an epoch), not every {every:g} of an epoch")

    def due(self, epoch, done):
        """Whether `epoch` (0-based) evaluates after `done` of its steps (besides its end)."""
        return done in (self.first_points if epoch == 0 else self.points)

    def evaluates(self, epoch):
        """Whether the end of `epoch` (0-based) evaluates (`evaluates_after`)."""
        return evaluates_after(epoch, self.every, self.epochs)

    def elapsed(self):
        return self.before + time.perf_counter() - self.started

    def origin(self):
        """Where the times count from: the command's start, or the run's over its resumes."""
        return (f"from the run's start ({self.before:.1f} s of it before this command resumed the run)" if self.before
                else "from the command's start")

    def check(self, m):
        """Stamp the evaluation `m` (just measured) with the command's elapsed time; True when its
        test accuracy is at or above the target, in which case `m` also records the time to it."""
        if self.target is None:
            return False
        m["elapsed_s"] = round(self.elapsed(), 2)
        if "test_acc" not in m:  # an epoch that did not evaluate
            return False
        # 1e-9: a test accuracy of exactly X% counts (0.29 * 100 is 28.999999999999996 in floats)
        if m["test_acc"] * 100 < self.target - 1e-9:
            return False
        m["target_acc"], m["time_to_target"] = self.target, m["elapsed_s"]
        return True

    def summary(self, reached, metrics, trained=True):
        """The final line of a run with a target: the time to it, or how far the run got (by the end of
        this command; of its earlier ones where this one trained nothing, a finished run resumed)."""
        if reached is not None:
            return (f"Reached {self.target:g}% test accuracy in {reached['time_to_target']:.1f} s {self.origin()}, "
                    f"at epoch {reached['epoch']:g} ({reached['test_acc'] * 100:.2f}%)")
        done = evaluated(metrics)
        best = max(done, key=lambda m: m["test_acc"], default=None)
        seconds = self.elapsed() if trained else self.before
        said = "no evaluation" if best is None else (
            f"best {best['test_acc'] * 100:.2f}% at epoch {best['epoch']:g} of {len(done)} evaluation"
            f"{'s' * (len(done) != 1)} of the whole test set")
        ends = [m for m in done if not m.get("partial")]  # best.pt is chosen at epoch ends
        kept = max(ends, key=score, default=None)
        if best is not None and best.get("partial") and kept is not None:
            said += f"; best.pt holds epoch {kept['epoch']:g}'s {kept['test_acc'] * 100:.2f}%, chosen at epoch ends"
        return f"Did not reach {self.target:g}% test accuracy in {seconds:.1f} s {self.origin()} ({said}); train longer or aim lower"
