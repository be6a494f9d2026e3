"""engine.config: one dataclass, validated, round-tripped, and the source of every CLI flag."""

import dataclasses

import pytest

from engine.cli import build_parser
from engine.config import Config, flag
from engine.errors import UsageError


def test_round_trip_through_a_plain_dict():
    cfg = Config(model="mnist_cnn", epochs=3, lr=0.1, amp=False, limit_train=100)
    values = cfg.to_dict()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in values.values())
    assert Config.from_dict(values) == cfg


def test_unknown_fields_are_refused():
    with pytest.raises(UsageError, match="unknown fields: colour"):
        Config.from_dict({"colour": "red"})


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "--epochs must be a whole number of at least 1, not 0"),
    ({"batch_size": -8}, "--batch-size must be"),
    ({"limit_train": 0}, "--limit-train must be"),
    ({"limit_test": -1}, "--limit-test must be"),
    ({"lr": 0.0}, "--lr must be greater than 0"),
    ({"lr": -0.1}, "--lr must be greater than 0"),
    ({"momentum": 1.0}, "--momentum must be in"),
    ({"weight_decay": -1e-4}, "--weight-decay must be 0 or more"),
    ({"label_smoothing": 1.0}, "--label-smoothing must be in"),
    ({"optimizer": "lion"}, "--optimizer must be one of sgd, adamw"),
    ({"model": "vgg"}, "unknown model 'vgg'"),
    ({"seed": -1}, "--seed must be a whole number from 0"),
    ({"lr": float("inf")}, "--lr must be a finite number"),
    ({"weight_decay": float("nan")}, "--weight-decay must be a finite number"),
    ({"data": "imagenet"}, "unknown dataset 'imagenet'"),
])
def test_bad_values_name_their_flag(values, message):
    with pytest.raises(UsageError, match=message):
        Config(**values)


def test_paths_are_accepted_as_data():
    assert Config(data="./my_images").data == "./my_images"
    assert Config(data="cifar10-jpeg.tar.gz").data == "cifar10-jpeg.tar.gz"


def test_every_field_has_a_documented_train_flag():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    documented = {option: action.help for action in train._actions for option in action.option_strings}
    for f in dataclasses.fields(Config):
        assert flag(f.name) in documented, f.name
        assert len(documented[flag(f.name)]) > 10
    assert "--resume" in documented


def test_absolute_paths_make_a_saved_config_work_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(data="images.tar.gz", data_dir="data", cache_dir="cache").with_absolute_paths()
    assert cfg.data == str(tmp_path / "images.tar.gz") and cfg.data_dir == str(tmp_path / "data")
    assert cfg.cache_dir == str(tmp_path / "cache")
    assert Config(data="mnist").with_absolute_paths().data == "mnist"
    assert Config(model="torchvision:resnet18 ").with_absolute_paths().model == "torchvision:resnet18"  # as parsed
    (tmp_path / "nets.py").write_text("")
    assert Config(model=" nets.py:Net").with_absolute_paths().model == f"{tmp_path / 'nets.py'}:Net"


def test_parse_shape_reads_cxhxw_and_names_the_flag_otherwise():
    from engine.config_types import parse_shape

    assert parse_shape("1x28x28", "--input-size") == [1, 28, 28] and parse_shape("3X32X32", "--x") == [3, 32, 32]
    for bad in ("28x28", "0x1x1", "3xAx3", ""):
        with pytest.raises(UsageError, match="--input-shape .*expected CxHxW"):
            parse_shape(bad, "--input-shape")


def test_a_file_where_the_cache_folder_should_be_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "cfile").write_text("not a folder")
    for where in (tmp_path / "cfile", tmp_path / "cfile" / "below"):
        with pytest.raises(UsageError, match=f"--cache-dir {where}: {tmp_path / 'cfile'} is a file, not a folder"):
            Config(cache_dir=str(where)).resolved_cache_dir()
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cfile"))
    with pytest.raises(UsageError, match="ENGINE_CACHE_DIR .* is a file, not a folder"):
        Config().resolved_cache_dir()
    assert Config(cache_dir=str(tmp_path / "new" / "cache")).resolved_cache_dir() == tmp_path / "new" / "cache"
