"""Per-class results: the confusion matrix and what a person reads from it, and class weights.

`Confusion` counts (true class, predicted class) pairs batch by batch on the device; from the
counts come per-class accuracy (recall) and precision, the most-confused pairs, a terminal table,
a JSON-able dict and a PNG. `engine eval` (checkpoint and ONNX) and every training run use it.
`class_weights` gives the inverse-frequency loss weights of `--class-weights auto`.
"""

import os
import unicodedata
import warnings
from pathlib import Path

import torch

from engine.errors import EngineError, UsageError

TABLE_ROWS = 40  # classes shown in the terminal table; --json has them all
PAIRS = 5  # most-confused pairs shown
COUNTS_UP_TO = 20  # classes up to which the picture writes the count in each cell
PICTURE_CLASSES = 100  # classes the picture draws at most: with more, those with the most errors (~4 s to draw)
LABEL_CHARACTERS = 40  # a class name longer than this is cut in the picture (its tick label)


class Confusion:
    """counts[i, j]: test images of true class i predicted as class j, (K, K) int64."""

    def __init__(self, classes, device="cpu", counts=None):
        self.classes = list(classes)
        k = len(self.classes)
        self.counts = counts if counts is not None else torch.zeros((k, k), dtype=torch.int64, device=device)

    def add(self, y, pred):
        """Count a batch: y (B,) true and pred (B,) predicted class indices, on counts' device.
        index_add_ rather than torch.bincount, which reads its input's max on the host (a sync per
        batch on CUDA); the flat index y * K + pred is the same either way."""
        k = len(self.classes)
        flat = (y.to(self.counts.device, torch.int64) * k + pred.to(self.counts.device, torch.int64))  # (B,)
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def cpu(self):
        return Confusion(self.classes, counts=self.counts.cpu())

    @property
    def images(self):
        return int(self.counts.sum())

    @property
    def accuracy(self):
        return float(self.counts.diagonal().sum()) / max(self.images, 1)

    def per_class(self):
        """[{class, images, accuracy, precision}] in class order; accuracy is the share of the class's
        images predicted right (recall), precision the share of its predictions that were right;
        None where there is nothing to divide by (a class without test images, or never predicted)."""
        counts = self.counts.cpu()
        right, true, predicted = counts.diagonal().tolist(), counts.sum(1).tolist(), counts.sum(0).tolist()
        return [{"class": name, "images": n, "accuracy": r / n if n else None, "precision": r / p if p else None}
                for name, r, n, p in zip(self.classes, right, true, predicted)]

    def most_confused(self, n=PAIRS):
        """The n largest off-diagonal cells: [{true, predicted, images, share}] (share: of the true class)."""
        counts = self.counts.cpu()
        true = counts.sum(1).tolist()
        cells = [(int(counts[i, j]), i, j) for i, j in counts.nonzero().tolist() if i != j]  # off-diagonal, non-zero
        cells.sort(key=lambda cell: (-cell[0], -cell[0] / true[cell[1]], cell[1], cell[2]))  # ties: the larger share
        return [{"true": self.classes[i], "predicted": self.classes[j], "images": c, "share": c / true[i]}
                for c, i, j in cells[:n]]

    def to_dict(self):
        """The whole table, JSON-able: classes, matrix (rows true, columns predicted), per class, pairs."""
        return {"classes": self.classes, "matrix": self.counts.cpu().tolist(), "accuracy": self.accuracy,
                "images": self.images, "per_class": self.per_class(), "most_confused": self.most_confused()}

    def format(self, rows=TABLE_ROWS):
        """Text for a terminal: one line per class (the first `rows`), then the most-confused pairs."""
        table = self.per_class()
        for c in table:
            c["class"] = printable(c["class"])
        width = max(8, *(columns(c["class"]) for c in table[:rows]))
        percent = lambda v: f"{v * 100:6.1f}%" if v is not None else "      -"  # noqa: E731
        pad = lambda name: name + " " * (width - columns(name))  # noqa: E731
        lines = [f"{pad('class')}  accuracy  precision  images"]
        lines += [f"{pad(c['class'])}  {percent(c['accuracy'])}    {percent(c['precision'])}  {c['images']:6,}"
                  for c in table[:rows]]
        if len(table) > rows:
            lines.append(f"... {len(table) - rows} more classes (--json lists them all)")
        pairs = self.most_confused()
        if pairs:
            lines.append("Most confused (true -> predicted):")
            lines += ["  " + describe_pair(p) for p in pairs]
        return "\n".join(lines)

    def pictured(self, most=None):
        """(K',) indices of the classes the picture draws, in class order: all of them up to `most`, else
        the `most` with the most errors (their images predicted as another class, plus other classes'
        images predicted as them; ties: the first). 2,000 tick labels took 30 s to draw, and are
        unreadable at any size a screen shows."""
        k, most = len(self.classes), PICTURE_CLASSES if most is None else most
        if k <= most:
            return torch.arange(k)
        counts = self.counts.cpu()
        errors = counts.sum(0) + counts.sum(1) - 2 * counts.diagonal()  # (K,)
        return torch.argsort(-errors, stable=True)[:most].sort().values

    def save_png(self, path, title, say=print):
        """The matrix as a picture at `path` (written whole, via a temporary file): colours are each
        row's shares, so a rare class reads like a common one; the counts are in the cells for up to
        COUNTS_UP_TO classes; `title` names the model and data, the accuracy is added. Over
        PICTURE_CLASSES classes it draws those `pictured` (the title says so). Class names in
        a script matplotlib's font lacks (Chinese, say) are drawn in an installed font that has it;
        where none has, they draw as boxes, and `say` tells which characters."""
        from engine.quiet import pyplot

        plt = pyplot()
        families, missing = fonts_for("".join(self.classes))
        if missing:
            say(f"The confusion picture draws {''.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in class "
                "names as boxes: no installed font has them (install one that does, e.g. Noto Sans CJK)")

        with warnings.catch_warnings(), plt.rc_context({"font.family": families}):  # boxes: no stderr line a cell
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
            counts, shown = self.counts.cpu(), self.pictured()
            shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)  # (K, K): of each true class
            counts, shares = counts[shown][:, shown], shares[shown][:, shown].numpy()  # (K', K')
            k, part = len(shown), ""
            if len(shown) < len(self.classes):
                part = f"\nthe {k} of {len(self.classes):,} classes with the most errors (--json: all of them)"
            side = min(max(6, 4 + 0.22 * k), 26)  # inches: 6 up to 10 classes, 100 classes 26 (2,600 px at dpi 100)
            font = max(6.0, min(10.0, 260 / k))  # points; a cell is about 12 points high from 30 classes up
            fig, ax = plt.subplots(figsize=(side + 1.5, side))
            image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
            labels = [printable(self.classes[i], LABEL_CHARACTERS) for i in shown.tolist()]
            ax.set_xticks(range(k), labels, rotation=90, fontsize=font, parse_math=False)  # a class 'cost $5 to $10'
            ax.set_yticks(range(k), labels, fontsize=font, parse_math=False)  # is its name, not TeX (which may not parse)
            ax.set(xlabel="predicted class", ylabel="true class")
            ax.set_title(f"{printable(title)}\naccuracy {self.accuracy * 100:.2f}% on {self.images:,} test images{part}",
                         fontsize=11, parse_math=False)
            if k <= COUNTS_UP_TO:
                for i in range(k):
                    for j in range(k):
                        if counts[i, j]:
                            ax.text(j, i, f"{int(counts[i, j]):,}", ha="center", va="center", fontsize=font * 0.9,
                                    color="white" if shares[i, j] > 0.5 else "black")
            warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
            fig.tight_layout()  # where labels leave no room it keeps matplotlib's layout: no stderr line
            path = Path(path)
            temporary = path.parent / f".{path.name}.tmp{os.getpid()}.png"
            try:
                fig.savefig(temporary, dpi=100)
                os.replace(temporary, path)
            finally:
                plt.close(fig)
                temporary.unlink(missing_ok=True)


def columns(text):
    """How many terminal columns `text` takes: 2 for a wide (East Asian) character, 0 for a combining one."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fonts_for(text):
    """(font families, characters none of them has): matplotlib's default sans-serif font, then the
    installed fonts that hold the characters of `text` it lacks, as matplotlib's per-glyph fallback
    list (looked up only when the default lacks some). Not matplotlib's Last Resort font: its glyphs
    for every character are placeholder boxes."""
    from matplotlib import font_manager, ft2font

    families = ["DejaVu Sans"]
    needed = sorted({c for c in text if unicodedata.category(c)[0] not in "MCZ"})  # no marks, controls or spaces
    charmap = lambda path: set(ft2font.FT2Font(path).get_charmap())  # noqa: E731
    missing = [c for c in needed if ord(c) not in charmap(font_manager.findfont(families[0]))]
    for font in sorted(font_manager.fontManager.ttflist, key=lambda f: f.name):
        if not missing:
            break
        try:
            has = charmap(font.fname)
        except (OSError, RuntimeError):  # a font file matplotlib listed but cannot read now
            continue
        if any(ord(c) in has for c in missing) and font.name not in families and "Last Resort" not in font.name:
            families.append(font.name)
            missing = [c for c in missing if ord(c) not in has]
    return families, missing


def describe_pair(pair):
    """'cat -> dog 123 (12.3% of cat)'"""
    true, predicted = printable(pair["true"]), printable(pair["predicted"])
    return f"{true} -> {predicted} {pair['images']:,} ({pair['share'] * 100:.1f}% of {true})"


def printable(name, limit=None):
    """A class name as one line shows it: a newline, tab or other control character escaped (`a\\nb`),
    and past `limit` characters cut with an ellipsis (a picture's tick label)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "\u2026"


def check_png_path(path, flag="--confusion"):
    """Refuse, before any work, a picture path that could not be written: not a .png name, a folder
    that does not exist or cannot be written, an existing folder of that name."""
    if not str(path).strip():
        raise UsageError(f"{flag} is an empty path; give a file name ending in .png")
    path = Path(path)
    folder = path.parent
    if path.suffix.lower() != ".png":
        raise UsageError(f"{flag} {path}: the picture is a PNG; give a file name ending in .png")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name ending in .png")
    if not folder.is_dir():
        missing = "does not exist" if not folder.exists() else "is not a folder"
        raise EngineError(f"{flag} {path}: {folder} {missing}")
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise EngineError(f"{flag} {path}: cannot write to {folder} ({error.strerror or error})") from None


def class_weights(labels, classes):
    """--class-weights auto: w[c] = N / (K * n[c]) for the n[c] of N training images in class c, so
    the mean weight over the training images is 1 (90% / 10% of two classes: 0.56 and 5.0). K counts
    the classes that have images; a class without any gets 0. Returns (K,) float32 on labels' device."""
    n = torch.bincount(labels.cpu(), minlength=len(classes)).double()  # (K,)
    present = int((n > 0).sum())
    weights = torch.where(n > 0, n.sum() / (present * n.clamp(min=1)), torch.zeros_like(n))
    return weights.float().to(labels.device)


def loss_weights(choice, labels, classes, device, say=print):
    """The cross-entropy's class weights for `--class-weights choice` ((K,) float32 on `device`, or
    None for "none"), computed once from the training labels (N,); says them in one line."""
    if choice == "none":
        return None
    weights = class_weights(labels, classes)
    low, high = int(weights.argmin()), int(weights.argmax())
    say(f"Class weights: inverse class frequency over the {len(labels):,} training images (mean weight 1), "
        f"from {float(weights[low]):.2f} ({classes[low]}) to {float(weights[high]):.2f} ({classes[high]})")
    return weights.to(device)
