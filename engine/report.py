"""What a run shows and leaves behind: the per-epoch line, metrics.jsonl, curves.png (TensorBoard's
events: engine.tensorboard_events).

`RunDir` owns the run directory: it is created before any data is read (so an unwritable
`--out` fails at once), `runs/latest` moves to it only once training starts, and every file in
it is replaced atomically, so a run killed at any moment leaves whole files.
"""

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from engine.errors import EngineError, UsageError
from engine.lock import LOCK_NAME, RunLock, remove_stale_temporaries

RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "confusion.json",
             "confusion.png")  # what a run writes (TensorBoard's events: new names)


def stopped_before_first_checkpoint(path):
    """Whether the folder `path` holds a run killed before it wrote any checkpoint: its config.json,
    no last.pt or best.pt. Nothing in it can be resumed, and a new run there would overwrite it."""
    path = Path(path)
    return (path / "config.json").is_file() and not any((path / name).exists() for name in ("last.pt", "best.pt"))


def metrics_text(metrics):
    return "".join(json.dumps(m) + "\n" for m in metrics)


def format_epoch(m):
    """The tutorial's line, plus speed: `Epoch: 1, Train_acc:43.4%, ..., 2,050 img/s, 26.1 s`.

    Within an epoch (--eval-every) the epoch is fractional (`Epoch: 1.25`) and Train_* cover the
    epoch so far; `Val_*` with --val-split; `(tta)` marks test-time flip, `(tta2)` with translations
    (`tta_mark`); `(ema)` marks the figures of the weight average (--ema); an epoch that did not
    evaluate (--eval-every N > 1) has no Test_* (nor Val_*); one within an epoch that --target-acc's
    screen stopped has Screen_acc instead, the accuracy on the screened test images; with
    --target-acc the line ends with the time since the command started, and the target when it is
    reached.
    """
    tta = "(ema)" * bool(m.get("ema")) + tta_mark(m.get("tta"))
    epoch = f"{m['epoch']:.2f}" if m.get("partial") else m["epoch"]
    val = f"Val_acc{tta}:{m['val_acc'] * 100:.1f}%, Val_loss:{m['val_loss']:.3f}, " if "val_acc" in m else ""
    test = f"Test_acc{tta}:{m['test_acc'] * 100:.1f}%, Test_loss:{m['test_loss']:.3f}, " if "test_acc" in m else ""
    if "screen_acc" in m:  # --target-acc's screen stopped this evaluation (engine.target)
        test = f"Screen_acc{tta}:{m['screen_acc'] * 100:.1f}% of {m['screen_images']:,} test images (short of the target), "
    line = (f"Epoch: {epoch}, Train_acc:{m['train_acc'] * 100:.1f}%, Train_loss:{m['train_loss']:.3f}, {val}{test}"
            f"{m['images_per_s']:,.0f} img/s, {m['epoch_s']:.1f} s")
    if "elapsed_s" in m:
        line += f", {m['elapsed_s']:.1f} s since start"
    if "time_to_target" in m:
        line += f", reached {m['target_acc']:g}% in {m['time_to_target']:.1f} s"
    return line


def tta_mark(level):
    """What an accuracy's label carries for a --tta level: "(tta)" for the mirror (level 1, or True
    in runs before the levels), "(tta2)" with the translations too, "" for none."""
    return "" if not level else "(tta)" if level is True or level == 1 else f"(tta{level})"


def default_run_dir(model, data_name, root="runs"):
    from engine.data.dataset import file_label  # a long folder name would pass the system's 255 bytes a name

    stamp, model, data_name = time.strftime("%Y%m%d-%H%M%S"), file_label(model, 60), file_label(data_name)
    path = Path(root) / f"{model}-{data_name}-{stamp}"
    suffix = 1
    while path.exists():  # two runs started in the same second
        suffix += 1
        path = Path(root) / f"{model}-{data_name}-{stamp}-{suffix}"
    return path


def check_apart_from(out, data):
    """--out at or inside the image folder `data` (a run's --data) is refused: the run's curves.png and
    confusion.png would be read as images of it, of a class or outside every class, by each later run."""
    from engine.config import BUILTIN_DATASETS

    if not data or data in BUILTIN_DATASETS or not Path(data).expanduser().is_dir():
        return  # a built-in set or an archive: nothing written beside it is read
    source, out = Path(data).expanduser().resolve(), Path(out).expanduser().resolve()
    if out == source or source in out.parents:
        where = "is" if out == source else "lies inside"
        raise UsageError(f"--out {out} {where} the image folder {source} that --data reads: the run's files "
                         "(curves.png, confusion.png) would become images of it; choose an --out outside it")


class RunDir:
    def __init__(self, path, *, resuming=False, create=True, data=None):
        """create: False on the ranks other than 0 under DDP, which check but never write. data: the
        run's --data, which --out may not lie in."""
        self.path = Path(path)
        check_apart_from(self.path, data)
        self.created = []  # the folders this run made, deepest first
        self.lock = None
        self.earlier_latest = None  # where runs/latest pointed before this run took it (point_latest)
        if create and (self.path / LOCK_NAME).exists():  # a live run here is the first thing to say
            RunLock(self.path, "--resume" if resuming else "--out").release()
        taken = [name for name in RUN_FILES if (self.path / name).exists()]
        if not resuming and "last.pt" in taken:
            raise UsageError(f"--out {self.path} already holds a run; continue it with --resume {self.path} or choose another --out")
        if not resuming and stopped_before_first_checkpoint(self.path):
            raise UsageError(f"--out {self.path} holds a run that stopped before its first checkpoint ({', '.join(taken)}; "
                             "no last.pt to resume): delete the folder to start it again, or choose another --out")
        if not resuming and taken:
            raise UsageError(f"--out {self.path} already holds {', '.join(taken)}, which a run would overwrite; "
                             "move them or choose another --out")
        if not create:
            return
        try:
            missing = self.path
            while not missing.exists() and missing != missing.parent:
                self.created.append(missing)
                missing = missing.parent
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            if self.path.exists() and not self.path.is_dir():  # "File exists" from mkdir: the name is taken by a file
                raise EngineError(f"--out {self.path} is a file, not a folder; choose another --out") from None
            blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            if blocking is not None:  # "Not a directory" from mkdir: which name on the way is a file
                raise EngineError(f"cannot write to --out {self.path}: {blocking} is a file, not a folder; "
                                  "choose another --out") from None
            if self.path.is_symlink() and not self.path.exists():  # "File exists" from mkdir, for a broken link
                raise EngineError(f"--out {self.path} is a link to {os.readlink(self.path)}, which does not exist; "
                                  "choose another --out, or remove the link") from None
            advice = "a resumed run writes its checkpoints there" if resuming else "choose a writable --out"
            raise EngineError(f"cannot write to {'the run directory' if resuming else '--out'} {self.path}: "
                              f"{error.strerror or error}; {advice}") from None
        self.lock = RunLock(self.path, "--resume" if resuming else "--out")  # one training per run directory
        taken = [name for name in RUN_FILES if (self.path / name).exists()]
        if not resuming and taken:  # a run that held the lock until a moment ago
            self.close()
            raise UsageError(f"--out {self.path} already holds a run; continue it with --resume {self.path} or choose another --out")
        remove_stale_temporaries(self.path)  # what a killed run was writing

    def close(self):
        """Let go of the run directory (its lock)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @contextlib.contextmanager
    def saving(self):
        """A failed write of the run's files (disk full, the folder removed) is one line; the
        files already there stay as they were, so the last good checkpoint is kept."""
        try:
            yield
        except BrokenPipeError:  # a print between the writes to a reader that left (| head): not a disk's failure
            raise
        except OSError as error:
            if not self.path.is_dir():
                raise EngineError(f"the run directory {self.path} was removed during the run; stopped "
                                  "(nothing more can be saved)") from None
            import errno  # a read-only file system or a folder made read-only mid-run: room would not help

            fix = "make it writable" if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "make room"
            if (self.path / "last.pt").exists():
                raise EngineError(f"cannot save to {self.path} ({error.strerror or error}); stopped, the last good "
                                  f"checkpoint is kept: {fix}, then engine train --resume {self.path}") from None
            raise EngineError(f"cannot save to {self.path} ({error.strerror or error}); stopped before any checkpoint "
                              f"was saved (nothing is kept): {fix} and train again") from None

    def discard_if_unused(self):
        """Remove the folders this run created, as long as nothing was written into them."""
        self.close()
        for folder in self.created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def discard_unsaved(self):
        """A run that failed or was interrupted before its first checkpoint: nothing in it can be
        resumed, so its files go (config.json, TensorBoard events), runs/latest stops pointing at it,
        and so do the folders it created; the same command then starts it again."""
        if any((self.path / name).exists() for name in ("last.pt", "best.pt")):
            return
        self.close()
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for events in self.path.glob("events.out.tfevents.*"):
            events.unlink(missing_ok=True)
        latest = self.path.parent / "latest"
        if latest.is_symlink() and latest.resolve() == self.path.resolve():
            earlier = self.earlier_latest  # the run it pointed at before: a failed run takes nothing from it
            if earlier is None or not (self.path.parent / earlier).is_dir() or not self._link_latest(earlier):
                latest.unlink()
        self.discard_if_unused()

    def point_latest(self):
        """Make `<parent>/latest` a symlink to this run (replaced atomically). Returns a line to say
        where it cannot: a real file or folder someone put there is never replaced."""
        latest = self.path.parent / "latest"
        if latest.exists() and not latest.is_symlink():
            kind = "folder" if latest.is_dir() else "file"
            return (f"{latest} is a {kind}, not a link, so it was left as it is: --resume and export without a path "
                    f"read it, not this run; move it away to have the link to the run last started or resumed back")
        if latest.is_symlink() and os.readlink(latest) != self.path.name:
            self.earlier_latest = os.readlink(latest)  # put back if this run fails before its first checkpoint
        self._link_latest(self.path.name)
        return None

    def _link_latest(self, target):
        """`<parent>/latest` -> `target` (a name or path as a symlink holds it), replaced atomically; False
        where the file system refuses."""
        latest = self.path.parent / "latest"
        temporary = self.path.parent / f".latest.tmp{os.getpid()}"
        try:
            if temporary.is_symlink():
                temporary.unlink()
            temporary.symlink_to(target, target_is_directory=True)
            os.replace(temporary, latest)
            return True
        except OSError:
            if temporary.is_symlink():
                temporary.unlink()
            return False

    def write_text(self, name, text):
        temporary = self.path / f".{name}.tmp{os.getpid()}"
        temporary.write_text(text)
        os.replace(temporary, self.path / name)

    def write_config(self, config_dict, data_spec, runtime=None):
        """config.json: the config as given, the data spec, and what the runtime resolved it to."""
        record = {"config": config_dict, "data": data_spec, "runtime": runtime or {}}
        self.write_text("config.json", json.dumps(record, indent=2) + "\n")

    def write_metrics(self, metrics):
        """All epochs so far, one JSON object a line; rewritten whole so it matches the checkpoint."""
        self.write_text("metrics.jsonl", metrics_text(metrics))

    def sync_metrics(self, metrics):
        """Rewrite metrics.jsonl and curves.png if they differ from `metrics` (the commit record's), or
        curves.png alone where a kill left it unwritten; the names of the files rewritten."""
        try:
            in_step = (self.path / "metrics.jsonl").read_text() == metrics_text(metrics)
        except OSError:
            in_step = not metrics  # no epoch yet, and no file: in step
        if in_step:
            if metrics and not (self.path / "curves.png").exists():
                self.plot(metrics)
                return ["curves.png"]
            return []
        self.write_metrics(metrics)
        if metrics:
            self.plot(metrics)
        return ["metrics.jsonl", "curves.png"] if metrics else ["metrics.jsonl"]

    def plot(self, metrics):
        """curves.png: accuracy and loss per epoch, train and test, as the tutorial plots them."""
        from engine.quiet import pyplot

        plt = pyplot()

        epochs = [m["epoch"] for m in metrics]
        fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
        acc.plot(epochs, [m["train_acc"] * 100 for m in metrics], label="Training Accuracy")
        tested = [m for m in metrics if "test_acc" in m]  # --eval-every N > 1 skips epochs
        marker = "o" if len(tested) < len(metrics) else None
        acc.plot([m["epoch"] for m in tested], [m["test_acc"] * 100 for m in tested], marker=marker, label="Test Accuracy")
        acc.set(title="Training and Test Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        loss.plot(epochs, [m["train_loss"] for m in metrics], label="Training Loss")
        loss.plot([m["epoch"] for m in tested], [m["test_loss"] for m in tested], marker=marker, label="Test Loss")
        loss.set(title="Training and Test Loss", xlabel="epoch", ylabel="loss")
        for ax in (acc, loss):
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        temporary = self.path / f".curves.png.tmp{os.getpid()}.png"
        fig.savefig(temporary, dpi=100)
        plt.close(fig)
        os.replace(temporary, self.path / "curves.png")


def progress(total, epoch, quiet):
    """A tqdm bar over one epoch's steps, shown on a terminal and in a Jupyter notebook (tqdm's
    widget, through tqdm.auto), not when stdout is a file or a pipe."""
    in_notebook = "ipykernel" in sys.modules
    if in_notebook:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    shown = in_notebook or (sys.stdout is not None and sys.stdout.isatty())  # None: stdout closed (>&-)
    return tqdm(total=total, desc=f"Epoch {epoch}", unit="step", leave=False, file=None if in_notebook else sys.stdout,
                disable=quiet or not shown, dynamic_ncols=True)
