"""TensorBoard scalars for a run given --tensorboard (the optional package is checked before any work)."""

import importlib.util

from engine.errors import UsageError


class TensorBoard:
    """Scalars per evaluation in the run directory, when --tensorboard is given, at the global
    optimizer step (an evaluation within an epoch, --eval-every, gets its own point)."""

    @staticmethod
    def require():
        """Fail before any work is done when the optional package is missing."""
        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'engine-cnn[tensorboard]'")

    def __init__(self, path, steps_per_epoch):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path))
        self.steps_per_epoch = steps_per_epoch

    def log(self, m):
        step = m["step"] if "step" in m else round(m["epoch"] * self.steps_per_epoch)  # whole epochs: no "step"
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "images_per_s", "lr"):
            if key in m:
                self.writer.add_scalar(key.replace("_", "/", 1), m[key], step)
        self.writer.flush()

    def close(self):
        self.writer.close()
