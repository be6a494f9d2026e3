"""export.metadata: the metadata contract reads back, and a file without it is one clear line."""

import pytest

from engine.errors import EngineError, UsageError
from export.metadata import ModelInfo


def info():
    return ModelInfo(classes=["cat", "dog"], input_size=[3, 8, 8], mean=[0.5] * 3, std=[0.25] * 3, model="lenet",
                     dataset="/data/pets", test_accuracy=0.8125, engine_version="0.1.0", opset=18,
                     config={"data": "/data/pets", "seed": 3})


def test_round_trip_through_string_properties():
    props = info().to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert props["classes"] == '["cat", "dog"]' and props["input_size"] == "[3, 8, 8]" and props["input_range"] == "0-1"
    assert ModelInfo.from_props(props) == info()


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("classes"), "no engine metadata"),
    (lambda p: p.update(classes="not json"), "unreadable"),
    (lambda p: p.update(classes='["only one"]'), "at least 2"),
    (lambda p: p.update(input_size="[3, 8]"), "input_size"),
    (lambda p: p.update(input_size="[2, 8, 8]"), "C 1 or 3"),
    (lambda p: p.update(input_range="0-255"), "input_range"),
    (lambda p: p.update(classes='["cat", "dog", "cat"]'), "classes name cat more than once"),
    (lambda p: p.update(training_config="[1, 2]"), "training_config must be a JSON object of the run's settings, not list"),
    (lambda p: p.update(image_size='"32"'), "image_size must be"),
])
def test_missing_or_bad_metadata_is_an_engine_error(change, message):
    props = info().to_props()
    change(props)
    with pytest.raises(EngineError, match=message):
        ModelInfo.from_props(props, "m.onnx")


def test_flags_stand_in_for_missing_metadata():
    assert ModelInfo.from_flags("1x28x28", "a, b,c").classes == ["a", "b", "c"]
    with pytest.raises(UsageError, match="both"):
        ModelInfo.from_flags("1x28x28", None)
    with pytest.raises(EngineError, match="classes name a more than once"):
        ModelInfo.from_flags("1x28x28", "a,b,a")
    with pytest.raises(UsageError, match="--input-size 28x28: expected CxHxW"):
        ModelInfo.from_flags("28x28", "a,b")


def test_the_class_minimum_is_the_classifiers_rule():
    """export.metadata keeps its own copy of the minimum (importing engine.models loads torch, which predict
    does without): the two must agree, and a file's one-class list is refused as the data would be."""
    from engine.models.spec import MIN_CLASSES
    from export import metadata

    assert metadata.MIN_CLASSES == MIN_CLASSES
    with pytest.raises(EngineError, match=f"at least {MIN_CLASSES} names"):
        metadata.ModelInfo(classes=["only"], input_size=[3, 32, 32]).check("x.onnx")
