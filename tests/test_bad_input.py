"""The bad-input matrix: every row runs the real `engine` command in a subprocess and must give its
exit code (1 or 2, the rule above CASES), one to three lines on stderr, no traceback, and leave
every file that was on disk before exactly as it was. Adding a case is one line in CASES.

Each case runs in its own copy of a workspace (WORKSPACE below: a trained run, its ONNX file and
a set of broken files). The subprocesses run a few at a time before the assertions, since each
spends most of its ~2 s importing torch.
"""

import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from engine.lock import RunLock

pytestmark = pytest.mark.slow  # subprocesses or whole trainings: in CI (README's test command), not in a plain `pytest`

# (case, command line run in the workspace, words its one error line must hold, exit code: 2 for a wrong
# argument (a name, a number, a combination of flags, a model that does not fit the images), 1 for the
# files or the environment, or an exception raised in the user's model code; docs/reliability.md)
CASES = [
    # data
    ("data: nonexistent path", "train --data nowhere/images --out out", "no such file or directory", 1),
    ("data: empty folder", "train --data empty/ --out out", "empty holds no images (files ending", 1),
    ("data: images loose, no class folder", "train --data flat/ --out out",
     "no images in class folders (expected train/<class>/<image>", 1),
    ("data: eval on an empty folder", "eval run/last.pt --data empty/", "empty holds no images (files ending", 1),
    ("data: corrupt JPEG in a folder", "train --data corrupt/ --out out", "cannot decode image", 1),
    ("data: corrupt JPEG in an archive", "train --data corrupt.tar.gz --out out", "cannot decode image", 1),
    ("data: not an archive", "train --data fake.tar.gz --out out", "is not a readable archive", 1),
    ("data: truncated archive", "train --data truncated.tar.gz --out out", "is not a readable archive", 1),
    ("data: neither folder nor archive", "train --data notes.txt --out out", "is not a directory or a .tar", 1),
    ("data: train/test classes differ", "train --data mismatch/ --out out", "test/ has classes that train/ lacks: cat", 1),
    ("data: one class", "train --data oneclass/ --out out", "a classifier needs at least 2", 1),
    ("data: a huge image in a folder", "train --data huge/ --out out", "20000x20000 pixels, too large to decode safely", 1),
    ("data: eval on data of another shape", "eval run/last.pt --data small/", "was trained on 3x32x32 images of 10", 1),
    # checkpoints
    ("checkpoint: truncated", "eval truncated.pt", "its zip archive is cut short or damaged", 1),
    ("checkpoint: not a checkpoint", "eval notes.pt", "not a readable engine checkpoint", 1),
    ("checkpoint: another model's", "eval other.pt --limit-test 32", "does not fit lenet on 3x32x32 images", 1),
    ("checkpoint: hostile (eval)", "eval hostile.pt", "holds pickled code (posix.system)", 1),
    ("checkpoint: hostile (export)", "export m.onnx --checkpoint hostile.pt", "holds pickled code (posix.system)", 1),
    ("checkpoint: truncated (export)", "export m.onnx --checkpoint truncated.pt", "not a readable engine checkpoint", 1),
    ("checkpoint: another model's (export)", "export m.onnx --checkpoint other.pt", "does not fit lenet", 1),
    ("checkpoint: missing", "eval absent.pt", "no checkpoint at absent.pt", 1),
    ("checkpoint: a folder", "eval run", "run is a folder, not a checkpoint; name a file in it (a run's best.pt or last.pt)", 2),
    ("init-from: a folder", "train --init-from run --out out", "is a folder; name a weights file in it (a run's best.pt)", 2),
    ("init-from: missing", "train --init-from absent.pt --out out", "--init-from: no such file", 1),
    # ONNX
    ("onnx: truncated (predict)", "predict truncated.onnx cat.png", "is not a valid ONNX model", 1),
    ("onnx: text named .onnx (predict)", "predict text.onnx cat.png", "is not a valid ONNX model", 1),
    ("onnx: no engine metadata (predict)", "predict bare.onnx cat.png", "--input-size", 1),
    ("onnx: truncated (eval)", "eval truncated.onnx", "is not a valid ONNX model", 1),
    ("onnx: no engine metadata (eval)", "eval bare.onnx", "--input-size", 1),
    # predict
    ("predict: missing image", "predict model.onnx absent.png", "absent.png: no such file", 1),
    ("predict: not an image", "predict model.onnx notes.png", "is not a readable image", 1),
    ("predict: zero-byte image", "predict model.onnx empty.png", "is empty (0 bytes)", 1),
    ("predict: huge image", "predict model.onnx huge/train/a/big.png", "too large to decode safely", 1),
    ("predict: --topk 0", "predict model.onnx cat.png --topk 0", "must be a whole number of at least 1", 2),
    # numbers
    ("numbers: negative epochs", "train --epochs -1", "--epochs must be a whole number of at least 1", 2),
    ("numbers: zero epochs", "train --epochs 0", "--epochs must be a whole number of at least 1", 2),
    ("numbers: zero batch size", "train --batch-size 0", "--batch-size must be a whole number of at least 1", 2),
    ("numbers: batch larger than the data", "train --limit-train 16 --batch-size 32 --out out",
     "--batch-size 32 is larger than the 16 training images; use a smaller --batch-size (at most 16)", 2),
    ("numbers: zero lr", "train --lr 0", "--lr must be greater than 0", 2),
    ("numbers: negative lr", "train --lr -0.1", "--lr must be greater than 0", 2),
    ("numbers: not a number", "train --epochs three", "invalid int value: 'three'", 2),
    ("numbers: NaN lr", "train --lr nan", "--lr must be a finite number", 2),
    ("numbers: inf lr", "train --lr inf", "--lr must be a finite number", 2),
    ("numbers: NaN momentum", "train --momentum nan", "--momentum must be a finite number", 2),
    ("numbers: --lr beyond float32", "train --lr 1e308", "--lr 1e+308 is beyond float32's range", 2),
    ("numbers: --lr x --bn-lr-scale beyond float32", "train --model fast_cifar94 --lr 1e37",
     "--lr 1e+37 x --bn-lr-scale 64 is beyond float32's range", 2),
    ("numbers: --weight-decay beyond float32", "train --weight-decay 1e300", "--weight-decay 1e+300 is beyond float32's", 2),
    ("numbers: negative seed", "train --seed -1", "--seed must be a whole number from 0", 2),
    ("numbers: bad --save-every", "train --save-every soon", "--save-every must be a duration", 2),
    # names
    ("names: unknown optimizer", "train --optimizer lion", "invalid choice: 'lion'", 2),
    ("names: unknown model", "train --model vgg", "unknown model 'vgg'", 2),
    ("names: unknown dataset", "train --data imagenet", "unknown dataset 'imagenet'", 2),
    ("names: unknown schedule", "train --schedule step", "invalid choice: 'step'", 2),
    ("names: unknown command", "fly", "invalid choice: 'fly'", 2),
    # output
    ("output: --out under a file", "train --out notes.txt/run", "cannot write to --out notes.txt/run", 1),
    ("output: --out unwritable", "train --out /proc/engine-run", "cannot write to --out /proc/engine-run", 1),
    ("output: --out holds a run", "train --out run", "already holds a run; continue it with --resume", 2),
    ("output: export into a file", "export notes.txt/m.onnx --checkpoint run/best.pt", "notes.txt is a file, not a folder", 1),
    ("output: export into a missing folder", "export nowhere/m.onnx --checkpoint run/best.pt",
     "cannot write nowhere/m.onnx: folder nowhere does not exist", 1),
    ("output: export to a non-.onnx", "export model.txt --checkpoint run/best.pt", "must end in .onnx", 2),
    ("output: export into an unwritable folder", "export /proc/m.onnx --checkpoint run/best.pt",
     "cannot write /proc/m.onnx: folder /proc is not writable", 1),
    # resume
    ("resume: nothing to resume", "train --resume empty", "nothing to resume", 2),
    ("resume: no run at all", "train --resume", "nothing to resume", 2),
    ("resume: flags that change the model", "train --resume run --model lenet", "--model lenet differs from its --model cifar_cnn", 2),
    ("resume: another batch size", "train --resume run --batch-size 16", "--batch-size 16 differs", 2),
    ("resume: from best.pt", "train --resume run/best.pt", "takes a run directory or its last.pt", 2),
    ("resume: run dir locked by a live run", "train --resume run", "is in use by another engine train", 1),
    ("resume: a hostile last.pt", "train --resume hostile-run", "holds pickled code", 1),
    # user models (--model FILE.py:NAME, package.module:NAME, torchvision:NAME)
    ("model: missing file", "train --model absent.py:Net --out out", "no such file absent.py", 1),
    ("model: file raises on import", "train --model raises.py:Net --out out", "raises.py raised ZeroDivisionError on import (line 2)", 1),
    ("model: NAME not found", "train --model nets.py:Nope --out out", "Nope is not defined there (nn.Module classes there: Net)", 2),
    ("model: NAME not a module", "train --model nets.py:WIDTH --out out", "WIDTH is not an nn.Module subclass or a function", 2),
    ("model: constructor raises", "train --model ctor.py:Net --out out", "raised ValueError (line 6): boom", 1),
    ("model: forward raises", "train --model fwd.py:Net --out out", "fwd.py:Net cannot take 3x32x32 images", 2),
    ("model: output not (batch, classes)", "train --model out.py:Net --out out", "returns (2, 7) for a batch of 2", 2),
    ("model: --model-args not JSON", "train --model nets.py:Net --model-args {width --out out", "--model-args must be a JSON object", 2),
    ("model: --model-args not accepted", "train --model nets.py:Net --model-args '{\"width\": 3}' --out out",
     "it takes no argument 'width'", 2),
    ("model: torchvision:nope", "train --model torchvision:nope --out out", "torchvision has no classification model 'nope'", 2),
    ("model: a standard-library function", "train --model os:system --out out", "os:system is not model code", 2),
    ("model: user checkpoint without its code (eval)", "eval user.pt", "name it again: --model", 2),
    ("model: user checkpoint without its code (export)", "export m.onnx --checkpoint user.pt", "name it again: --model", 2),
    ("model: user run resumed without its code", "train --resume user-run", "name it again: --model", 2),
    ("model: hostile reference", "eval hostileref.pt", "names a model the engine will not load", 1),
    ("model: reference to other code than given", "eval evilref.pt --model nets.py:Net", "was trained with evil_mod:Net", 2),
    ("model: --init-from that does not fit", "train --init-from lenet.pth --out out", "does not fit this model", 1),
    ("model: --init-from not weights", "train --init-from notes.pt --out out", "is not a readable weights file", 1),
    ("model: --freeze matching nothing", "train --freeze nothing --out out", "--freeze nothing: no parameter", 2),
    ("model: --freeze of every parameter", "train --freeze features,fc1,fc2 --out out", "leaves no parameter to train", 2),
    ("model: a reference holding a list", "eval listref.pt", "names a model the engine will not load (name ['cifar_cnn']", 1),
    ("model: a folder named like a file", "train --model adir.py:Net --out out", "adir.py is a folder, not a .py file", 2),
    # users' images (--image-size, layouts, splits)
    ("images: mixed sizes without --image-size", "train --data mixed/ --out out", "images differ in size (8x8", 2),
    ("images: --image-size 0", "train --data mixed/ --image-size 0 --out out", "--image-size takes a side S or HxW", 2),
    ("images: --image-size -3", "train --data mixed/ --image-size -3 --out out", "--image-size takes a side S or HxW", 2),
    ("images: --image-size abc", "train --data mixed/ --image-size abc --out out", "--image-size takes a side S or HxW", 2),
    ("images: --image-size 10x", "train --data mixed/ --image-size 10x --out out", "--image-size takes a side S or HxW", 2),
    ("images: val/ classes differ from train's", "train --data valmismatch/ --out out", "val/ has classes that train/ lacks: cat", 1),
    ("images: a class with no images", "train --data emptyclass/ --out out", "class folder train/c has no images", 1),
    ("images: a split leaving a class empty", "train --data flatfew/ --test-split 10% --out out",
     "--test-split 10% leaves class a with no test images", 2),
    ("images: --test-split not a percentage", "train --data flatfew/ --test-split half --out out",
     "--test-split takes a percentage", 2),
    ("flags: --target-acc as a fraction", "train --target-acc 0.9 --out out", "for 90% give 90", 2),
    ("images: --test-split 100%", "train --data flatfew/ --test-split 100% --out out",
     "--test-split takes a percentage above 0% and below 100%", 2),
    ("images: --test-split as a fraction", "train --data flatfew/ --test-split 0.2 --out out",
     "not '0.2' (0.2 as a percentage is 20%)", 2),
    ("images: --test-split with a test/ folder", "train --data small/ --test-split 20% --out out",
     "--test-split is for folders without a test split", 2),
    ("images: --image-size on a built-in set", "train --image-size 32 --out out", "--image-size and --test-split are for image folders", 2),
    ("images: a corrupt image among thousands", "train --data thousands/ --out out", "thousands/train/b/0777.png: not an image PIL can read", 1),
    ("images: an empty (0-byte) image file", "train --data zerobyte/ --out out", "zerobyte/train/b/1.png: the file is empty", 1),
    ("images: a class folder holding only hidden files", "train --data junkclass/ --out out", "class folder train/c has no images", 1),
    ("images: test/ lacking a class train/ has", "train --data testlacks/ --out out", "test/ lacks classes that train/ has: cat", 1),
    ("images: --test-split all in training", "train --data flatfew/ --test-split all --out out",
     "--test-split all is for engine eval", 2),
    # per-class results and class weights
    ("confusion: into a missing folder", "eval run/last.pt --confusion nowhere/cm.png", "nowhere does not exist", 1),
    ("confusion: under a file", "eval run/last.pt --confusion notes.txt/cm.png", "notes.txt is not a folder", 1),
    ("confusion: not a .png", "eval run/last.pt --confusion cm.jpg", "give a file name ending in .png", 2),
    ("confusion: unwritable folder (onnx)", "eval model.onnx --confusion /proc/cm.png", "cannot write to /proc", 1),
    ("names: unknown --class-weights", "train --class-weights balanced", "invalid choice: 'balanced'", 2),
    ("resume: another --class-weights", "train --resume run --class-weights auto", "--class-weights auto differs", 2),
    ("numbers: --ema 1", "train --ema 1", "--ema is the weight average's decay per step, 0 < DECAY < 1", 2),
    ("numbers: --ema 0", "train --ema 0", "--ema is the weight average's decay per step, 0 < DECAY < 1", 2),
    ("numbers: NaN --ema", "train --ema nan", "--ema is the weight average's decay per step, 0 < DECAY < 1", 2),
    ("numbers: --ema not a number", "train --ema high", "invalid float value: 'high'", 2),
    ("resume: --ema added to a run without it", "train --resume run --ema 0.99", "--ema 0.99 differs from its --no-ema", 2),
    ("memory: a model too large for the host", "summary --model cifar_cnn --input-shape 3x100000x100000",
     "the host ran out of memory (it asked for 20,473.45 GB at once)", 1),
]
USER_CODE = {  # the user-model files the cases name
    "nets.py": b"from torch import nn\n\nWIDTH = 3\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
               b"        super().__init__()\n        self.fc = nn.Linear(3 * 32 * 32, 10)\n\n"
               b"    def forward(self, x):\n        return self.fc(x.flatten(1))\n",
    "raises.py": b"import torch\nx = 1 / 0\n",
    "ctor.py": b"from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        raise ValueError('boom')\n",
    "fwd.py": b"from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              b"        self.fc = nn.Linear(3, 10)\n\n    def forward(self, x):\n        return self.fc(x)\n",
    "out.py": b"from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              b"        self.fc = nn.Linear(3 * 32 * 32, 7)\n\n    def forward(self, x):\n        return self.fc(x.flatten(1))\n",
}
LOCKED = {"resume: run dir locked by a live run"}  # this test process holds the run's lock meanwhile
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def png_bytes(value, size=8, mode="RGB"):
    buffer = io.BytesIO()
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png():
    import struct
    import zlib

    data = bytearray(png_bytes(0))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def put(root, files):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def tar_gz(path, files):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def folder(classes=("a", "b"), test_classes=None, extra=None):
    files = {f"{split}/{c}/{k}.png": png_bytes(40 * i + k)
             for split, names in (("train", classes), ("test", test_classes or classes))
             for i, c in enumerate(names) for k in range(3)}
    return {**files, **(extra or {})}


@pytest.fixture(scope="module")
def workspace(tiny_run, tiny_onnx, tmp_path_factory):
    """Everything the cases point at, built once; each case gets its own copy."""
    import onnx

    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(tiny_run[0], root / "run")
    shutil.copy(tiny_onnx, root / "model.onnx")
    (root / "empty").mkdir()
    put(root, {"flat/a.png": png_bytes(1), "notes.txt": b"notes", "notes.pt": b"hello", "notes.png": b"not an image",
               "empty.png": b"", "cat.png": png_bytes(90, 32), "text.onnx": b"ir_version: 8\n"})
    corrupt = folder(extra={"train/b/9.jpg": b"\xff\xd8\xff\xe0 broken jpeg"})
    put(root / "corrupt", corrupt)
    tar_gz(root / "corrupt.tar.gz", corrupt)
    (root / "fake.tar.gz").write_text("this is not an archive")
    tar_gz(root / "good.tar.gz", folder())
    data = (root / "good.tar.gz").read_bytes()
    (root / "truncated.tar.gz").write_bytes(data[: len(data) // 2])
    (root / "good.tar.gz").unlink()
    put(root / "mismatch", folder(("a", "b"), ("a", "b", "cat")))
    put(root / "oneclass", folder(("a",)))
    put(root / "small", folder())
    put(root / "huge", folder(extra={"train/a/big.png": huge_png()}))
    put(root / "mixed", folder(extra={"train/b/odd.png": png_bytes(7, size=12)}))
    put(root / "valmismatch", {name.replace("test/", "val/"): data
                               for name, data in folder(("a", "b"), ("a", "b", "cat")).items()})
    put(root / "emptyclass", folder())
    (root / "emptyclass" / "train" / "c").mkdir()
    (root / "adir.py").mkdir()
    put(root / "zerobyte", folder(extra={"train/b/1.png": b""}))
    put(root / "junkclass", folder(extra={"train/c/.DS_Store": b"junk", "train/c/._0.png": b"junk"}))
    put(root / "testlacks", folder(("a", "b", "cat"), ("a", "b")))
    put(root / "flatfew", {f"{c}/{k}.png": png_bytes(k) for c in ("a", "b") for k in range(3)})
    many = {f"{split}/{c}/{k:04d}.png": png_bytes(k % 200, size=4) for split, n in (("train", 1000), ("test", 50))
            for c in ("a", "b") for k in range(n)}
    put(root / "thousands", {**many, "train/b/0777.png": b"\x89PNG\r\n\x1a\n broken"})
    last = (root / "run" / "last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(last[: len(last) // 2])
    other = torch.load(root / "run" / "last.pt", weights_only=True)
    other["config"]["model"] = other["model_ref"]["name"] = "lenet"
    torch.save(other, root / "other.pt")
    torch.save({"format": "engine-checkpoint/1", "model": {"w": Payload(root / "PAYLOAD_RAN")}}, root / "hostile.pt")
    (root / "hostile-run").mkdir()
    shutil.copy(root / "hostile.pt", root / "hostile-run" / "last.pt")
    put(root, USER_CODE)
    from engine.models import build_model

    torch.save(build_model("lenet", (3, 32, 32), 10).state_dict(), root / "lenet.pth")  # a plain state dict
    put(root, {"evil_mod.py": f"open({str(root / 'PAYLOAD_RAN')!r}, 'w').close()\n".encode()})  # importing it is the harm
    state = torch.load(root / "run" / "last.pt", weights_only=True)
    refs = {"user.pt": {"kind": "file", "name": "Net", "file": str(root / "nets.py"), "sha256": "0" * 64, "args": {}},
            "hostileref.pt": {"kind": "module", "name": "system", "file": "os", "sha256": None, "args": {}},
            "evilref.pt": {"kind": "module", "name": "Net", "file": "evil_mod", "sha256": None, "args": {}},
            "listref.pt": {"kind": "builtin", "name": ["cifar_cnn"], "file": None, "sha256": None, "args": {}}}
    for name, ref in refs.items():
        torch.save({**state, "model_ref": ref}, root / name)
    (root / "user-run").mkdir()
    shutil.copy(root / "user.pt", root / "user-run" / "last.pt")
    model = (root / "model.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(model[: len(model) // 2])
    bare = onnx.load(str(root / "model.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(root / "bare.onnx"))
    return root


def snapshot(root):
    """{relative path: (mtime_ns, sha256)} of every file under root."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(root))] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


def run_case(case, command, base, where):
    shutil.copytree(base, where, symlinks=True)
    before = snapshot(where)
    lock = RunLock(where / "run") if case in LOCKED else None
    try:
        env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "ENGINE_CACHE_DIR": str(where / "cache")}
        env.pop("ENGINE_TEST_PAUSE_AT", None)
        result = subprocess.run([sys.executable, "-m", "engine", *shlex.split(command)], capture_output=True, text=True,
                                cwd=where, env=env, timeout=300)
    finally:
        if lock:
            lock.release()
    after = snapshot(where)
    changed = sorted(name for name, stamp in before.items() if after.get(name) != stamp)
    return result, changed


@pytest.fixture(scope="module")
def outcomes(workspace, tmp_path_factory):
    """Every case run, three subprocesses at a time: {case: (CompletedProcess, files lost or changed)}."""
    root = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(run_case, case, command, workspace, root / f"case{i}")
                   for i, (case, command, *_) in enumerate(CASES)}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case, command, words, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(outcomes, workspace, case, command, words, code):
    result, changed = outcomes[case]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"{command}: exit {result.returncode}, not {code}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert 1 <= len(lines) <= 3, result.stderr
    assert any(words in line for line in lines), result.stderr
    assert changed == [], f"{command} changed or removed {changed}"
    assert not (workspace / "PAYLOAD_RAN").exists()  # the hostile checkpoints' payload never ran


def test_the_matrix_covers_enough_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
