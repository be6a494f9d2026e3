"""--amp and --amp unset (the default) give the same precision on every device, so --resume RUN --amp
of a run trained with the default (or the reverse) was refused for a difference that changes nothing;
--no-amp still differs from both."""
import pytest

from engine.config import Config
from engine.errors import UsageError
from engine.resume import resume_config
from engine.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    made = {}
    for amp in (None, True):
        out = tmp_path_factory.mktemp("amp") / "run"
        train(Config(amp=amp, epochs=1, limit_train=64, limit_test=32, device="cpu", out=str(out), quiet=True),
              log=lambda *_: None)
        made[amp] = out
    return made


@pytest.mark.slow  # two 1-epoch runs, about 3 s
def test_amp_and_unset_resume_each_other_and_no_amp_is_refused(runs):
    quiet = dict(say=lambda *_: None)
    cfg, _ = resume_config(runs[None], {"amp": True}, **quiet)
    assert cfg.amp is True
    cfg, _ = resume_config(runs[True], {"amp": None}, **quiet)
    assert cfg.amp is None
    for run in runs.values():
        with pytest.raises(UsageError, match=r"--no-amp differs from its --(amp unset|amp) \(start a new run"):
            resume_config(run, {"amp": False}, **quiet)
