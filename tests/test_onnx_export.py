"""export.onnx_export: one self-contained, standard, verified file with a dynamic batch and its metadata."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from engine.checkpoint import load, model_from_checkpoint
from engine.cli import main
from engine.loader import BatchLoader
from engine.models import MODELS, build_model
from engine.normalization import Normalized
from export.metadata import ModelInfo
from export.onnx_export import export_onnx, int8_path, to_onnx
from export.session import open_session
from export.verify import run_session


@pytest.mark.slow
def test_export_round_trip_from_a_trained_checkpoint(tiny_run, tmp_path):
    run, best = tiny_run
    out = tmp_path / "model.onnx"
    assert main(["export", str(out), "--checkpoint", str(best)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no .onnx.data, no temporaries
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # the batch is symbolic
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # no onnxruntime contrib ops
    onnx.checker.check_model(model, full_check=True)


def test_metadata_reads_back_from_the_checkpoint(tiny_run, tiny_onnx):
    checkpoint = load(tiny_run[1])
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert json.loads(props["classes"]) == checkpoint.spec.classes
    assert json.loads(props["input_size"]) == [3, 32, 32] and props["input_range"] == "0-1"
    assert json.loads(props["mean"]) == checkpoint.spec.mean and json.loads(props["std"]) == checkpoint.spec.std
    assert props["model"] == "cifar_cnn" and props["dataset"] == "synthetic"
    assert float(props["test_accuracy"]) == pytest.approx(checkpoint.metrics[-1]["test_acc"], abs=1e-5)
    assert props["engine_version"] and int(props["opset"]) >= 18
    assert props["test_accuracy_tta"] == "0"  # evaluated on one view of each image, as the file runs
    checkpoint.metrics[-1]["tta"] = 1  # a run evaluated with --tta 1: its accuracy says so
    info = ModelInfo.from_checkpoint(checkpoint, 20)
    assert info.test_accuracy_tta == 1 and ModelInfo.from_props(info.to_props()).test_accuracy_tta == 1
    assert ModelInfo.from_props(props).classes == checkpoint.spec.classes


def test_the_graph_normalises_exactly_as_training_did(tiny_run, tiny_onnx):
    """onnxruntime on uint8 / 255 == the model on the batch loader's own normalisation of the uint8 pixels."""
    checkpoint = load(tiny_run[1])
    spec = checkpoint.spec
    pixels = torch.randint(0, 256, (9, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    loader = BatchLoader(pixels, torch.zeros(9, dtype=torch.int64), 9, spec.mean, spec.std, device="cpu",
                         train=False, channels_last=False)
    normalised, _, _ = next(loader.epoch(0))
    with torch.no_grad():
        expected = model_from_checkpoint(checkpoint)(normalised).numpy()
    session, provider = open_session(tiny_onnx, device="cpu")
    assert provider == "CPUExecutionProvider"
    got = run_session(session, pixels.numpy().astype(np.float32) / 255)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # fp32: two implementations of one graph


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_in_the_zoo_matches_pytorch_at_batch_1_7_and_64(name, tmp_path):
    shape = tuple(MODELS[name].reference_shape)
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    for module in model.modules():  # BatchNorm running statistics away from identity, so they are tested
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    wrapped = Normalized(model, [0.45] * shape[0], [0.25] * shape[0]).eval()
    path = tmp_path / f"{name}.onnx"
    to_onnx(wrapped, torch.rand(2, *shape), path)
    session, _ = open_session(path, device="cpu")
    images = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(images)).numpy()
    for batch in (1, 7, 64):
        got = run_session(session, images, batch)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4, err_msg=f"{name} at batch {batch}")


def test_default_checkpoint_is_runs_latest_best_and_without_a_run_one_line_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "model.onnx", "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine train" in err and not (tmp_path / "model.onnx").exists()


def test_a_test_set_too_small_for_three_batch_sizes_is_topped_up_with_random_images():
    from engine.data.dataset import Dataset
    from export.onnx_export import MIN_VERIFY_IMAGES, verification_images

    test_x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    data = Dataset("tiny", ["a", "b"], test_x, torch.zeros(5, dtype=torch.long), test_x, torch.zeros(5, dtype=torch.long),
                   flip=True)
    images, source = verification_images(data, (3, 8, 8))
    assert images.shape == (MIN_VERIFY_IMAGES, 3, 8, 8) and images.dtype == np.float32
    assert np.array_equal(images[:5], test_x.numpy().astype(np.float32) / 255)  # every test image, then random ones
    assert source == f"5 test images of tiny and {MIN_VERIFY_IMAGES - 5} random images"
    whole = verification_images(Dataset("big", ["a"], test_x, test_x[:, 0, 0, 0].long(), test_x.repeat(8, 1, 1, 1),
                                        torch.zeros(40, dtype=torch.long), flip=True), (3, 8, 8))
    assert whole[0].shape == (40, 3, 8, 8) and whole[1] == "40 test images of big"


@pytest.mark.slow
def test_export_without_the_runs_data_verifies_on_random_images_and_says_so(tiny_run, tmp_path):
    checkpoint = load(tiny_run[1])
    checkpoint.config["data"] = str(tmp_path / "gone.tar.gz")  # a dataset that is not here any more
    moved = tmp_path / "moved.pt"
    torch.save(checkpoint.to_dict(), moved)
    said = []
    result = export_onnx(tmp_path / "m.onnx", moved, log=said.append)
    assert "random images" in result.verified_on and any("not available" in line for line in said)
    assert result.parity.agreement == 1.0 and (tmp_path / "m.onnx").is_file()


@pytest.mark.slow
def test_a_broken_export_fails_verification_and_leaves_no_file(tiny_run, tmp_path, monkeypatch, capsys):
    """A deliberately broken exporter (it perturbs one weight after writing) must be caught."""
    import export.onnx_export as exporter

    real = exporter.to_onnx

    def broken(module, sample, path, opset=None):
        written = real(module, sample, path, opset)
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
        values = onnx.numpy_helper.to_array(weight).copy()
        values.flat[: values.size // 4] += 0.05
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))
        return written

    monkeypatch.setattr(exporter, "to_onnx", broken)
    out = tmp_path / "model.onnx"
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1])]) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary
    out.write_bytes(b"an earlier export")  # an existing OUT survives a failed export untouched
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1])]) == 1
    assert out.read_bytes() == b"an earlier export"


@pytest.mark.slow
def test_int8_writes_a_valid_quantized_model_and_reports_both_accuracies(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1]), "--int8"]) == 0
    quantized = int8_path(out)
    assert quantized.name == "model.int8.onnx" and quantized.is_file()
    model = onnx.load(str(quantized))
    onnx.checker.check_model(model, full_check=True)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    props = {p.key: p.value for p in model.metadata_props}
    assert props.keys() >= {"classes", "input_size"}
    # the checkpoint's (fp32) accuracy is not the int8 file's own: a client reading it would take it for one
    fp32_props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert fp32_props["test_accuracy"] and "quantization" not in fp32_props
    assert props["test_accuracy"] == "" and props["quantization"] == "int8 static QDQ, per channel"
    report = capsys.readouterr().out
    assert "fp32: Test_acc:" in report and "int8: Test_acc:" in report and "img/s" in report
    lines = report.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(start))
             for start in ("Verified on", "Quantizing to int8", f"Wrote {out} (", f"Wrote {quantized}:")]
    assert order == sorted(order)  # both files are said written once both are (test_own_onnx_p8_pair)
    assert "(the checkpoint's, on at most 200 of its test images (--limit-test))" in lines[order[2]]  # tiny_run's subset, said
    from engine import __version__

    written = onnx.load(str(out))
    assert (written.producer_name, written.producer_version) == ("engine", __version__)


@pytest.mark.parametrize("args, message", [
    (["model.txt"], "must end in .onnx"),
    (["model.onnx", "--opset", "7"], "--opset 7"),
    (["model.onnx", "--checkpoint", "nothing.pt"], "no checkpoint"),
    (["missing-folder/model.onnx"], "does not exist"),
])
def test_bad_export_arguments_are_one_line(args, message, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "--checkpoint" not in args:
        args = args + ["--checkpoint", str(tiny_run[1])]
    assert main(["export", *args]) in (1, 2)
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_exporter_prints_only_its_own_lines(tiny_run, tmp_path):
    """torch.onnx's progress lines and warnings stay off the terminal (checked on the real process)."""
    done = subprocess.run([sys.executable, "-m", "engine", "export", str(tmp_path / "m.onnx"), "--checkpoint",
                           str(tiny_run[1])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["Exporting", "Verified", "Wrote"], lines


@pytest.mark.slow
def test_engine_imports_neither_onnx_nor_onnxruntime():
    code = ("import sys, engine.cli, engine.train, engine.evaluate, engine.checkpoint, export; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_metadata_accuracy_is_the_checkpoints_own_evaluation_even_within_an_epoch(tmp_path):
    from engine.config import Config
    from engine.train import train

    out, metrics = train(Config(epochs=3, limit_train=512, limit_test=200, batch_size=32, amp=False, quiet=True,
                                device="cpu", target_acc=12.0, eval_every=0.25, out=str(tmp_path / "run")),
                         log=lambda *_: None)
    info = ModelInfo.from_checkpoint(load(out / "best.pt"), 20)
    best = max(metrics, key=lambda m: m["test_acc"])
    assert info.test_accuracy == best["test_acc"]  # the evaluation of exactly these weights, partial epoch or not


def test_agreement_reads_100_percent_only_when_every_image_agrees():
    from export.verify import agreement_text

    assert agreement_text(1.0) == "100.0%"
    assert agreement_text(1999 / 2000) == "99.9%"  # 99.95% would round up to a 100.0% that is not there
    assert agreement_text(0.5) == "50.0%" and agreement_text(0.12345) == "12.3%"


class BranchesOnTheBatch(torch.nn.Module):
    """A forward that depends on the batch size: no graph for every batch exists."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        if x.shape[0] == 2:
            x = x * 1.0
        return self.head(x.flatten(1))


def test_a_forward_that_depends_on_the_batch_size_is_refused_in_one_line(tmp_path):
    from engine.errors import EngineError

    with pytest.raises(EngineError, match="takes batches of 2 only: the model's forward depends on the batch size"):
        to_onnx(BranchesOnTheBatch().eval(), torch.rand(2, 3, 32, 32), tmp_path / "m.onnx")


class DoublesASingleImage(torch.nn.Module):
    """A branch on a batch of 1, which torch.export assumes a dynamic size never is: the graph drops it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 10)

    def forward(self, x):
        f = x.mean((2, 3))
        if x.shape[0] == 1:
            f = f * 2.0
        return self.head(f)


@pytest.mark.slow
def test_a_branch_on_a_single_image_fails_verification_at_batch_1(tmp_path):
    from engine.errors import EngineError
    from export.verify import check_parity

    model = DoublesASingleImage().eval()
    to_onnx(model, torch.rand(2, 3, 32, 32), tmp_path / "m.onnx")  # exported without the branch
    images = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    with pytest.raises(EngineError, match="verification failed"):  # PyTorch at batch 1 is compared too
        check_parity(open_session(tmp_path / "m.onnx")[0], model, images)


@pytest.mark.slow
def test_parity_tolerance_grows_with_the_logits_and_a_real_large_logit_model_verifies(tmp_path):
    from export.verify import ATOL, Parity, check_parity

    assert Parity(8, 2.44e-4, 1.0, 885.0).ok()  # resnet18's logits reach 885: a few 1e-7 of them apart
    assert not Parity(8, 2.44e-4, 1.0, 1.0).ok() and not Parity(8, 0.05, 1.0, 885.0).ok()
    model = build_model("cifar_cnn", (3, 32, 32), 10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)  # logits in the hundreds or more
    to_onnx(model, torch.rand(2, 3, 32, 32), tmp_path / "big.onnx")
    session, _ = open_session(tmp_path / "big.onnx", device="cpu")
    images = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    parity = check_parity(session, model, images)
    assert parity.scale > 100 and parity.max_abs_diff <= parity.tolerance() and parity.tolerance() > ATOL


@pytest.mark.slow  # two trainings and two verified exports
def test_the_accuracy_export_prints_says_the_precision_it_was_measured_in(tmp_path):
    """A bf16 run's checkpoint accuracy was printed as the fp32 file's (55.70% against the file's 55.30%
    in one probe): it is the run's evaluation under autocast, and said so."""
    from engine.config import Config
    from engine.train import train

    flags = dict(epochs=1, limit_train=64, limit_test=32, batch_size=32, device="cpu", quiet=True, model="mlp")
    for dtype, said in (("bf16", True), (None, False)):
        amp = dict(amp=True, amp_dtype="bf16") if dtype else dict(amp=False)
        out, _ = train(Config(out=str(tmp_path / f"run{dtype}"), **flags, **amp), log=lambda *_: None)
        assert load(out / "best.pt").runtime["precision"] == (dtype or "fp32")
        result = export_onnx(tmp_path / f"m{dtype}.onnx", out / "best.pt", log=lambda *_: None)
        wrote = result.lines()[-1]
        assert ("evaluated in bf16, where this file runs fp32: engine eval" in wrote) == said, wrote


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # a user's scripted part, on purpose
def test_what_the_exporter_cannot_write_is_one_line_before_it_tries(tmp_path):
    """A scripted submodule gave torch's 'Conv2d.forward() takes 2 positional arguments but 3 were given';
    bf16 parameters the ONNX checker's 'unsupported type: tensor(bfloat16)'."""
    from engine.errors import UsageError
    from engine.normalization import Normalized

    class Net(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv, self.fc = conv, torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x.to(self.fc.weight.dtype)).mean((2, 3))).float()

    scripted = Net(torch.jit.script(torch.nn.Conv2d(3, 4, 3)))
    with pytest.raises(UsageError, match="Net holds a torch.jit.script-ed submodule, which torch.onnx.export"):
        to_onnx(Normalized(scripted, [0.5] * 3, [0.5] * 3), torch.zeros(1, 3, 8, 8), tmp_path / "s.onnx")
    half = Net(torch.nn.Conv2d(3, 4, 3)).to(torch.bfloat16)
    with pytest.raises(UsageError, match="Net's parameters are bfloat16; the exported file runs float32"):
        to_onnx(Normalized(half, [0.5] * 3, [0.5] * 3), torch.zeros(1, 3, 8, 8), tmp_path / "h.onnx")
    buffered = Net(torch.nn.Conv2d(3, 4, 3))
    buffered.register_buffer("scale", torch.ones(4, dtype=torch.float16))
    with pytest.raises(UsageError, match="Net's buffers are float16; the exported file runs float32"):
        to_onnx(Normalized(buffered, [0.5] * 3, [0.5] * 3), torch.zeros(1, 3, 8, 8), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())


class SqueezesTheBatch(torch.nn.Module):
    """`.squeeze()` with no dim: (classes,) for a single image in PyTorch; the exported graph keeps the batch."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 10)

    def forward(self, x):
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).squeeze())


def test_a_forward_that_drops_a_single_image_s_batch_verifies_on_the_rows_it_gives(tmp_path):
    """It was numpy's 'operands could not be broadcast together with shapes (16,10) (160,)', a traceback."""
    from export.verify import check_parity

    model = SqueezesTheBatch().eval()
    to_onnx(model, torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
    session, _ = open_session(tmp_path / "m.onnx", device="cpu")
    images = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    parity = check_parity(session, model, images)
    assert parity.ok() and parity.max_abs_diff < 1e-5
    assert "PyTorch's forward gives (10,) for a batch of 1, where the file keeps the batch: (1, 10)" in parity.describe()
    assert run_session(session, images[:1], 1).shape == (1, 10)


class NoisyInEvaluation(torch.nn.Module):
    """Monte Carlo dropout: random in evaluation mode too."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 10)

    def forward(self, x):
        return self.head(torch.nn.functional.dropout(x.mean((2, 3)), 0.5, training=True))


def test_verification_names_the_batch_size_that_differs_and_a_forward_that_is_random(tmp_path):
    """Both read as onnxruntime against PyTorch differing, with no hint that the batch size or the
    model's own randomness was the cause."""
    from engine.errors import EngineError
    from export.verify import check_parity

    images = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    for model, said in ((DoublesASingleImage(), "verification failed at batches of 1 (those of 7 and 16 agree: the "
                                                "forward depends on the batch size"),
                        (NoisyInEvaluation(), "PyTorch's forward gives other logits for the same images each time it "
                                              "runs in evaluation mode")):
        to_onnx(model.eval(), torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
        with pytest.raises(EngineError, match="the file was not written") as raised:
            check_parity(open_session(tmp_path / "m.onnx", device="cpu")[0], model, images)
        assert said in str(raised.value)


class AutocastInside(torch.nn.Module):
    """bfloat16 inside the forward (its own torch.autocast): ONNX's Conv takes no bfloat16."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 10)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = self.conv(x).mean((2, 3))
        return self.head(x.float())


def test_a_forward_computing_in_bfloat16_itself_is_told_where_the_checker_refuses_it(tmp_path):
    """It was the checker's 'X typestr: T, has unsupported type: tensor(bfloat16)' alone."""
    from engine.errors import EngineError
    from export.verify import check_standard

    to_onnx(AutocastInside().eval(), torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(EngineError, match=r"unsupported type: tensor\(bfloat16\) \(the forward computes in bfloat16 "
                                          r"itself, under torch.autocast or after .to\(torch.bfloat16\): compute in float32"):
        check_standard(tmp_path / "m.onnx")


class BatchStatistics(torch.nn.Module):
    """A BatchNorm without running statistics normalises with each batch's own, in evaluation mode too."""

    def __init__(self, running):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 10)
        self.norm = torch.nn.BatchNorm2d(4, track_running_stats=running)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


@pytest.mark.slow  # two exports and their verification
def test_a_forward_that_mixes_the_images_of_a_batch_verifies_and_says_so(tmp_path):
    """The file is faithful, but an image's result depends on the batch a client sends it in: that was not said."""
    from export.verify import check_parity

    images = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    for running, said in ((False, True), (True, False)):
        model = BatchStatistics(running).eval()
        to_onnx(model, torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
        parity = check_parity(open_session(tmp_path / "m.onnx", device="cpu")[0], model, images)
        assert parity.ok()
        assert ("PyTorch's own logits for an image change with the batch it is in" in parity.describe()) == said


class AdaptiveMaxPool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3 * 3 * 3, 10)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_max_pool2d(x, (3, 3))  # 8 -> 3: no ONNX translation in torch 2.14
        return self.head(pooled.flatten(1))


def test_an_op_without_an_onnx_translation_is_named_with_the_line_that_uses_it(tmp_path):
    """It was torch's "No ONNX function found for <OpOverload(op='aten.adaptive_max_pool2d', overload='default')>.
    Failure message: No decompositions registered for the real-valued input", with no line of the model."""
    from engine.errors import EngineError

    with pytest.raises(EngineError) as raised:
        to_onnx(AdaptiveMaxPool().eval(), torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
    said = str(raised.value)
    assert said.startswith("torch.onnx.export failed: the forward uses aten.adaptive_max_pool2d (")
    assert "test_onnx_export.py" in said and "pooled = torch.nn.functional.adaptive_max_pool2d(x, (3, 3))" in said
    assert said.endswith("which has no ONNX translation in this torch; compute it with other operations to export the model")
    assert not list(tmp_path.iterdir())
