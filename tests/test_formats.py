"""engine.data.formats: CIFAR-10 pickles and MNIST idx files, written here in the real on-disk formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from engine.data.formats import parse_idx, read_cifar10, read_mnist
from engine.errors import EngineError

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch=4, test=6, seed=0):
    """torchvision's cifar-10-batches-py: pickled dicts with bytes keys, as the official tarball has."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        record = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                  b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def idx_bytes(array):
    """The idx format: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian int32 dims, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root, folder="MNIST", train=5, test=3, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}"
            if compress:
                (raw / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
        arrays[prefix] = (images, labels)
    return arrays


def test_cifar10_pickles_read_with_images_and_labels_aligned(tmp_path):
    batches = write_cifar10(tmp_path)
    data = read_cifar10(tmp_path)
    assert data.classes == CIFAR_NAMES and data.flip
    assert data.train_x.shape == (20, 3, 32, 32) and data.train_x.dtype == torch.uint8
    first, labels = batches["data_batch_1"]
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major.
    assert data.train_x[1, 2, 3, 4] == first[1, 2 * 1024 + 3 * 32 + 4]
    assert data.train_y[:4].tolist() == labels
    last, last_labels = batches["data_batch_5"]
    assert torch.equal(data.train_x[-1].flatten(), torch.from_numpy(last[-1]))
    assert data.test_y.tolist() == batches["test_batch"][1]


def test_cifar10_refuses_pickles_that_execute_code(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(EngineError, match="data_batch_3 is not a CIFAR-10 batch.*refusing to load builtins.print"):
        read_cifar10(tmp_path)


def test_cifar10_wrong_shape_is_named(tmp_path):
    write_cifar10(tmp_path)
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(EngineError, match="test_batch is not a CIFAR-10 batch"):
        read_cifar10(tmp_path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_read_plain_or_gzipped(tmp_path, compress, name, folder):
    arrays = write_mnist(tmp_path, folder, compress=compress)
    data = read_mnist(tmp_path, name)
    assert data.train_x.shape == (5, 1, 28, 28) and data.test_x.shape == (3, 1, 28, 28)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert data.test_y.tolist() == arrays["t10k"][1].tolist()
    assert not data.flip and len(data.classes) == 10
    assert data.classes[9] == ("9" if name == "mnist" else "Ankle boot")


def test_idx_parser_checks_magic_and_length(tmp_path):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert parse_idx(good, "x").tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    with pytest.raises(EngineError, match="not an idx file"):
        parse_idx(b"\x00\x00\x0d\x01" + good[4:], "floats.idx")
    with pytest.raises(EngineError, match="truncated.idx holds"):
        parse_idx(good[:-1], "truncated.idx")


def test_missing_files_offline_fail_in_one_line_naming_the_alternatives(tmp_path, monkeypatch):
    # An unreachable proxy makes torchvision's real download fail fast, online or not.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(EngineError) as error:
        read_mnist(tmp_path / "nowhere", "mnist", log=lambda *_: None)
    message = str(error.value)
    assert "download failed" in message and "--data-dir" in message and "--data PATH" in message
    assert "\n" not in message


def test_damaged_downloads_are_named(tmp_path):
    write_mnist(tmp_path, compress=True)
    gz = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(EngineError, match="t10k-images-idx3-ubyte.gz is not a readable gzip file"):
        read_mnist(tmp_path, "mnist")
    with pytest.raises(EngineError, match="ends inside its idx header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00", "short.idx")


def test_damaged_cifar_metadata_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"\x80\x02}q")
    with pytest.raises(EngineError, match="batches.meta is not CIFAR-10's metadata"):
        read_cifar10(tmp_path)
