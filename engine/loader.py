"""The batch loader: one uint8 tensor per split on the device, batches cut from it with tensor ops.

Each epoch shuffles with a generator seeded by (seed, epoch), so an epoch's batches depend on
nothing but those two numbers: a resumed run sees exactly the batches an uninterrupted one
would. Random crops (zero or reflected padding) and horizontal flips (random, or alternating from epoch to
epoch: `alternate_flips`) run on whole batches; normalisation is
`engine.normalization.Normalize`, the module exported ONNX files hold too. There is no
per-sample Python work and no worker process.

Under DDP every rank holds the whole split and takes its share (`rank` of `world`): training
step i of rank r is the r-th slice of batch_size of the i-th global batch (batch_size x world)
of the shared shuffle, so the ranks together see what one process with the global batch would,
and the same images are dropped (n mod the global batch). Crops and flips are drawn per image
of the whole split, so they are the same whatever the number of ranks. Evaluation splits the
images into `world` contiguous parts of almost equal size: every image counted once.
ENGINE_LOADER_DUMP=DIR appends each training batch's image indices to DIR/indices-rank<r>.txt
("epoch step i i ...") for tests and debugging.

A split that does not fit (a streamed set's engine.data.stream.Rows, or a split too large for the
GPU next to the model) stays on the host, memory-mapped: each batch is gathered from it in the same
seeded order, READ_AHEAD batches ahead in a background thread, then moved to the device. Same
order, same crops and flips: the same batches, bit for bit, as in memory.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.stream import Rows, gather, read_ahead
from engine.errors import UsageError
from engine.normalization import Normalize

FLIP_STREAM = 1  # SeedSequence spawn key of the alternating flips' base draw (epochs use entropy [seed, epoch])


def epoch_generator(seed, epoch):
    """A CPU generator for (seed, epoch): independent streams without arithmetic collisions."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def random_crop(x, shifts, padding, mode="zeros"):
    """Crop each image of (B, C, H, W) at its own offset into a border of `padding` pixels: zeros,
    or with mode "reflect" the image mirrored at its edges (torch's reflect: the edge pixel is not
    repeated; it needs padding < H and < W).

    shifts: (B, 2) ints in [0, 2 * padding], the (row, column) of each crop's top-left corner.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4, mode="constant" if mode == "zeros" else mode)  # (B, C, H + 2p, W + 2p)
    rows = shifts[:, 0, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = shifts[:, 1, None] + torch.arange(W, device=x.device)  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    channel = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def alternate_flips(seed, epoch, n):
    """(n,) bool: airbench's alternating flip. A seeded random half of the images (each with
    probability 1/2) are mirrored in epoch 0, and every image's state swaps each epoch after, so
    over any two consecutive epochs each image is seen once each way (random flips repeat a side
    half the time; airbench's ablation: 10.8 epochs to 94% with random flips, 9.9 alternating).
    The base draw has its own stream, the same in every epoch: a function of (seed, epoch) alone."""
    state = np.random.SeedSequence(seed, spawn_key=(FLIP_STREAM,)).generate_state(1, np.uint64)[0]
    base = torch.rand(n, generator=torch.Generator().manual_seed(int(state) & (2**63 - 1))) < 0.5  # (n,)
    return base ^ bool(epoch % 2)


def random_flip(x, flips):
    """Mirror the images of (B, C, H, W) where `flips` (B,) is True."""
    return torch.where(flips[:, None, None, None], x.flip(3), x)


class BatchLoader:
    """Batches of (images, labels, count) from uint8 tensors that live on `device`.

    Training batches are shuffled, augmented and all full (the last partial batch is dropped,
    so a compiled model sees one shape). Evaluation batches keep order and are padded to the
    full batch size (again one shape); `count` says how many rows are real.
    flip: False, "random" (True: the same) or "alternate" (`alternate_flips`).
    """

    def __init__(self, x, y, batch_size, mean, std, *, device, train, flip=True, crop_padding=4, padding_mode="zeros",
                 seed=0, channels_last=True, rank=0, world=1, resized_crop=None):
        self.device = torch.device(device)
        self.why = streams(x, self.device)  # why the split streams from the host; None: it is on the device
        self.x = x if self.why else x.to(device)  # (N, C, H, W) uint8
        self.y = y.to(device)  # (N,) int64
        # an evaluation batch is padded to its size: never larger than the images (--eval-batch-size 10**9)
        self.batch_size = batch_size if train else max(1, min(batch_size, len(x)))
        self.train, self.flip, self.padding, self.seed = train, "random" if flip is True else flip, crop_padding, seed
        self.padding_mode = padding_mode
        side = min(x.shape[2:]) if len(x) else 0
        if train and side and crop_padding >= side and not resized_crop:
            # reflection cannot pad past the image; zeros could, but then some crops would hold no image at all
            raise UsageError(f"--crop-padding {crop_padding} needs images larger than {crop_padding} pixels a side, "
                             f"not {side}: crops move by up to the padding, so pad at most {side - 1} (0: no crops)")
        self.resized_crop = resized_crop  # None, or the smallest area fraction of a random-resized crop
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.normalize = Normalize(mean, std).to(device)  # the same module the exported ONNX graph holds
        self.rank, self.world = rank, world

    def __len__(self):
        if self.train:
            return len(self.x) // (self.batch_size * self.world)
        start, end = self.eval_range()
        return -(-(end - start) // self.batch_size)

    def eval_range(self):
        """This rank's contiguous part [start, end) of the evaluation images."""
        n = len(self.x)
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def normalise(self, x):
        """uint8 (B, C, H, W) -> float32 in the model's memory format."""
        return self.normalize(x.contiguous(memory_format=self.memory_format))

    def epoch(self, epoch, skip=0):
        """The batches of `epoch`, starting after the first `skip` of them."""
        n, B = len(self.x), self.batch_size
        if not self.train:
            first, end = self.eval_range()
            starts = range(first + skip * B, end, B)
            for start, x in self.read(lambda start: (start, self.rows(start, min(start + B, end))), starts):
                y = self.y[start:min(start + B, end)]
                count = len(x)
                if count < B:  # pad to the one batch shape; padded rows are ignored by count
                    x = torch.cat([x, x.new_zeros((B - count, *x.shape[1:]))])
                    y = torch.cat([y, y.new_zeros(B - count)])
                yield self.normalise(x), y, count
            return
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator)  # (n,) on the CPU: a streamed split gathers with it there
        shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator).to(self.device)
        flips = torch.rand(n, generator=generator) < 0.5  # drawn in either mode: the draws after it stay the same
        if self.flip == "alternate":
            flips = alternate_flips(self.seed, epoch, n)
        flips = flips.to(self.device)  # (n,) bool, one per image of the split: the same on every rank
        order = order if self.why else order.to(self.device)
        if self.resized_crop:  # drawn after the rest, so runs without it keep their crops and flips
            from engine.augment import RATIO, draw_boxes, random_resized_crop

            boxes = draw_boxes(n, generator, (self.resized_crop, 1.0), RATIO).to(self.device)  # (n, 4)
        dump = os.environ.get("ENGINE_LOADER_DUMP")

        def batch(step):
            start = (step * self.world + self.rank) * B  # this rank's slice of global batch `step`
            index = order[start:start + B]
            return step, index, self.rows(index)  # (B, C, H, W) uint8

        for step, index, x in self.read(batch, range(skip, len(self))):
            index = index.to(self.device)
            if dump:
                self.dump(dump, epoch, step, index)
            if self.resized_crop:  # instead of the padded crop
                x = random_resized_crop(x, boxes[index])
            elif self.padding:
                x = random_crop(x, shifts[index], self.padding, self.padding_mode)
            if self.flip:
                x = random_flip(x, flips[index])
            yield self.normalise(x), self.y[index], B

    def rows(self, index, stop=None):
        """Images `index` (B,) of the split, or [index, stop): (B, C, H, W) uint8 on the device, or
        gathered on the host when it streams."""
        if stop is not None:
            return gather(self.x, torch.arange(index, stop)) if self.why else self.x[index:stop]
        return gather(self.x, index) if self.why else self.x[index]

    def read(self, batch, keys):
        """batch(key) for each key: in this thread when the split is on the device, else read ahead
        in the background and moved to the device (the last item of each tuple)."""
        if not self.why:
            return map(batch, keys)
        return read_ahead(batch, keys, self.device)

    def dump(self, folder, epoch, step, index):
        with open(os.path.join(folder, f"indices-rank{self.rank}.txt"), "a") as f:
            f.write(f"{epoch} {step} {' '.join(map(str, index.tolist()))}\n")


def streams(x, device):
    """Why the split x streams from the host, or None when it goes whole to `device`: a streamed
    set (a Rows view: it does not fit in memory), or on CUDA a split larger than the GPU's room
    for it next to the model (engine.memory.gpu_room)."""
    if isinstance(x, Rows):
        return x.why or "it is read from the decode cache"
    if device.type == "cuda" and x.device.type == "cpu":
        from engine.memory import gpu_room, size_text

        room = gpu_room(device)
        need = x.numel() * x.element_size()
        if need > room:
            return f"they do not fit on {device} next to the model ({size_text(need)}, room for {size_text(room)})"
    return None
