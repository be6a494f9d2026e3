"""A .onnx file whose bytes changed after export (one byte flipped inside a weight, the size unchanged)
loaded and gave other predictions without a word in engine eval / engine predict / export.load: ONNX
has no checksum. Export now writes an engine_digest into the metadata, every session the engine opens
checks it, and a file that no longer matches is one line naming it; files without a digest still run."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

import export
from engine.cli import main
from engine.errors import EngineError
from export.digest import KEY, compute

pytestmark = pytest.mark.slow  # the session's tiny export (shared with other tests), onnxruntime sessions


def flipped(source, target, find):
    """Copy `source` to `target` with one byte flipped inside the bytes `find(model)` returns."""
    model = onnx.load(str(source))
    raw = bytearray(source.read_bytes())
    inside = find(model)
    at = raw.find(inside)
    assert at > 0 and raw.count(inside) == 1
    raw[at + len(inside) // 2] ^= 0x04
    target.write_bytes(bytes(raw))
    assert target.stat().st_size == source.stat().st_size
    return target


def a_weight(model):
    return max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data[1000:1100]


def image(tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    return path


def test_export_writes_a_digest_of_what_it_wrote(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    stored = {p.key: p.value for p in model.metadata_props}[KEY]
    assert stored.startswith("sha256:") and stored == compute(model)


def test_a_flipped_weight_byte_is_one_line_in_the_library(tiny_onnx, tmp_path):
    bad = flipped(tiny_onnx, tmp_path / "bad.onnx", a_weight)
    with pytest.raises(EngineError, match=rf"^{bad} changed after it was exported: .*engine_digest.*export it again"):
        export.load(bad)
    from export.session import open_session

    with pytest.raises(EngineError, match="changed after it was exported"):  # the one place sessions open
        open_session(bad, device="cpu")


def test_a_flipped_weight_byte_is_one_line_on_the_command_line(tiny_onnx, tmp_path, capsys):
    bad = flipped(tiny_onnx, tmp_path / "bad.onnx", a_weight)
    cat = image(tmp_path)
    done = subprocess.run([sys.executable, "-m", "engine", "predict", str(bad), str(cat)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"engine: error: {bad} changed after it was exported")
    assert main(["eval", str(bad), "--limit-test", "50"]) == 1
    err = capsys.readouterr().err
    assert f"{bad} changed after it was exported" in err and "Traceback" not in err


def test_a_changed_class_name_is_refused_too(tiny_onnx, tmp_path):
    bad = flipped(tiny_onnx, tmp_path / "renamed.onnx",
                  lambda m: {p.key: p.value for p in m.metadata_props}["classes"].encode())
    with pytest.raises(EngineError, match="changed after it was exported"):
        export.load(bad)


def test_an_undamaged_copy_and_a_file_without_a_digest_still_run(tiny_onnx, tmp_path):
    cat = image(tmp_path)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    expected = export.load(copy, device="cpu").logits([cat])
    model = onnx.load(str(tiny_onnx))  # as exported before the digest: the same file without the key
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != KEY]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(kept))
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    np.testing.assert_array_equal(export.load(old, device="cpu").logits([cat]), expected)
    assert main(["predict", str(old), str(cat)]) == 0


def test_the_int8_file_gets_its_own_digest(tiny_onnx, tmp_path):
    from export.quantize import quantize

    out = quantize(tiny_onnx, tmp_path / "m.int8.onnx", np.random.default_rng(0).random((64, 3, 32, 32), np.float32))
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    fp32 = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert props[KEY] == compute(model) != fp32[KEY] and list(props).count(KEY) == 1
    export.load(out, device="cpu")  # runs
    # QDQ scales are float_data, not raw_data: the digest covers a tensor however its values are stored
    scale = next(t for t in model.graph.initializer if t.float_data and t.name.endswith("_scale") and t.float_data[0])
    bad = flipped(out, tmp_path / "bad.int8.onnx",
                  lambda m: np.float32(scale.float_data[0]).tobytes())
    with pytest.raises(EngineError, match="changed after it was exported"):
        export.load(bad)


def test_the_digest_is_of_the_values_not_how_a_copy_stores_them(tiny_onnx, tmp_path):
    """Saved again with its weights in an external-data file, or with shape inference's value_info added, the
    file computes the same and still runs; a flipped byte in the .data file beside it is refused."""
    model = onnx.load(str(tiny_onnx))
    external = tmp_path / "ext.onnx"
    onnx.save(model, str(external), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data")
    assert (tmp_path / "ext.onnx.data").stat().st_size > 100_000
    inferred = tmp_path / "inferred.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(model), str(inferred))
    want = export.load(tiny_onnx, device="cpu").logits(np.zeros((1, 3, 32, 32), np.float32))
    for path in (external, inferred):
        np.testing.assert_array_equal(export.load(path, device="cpu").logits(np.zeros((1, 3, 32, 32), np.float32)), want)
    data = bytearray((tmp_path / "ext.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp_path / "ext.onnx.data").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=f"^{external} changed after it was exported"):
        export.load(external)


def test_a_key_of_the_users_own_added_later_is_not_a_change(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    model.metadata_props.add(key="author", value="me")
    config = next(p for p in model.metadata_props if p.key == "training_config")
    config.value = config.value.replace('"epochs": 1', '"epochs": 2')  # engine eval's data, not the predictions
    assert '"epochs": 2' in config.value
    path = tmp_path / "noted.onnx"
    onnx.save(model, str(path))
    assert export.load(path, device="cpu").classes == export.load(tiny_onnx, device="cpu").classes
