"""`engine export --int8`: static QDQ int8 quantization, calibrated on training images, per channel.

The int8 file is written beside the fp32 one (`model.int8.onnx`) and measured against it in the
same process: test accuracy, top-1 agreement and images/s at batch 256. Whether int8 pays depends
on the CPU (VNNI/AMX-INT8 make it fast; without them it can be slower than fp32), so the report
says which was faster here rather than assuming.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineError, first_line
from export.verify import agreement_text

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
BENCH_BATCH = 256


@dataclass
class Int8Report:
    path: Path
    fp32_acc: float
    int8_acc: float
    agreement: float  # share of test images with the same top-1 class in both files
    fp32_images_per_s: float
    int8_images_per_s: float
    test_images: int

    def describe(self):
        speed = self.int8_images_per_s / self.fp32_images_per_s
        verdict = "int8 is faster here" if speed > 1.05 else "int8 does not pay here: use the fp32 file"
        return (f"fp32: Test_acc:{self.fp32_acc * 100:.2f}%, {self.fp32_images_per_s:,.0f} img/s | "
                f"int8: Test_acc:{self.int8_acc * 100:.2f}%, {self.int8_images_per_s:,.0f} img/s "
                f"({speed:.2f}x, top-1 agreement {agreement_text(self.agreement)} on {self.test_images:,} test images); "
                f"{verdict}")


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a seeded subset of training images."""

    def __init__(self, images, input_name):
        self.batches = iter([{input_name: images[i:i + CALIBRATION_BATCH]} for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def images_per_s(session, images, rounds=5):
    """Best-of-`rounds` throughput of one batch (best, because other work on the machine only slows)."""
    from export.verify import run_session

    run_session(session, images)  # warm-up: allocation and kernel selection
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run_session(session, images, len(images))
        best = min(best, time.perf_counter() - started)
    return len(images) / best


QUANTIZATION = "int8 static QDQ, per channel"  # the int8 file's `quantization` metadata


def quantize(fp32_path, out, calibration_images):
    """Write the static QDQ int8 version of `fp32_path` to `out` (nothing at `out` on failure)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from engine.quiet import quiet_exporter

    out = Path(out)
    prepared = out.with_name(f".{out.name}.prep{os.getpid()}")
    temporary = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with quiet_exporter():
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(temporary), _Calibration(calibration_images, "input"),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        import onnx

        model = onnx.load(str(temporary))
        fp32 = onnx.load(str(fp32_path), load_external_data=False)
        props = {p.key: p.value for p in fp32.metadata_props}
        # the checkpoint's test accuracy is the fp32 model's: this file's own is measured beside it at export
        # (quantize_and_compare), not stored; a client reads which file it holds from `quantization`
        props.update(test_accuracy="", test_accuracy_tta="0", quantization=QUANTIZATION)
        onnx.helper.set_model_props(model, props)
        from export.digest import stamp

        onnx.save(stamp(model), str(temporary))  # its own engine_digest, not the fp32 file's copied with props
        onnx.checker.check_model(str(temporary), full_check=True)
        os.replace(temporary, out)
    except EngineError:
        raise
    except Exception as error:
        raise EngineError(f"int8 quantization failed: {first_line(error)}") from None
    finally:
        prepared.unlink(missing_ok=True)
        temporary.unlink(missing_ok=True)
    return out


def quantize_and_compare(fp32_path, out, data, log=print, seed=0):
    """Quantize on training images of `data`, then compare with the fp32 file on its test split."""
    from export.session import open_session
    from export.verify import run_session

    generator = np.random.default_rng(seed)
    pick = np.sort(generator.permutation(len(data.train_x))[:CALIBRATION_IMAGES])
    log(f"Quantizing to int8 (static QDQ, per channel), calibrated on {len(pick)} training images")
    quantize(fp32_path, out, data.train_x[pick].numpy().astype(np.float32) / 255)
    labels = data.test_y.numpy()
    fp32, _ = open_session(fp32_path, device="cpu")
    int8, _ = open_session(out, device="cpu")
    fp32_pred, int8_pred = [], []
    for start in range(0, len(labels), BENCH_BATCH):  # a batch at a time in float32: the whole test set would be
        batch = data.test_x[start:start + BENCH_BATCH].numpy().astype(np.float32) / 255  # 4x its uint8 size at once
        fp32_pred.append(run_session(fp32, batch).argmax(1))
        int8_pred.append(run_session(int8, batch).argmax(1))
    fp32_pred, int8_pred = np.concatenate(fp32_pred), np.concatenate(int8_pred)
    batch = data.test_x[:BENCH_BATCH].numpy().astype(np.float32) / 255
    return Int8Report(Path(out), float((fp32_pred == labels).mean()), float((int8_pred == labels).mean()),
                      float((fp32_pred == int8_pred).mean()), images_per_s(fp32, batch), images_per_s(int8, batch),
                      len(labels))
