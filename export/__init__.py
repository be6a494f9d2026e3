"""ONNX export of trained engine models, and inference on the exported files with onnxruntime.

`engine export` writes one verified, self-contained file (`export.onnx_export`); `export.load`
opens such a file for predictions from Python (`export.predict`). Importing this package loads
neither onnx nor onnxruntime: each module imports them where it needs them.
"""


def load(path, **options):
    """An exported model ready to predict: `export.load("model.onnx").predict(images, topk=3)`."""
    from export.predict import Classifier

    return Classifier(path, **options)
