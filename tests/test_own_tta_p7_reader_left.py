"""`engine train ... | head -N`: the reader leaves the pipe and a print raises BrokenPipeError. reliability.md says
the command stops quietly (141) and a run stopped before its first checkpoint keeps nothing. But a reader leaving
at the Run: line (after config.json was written) or at the --tta / --flip notes left config.json behind, so the
same command was then refused ('holds a run that stopped before its first checkpoint'); and one leaving at an epoch
line (printed between last.pt and best.pt) was reported as 'cannot save to RUN (Broken pipe) ... make room' with
best.pt and metrics.jsonl never written. The run's `log` is what prints, so a log that raises BrokenPipeError
at a given line is the pipe closing there."""

import pytest
from PIL import Image

from engine.config import Config
from engine.errors import EngineError
from engine.train import train

pytestmark = pytest.mark.slow  # whole (tiny) trainings


@pytest.fixture
def photos(tmp_path):
    for c in range(2):
        folder = tmp_path / "photos" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 6), 40 + 100 * c + i).save(folder / f"{i}.png")
    return tmp_path


def reader_leaves_at(prefix):
    def log(line, *_):
        if str(line).startswith(prefix):
            raise BrokenPipeError(32, "Broken pipe")
    return log


def config(tmp):
    return Config(model="cifar_cnn", data=str(tmp / "photos"), image_size="24", epochs=1, batch_size=4, crop_padding=2,
                  tta=1, flip="alternate", amp=False, device="cpu", out=str(tmp / "run"), cache_dir=str(tmp / "cache"),
                  test_split="34%")


@pytest.mark.parametrize("prefix", ["Run:", "--tta 1:", "--flip alternate:"])
def test_a_reader_leaving_before_the_first_checkpoint_keeps_nothing(photos, prefix):
    with pytest.raises(BrokenPipeError):
        train(config(photos), log=reader_leaves_at(prefix))
    assert not (photos / "run").exists()
    train(config(photos), log=lambda *_: None)  # the same command starts the run again
    assert (photos / "run" / "best.pt").exists()


def test_a_reader_leaving_at_an_epoch_line_is_no_failed_save(photos):
    try:
        train(config(photos), log=reader_leaves_at("Epoch: 1,"))
    except EngineError as error:  # what it was: 'cannot save to RUN (Broken pipe) ... make room'
        pytest.fail(f"said as a failed save: {error}")
    except BrokenPipeError:
        pass
    else:
        pytest.fail("the reader's leaving was swallowed")
    assert {p.name for p in (photos / "run").iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "config.json"}


def test_a_resumed_run_the_reader_leaves_keeps_its_files_and_lets_go_of_its_lock(photos):
    from engine.resume import resume_config

    train(config(photos), log=lambda *_: None)
    kept = sorted(p.name for p in (photos / "run").iterdir())
    for _ in range(2):  # a second try in the same process: the first let go of the run's lock
        cfg, checkpoint = resume_config(photos / "run", say=None)
        with pytest.raises(BrokenPipeError):
            train(cfg, resume=checkpoint, log=reader_leaves_at("Run:"))
    assert sorted(p.name for p in (photos / "run").iterdir()) == kept
