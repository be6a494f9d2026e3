"""What a run shows and leaves behind: the per-epoch line, metrics.jsonl, curves.png, TensorBoard.

`RunDir` owns the run directory: it is created before any data is read (so an unwritable
`--out` fails at once), `runs/latest` moves to it only once training starts, and every file in
it is replaced atomically, so a run killed at any moment leaves whole files.
"""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from engine.errors import EngineError, UsageError

RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt")  # what a run writes


def format_epoch(m):
    """The tutorial's line, plus speed: `Epoch: 1, Train_acc:43.4%, ..., 2,050 img/s, 26.1 s`."""
    return (f"Epoch: {m['epoch']}, Train_acc:{m['train_acc'] * 100:.1f}%, Train_loss:{m['train_loss']:.3f}, "
            f"Test_acc:{m['test_acc'] * 100:.1f}%, Test_loss:{m['test_loss']:.3f}, "
            f"{m['images_per_s']:,.0f} img/s, {m['epoch_s']:.1f} s")


def default_run_dir(model, data_name, root="runs"):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{model}-{data_name}-{stamp}"
    suffix = 1
    while path.exists():  # two runs started in the same second
        suffix += 1
        path = Path(root) / f"{model}-{data_name}-{stamp}-{suffix}"
    return path


class RunDir:
    def __init__(self, path, *, resuming=False, create=True):
        """create: False on the ranks other than 0 under DDP, which check but never write."""
        self.path = Path(path)
        self.created = []  # the folders this run made, deepest first
        taken = [name for name in RUN_FILES if (self.path / name).exists()]
        if not resuming and "last.pt" in taken:
            raise UsageError(f"--out {self.path} already holds a run; continue it with --resume {self.path} or choose another --out")
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
            raise EngineError(f"cannot write to --out {self.path}: {error.strerror or error}; choose a writable --out") from None

    def discard_if_unused(self):
        """Remove the folders this run created, as long as nothing was written into them."""
        for folder in self.created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def point_latest(self):
        """Make `<parent>/latest` a symlink to this run (replaced atomically)."""
        latest = self.path.parent / "latest"
        if latest.exists() and not latest.is_symlink():
            return  # never replace a real file or folder someone put there
        temporary = self.path.parent / f".latest.tmp{os.getpid()}"
        try:
            if temporary.is_symlink():
                temporary.unlink()
            temporary.symlink_to(self.path.name, target_is_directory=True)
            os.replace(temporary, latest)
        except OSError:
            if temporary.is_symlink():
                temporary.unlink()

    def write_text(self, name, text):
        temporary = self.path / f".{name}.tmp{os.getpid()}"
        temporary.write_text(text)
        os.replace(temporary, self.path / name)

    def write_config(self, config_dict, data_spec):
        self.write_text("config.json", json.dumps({"config": config_dict, "data": data_spec}, indent=2) + "\n")

    def write_metrics(self, metrics):
        """All epochs so far, one JSON object a line; rewritten whole so it matches the checkpoint."""
        self.write_text("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))

    def plot(self, metrics):
        """curves.png: accuracy and loss per epoch, train and test, as the tutorial plots them."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        epochs = [m["epoch"] for m in metrics]
        fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
        acc.plot(epochs, [m["train_acc"] * 100 for m in metrics], label="Training Accuracy")
        acc.plot(epochs, [m["test_acc"] * 100 for m in metrics], label="Test Accuracy")
        acc.set(title="Training and Test Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        loss.plot(epochs, [m["train_loss"] for m in metrics], label="Training Loss")
        loss.plot(epochs, [m["test_loss"] for m in metrics], label="Test Loss")
        loss.set(title="Training and Test Loss", xlabel="epoch", ylabel="loss")
        for ax in (acc, loss):
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        temporary = self.path / f".curves.png.tmp{os.getpid()}.png"
        fig.savefig(temporary, dpi=100)
        plt.close(fig)
        os.replace(temporary, self.path / "curves.png")


class TensorBoard:
    """Scalars per epoch in the run directory, when --tensorboard is given."""

    @staticmethod
    def require():
        """Fail before any work is done when the optional package is missing."""
        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'engine-cnn[tensorboard]'")

    def __init__(self, path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path))

    def log(self, m):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "lr"):
            if key in m:
                self.writer.add_scalar(key.replace("_", "/", 1), m[key], m["epoch"])
        self.writer.flush()

    def close(self):
        self.writer.close()


def progress(total, epoch, quiet):
    """A tqdm bar over one epoch's steps, shown only when stdout is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"Epoch {epoch}", unit="step", leave=False, file=sys.stdout,
                disable=quiet or not sys.stdout.isatty(), dynamic_ncols=True)
