"""Streaming a split that does not fit: `Rows`, a lazy view of rows of a memory-mapped (N, C, H, W)
uint8 tensor; `place`, which decides at load time whether a set stays in memory or streams and says
why; `read_ahead`, which gathers the next batches in a background thread while the model trains.

A streamed split is never copied whole: --val-split, --limit-* and --test-split subset it by index
lists (`take`), and a batch is gathered from the file only when the loader asks for it.
"""

import queue
import threading

import numpy as np
import torch

HOST_SHARE = 0.75  # of the available memory a set may take and stay in memory: the run needs the rest
READ_AHEAD = 4  # batches gathered ahead of the one being trained on


class Rows:
    """Rows `index` (or all rows, for None) of `base`, a file-backed (N, C, H, W) uint8 tensor.

    Indexing gathers real tensors (x[index], x[a:b], x[::step]), so the code that samples a few
    images (statistics, fingerprints, whitening, export) reads a streamed split as it reads a
    tensor; `take` subsets without reading a pixel. `why` is the phrase the run's start line says."""

    def __init__(self, base, index=None, why=""):
        self.base, self.index, self.why = base, index, why

    def __len__(self):
        return len(self.base) if self.index is None else len(self.index)

    @property
    def shape(self):
        return torch.Size((len(self), *self.base.shape[1:]))

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self):
        return self.base.ndim

    @property
    def nbytes(self):
        return len(self) * self.base[:1].nbytes

    def __getitem__(self, key):
        if isinstance(key, tuple):  # x[:, c] and the like: rows first, then the rest on the gathered tensor
            return self[key[0]][(slice(None), *key[1:])]
        return self.base[key] if self.index is None else self.base[self.index[key]]

    def take(self, index):
        """The rows `index` (a LongTensor into this view) as another view: nothing is read."""
        return Rows(self.base, index if self.index is None else self.index[index], self.why)

    def numpy(self):
        """Every row as one array: the whole split in memory (export's calibration and the like)."""
        return self[:].numpy()


def gather(x, index):
    """Rows `index` (B,) of x (a Rows view or a host tensor) as one (B, C, H, W) tensor, copied on one
    core by numpy: the reading thread must not start a second OpenMP team beside the training
    threads (on 2 cores its spinning threads took a third of the training speed)."""
    base, rows = (x.base, index if x.index is None else x.index[index]) if isinstance(x, Rows) else (x, index)
    return torch.from_numpy(np.take(base.numpy(), rows.numpy(), axis=0))


def take(x, index):
    """x's rows `index`: a view for a streamed split, a copy for a tensor in memory."""
    return x.take(index) if isinstance(x, Rows) else x[index]


def place(tensors):
    """The decode cache's {"train_x", "test_x"?, ...} with every split in memory when they fit in
    HOST_SHARE of the available memory (a file cache's views gathered), else every split a `Rows`
    view that streams, its reason given."""
    from engine.data.sources import available_memory
    from engine.memory import size_text

    splits = [k for k in ("train_x", "test_x") if k in tensors]
    need = sum(_nbytes(tensors[k]) for k in splits)
    available = available_memory()
    fits = available is None or need <= HOST_SHARE * available
    placed = dict(tensors)
    for k in splits:
        x = tensors[k]
        if fits and isinstance(x, Rows):
            placed[k] = x[:] if x.index is not None else x.base  # (N, C, H, W): gathered once, in memory
        elif not fits:
            why = (f"the set ({size_text(need)}) does not fit in memory ({size_text(available)} available, "
                   f"{HOST_SHARE:.0%} of it for the data)")
            placed[k] = Rows(x.base, x.index, why) if isinstance(x, Rows) else Rows(x, None, why)
    return placed


def _nbytes(x):
    return x.nbytes if isinstance(x, Rows) else x.numel() * x.element_size()


def read_ahead(produce, keys, device, depth=READ_AHEAD):
    """produce(key) for each of `keys` in order, run `depth` ahead in a background thread and moved to
    `device` there (pinned memory and a side stream on CUDA); yields the results in order.

    produce returns a tuple whose last item is a host uint8 batch; the thread copies it to the device
    while the model trains on the previous one. Closing the generator stops the thread."""
    results = queue.Queue(maxsize=depth)
    stop = threading.Event()
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None

    def put(item):
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for key in keys:
                *rest, x = produce(key)
                event = None
                if cuda:  # copy on a side stream; the consumer's stream waits for it (event)
                    with torch.cuda.stream(side):
                        x = x.pin_memory().to(device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(side)
                if not put(("batch", (*rest, x), event)):
                    return
            put(("end", None, None))
        except BaseException as error:  # noqa: BLE001  re-raised in the consumer, with its traceback
            put(("error", error, None))

    thread = threading.Thread(target=work, name="engine-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, item, event = results.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                item[-1].record_stream(current)  # freed only after the consumer's kernels ran
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
