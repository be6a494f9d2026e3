"""engine eval --compile keyed its measurements (eager seconds, the compile decision) by the checkpoint's
model reference, the code as it was when the run trained: a model file edited since (another forward,
the same weights) was served the old code's measurement. The key is now the code as it is."""

import json

import pytest

from tests.test_own_model_p8_module_digest import NETS, photos


@pytest.mark.slow
def test_eval_compiles_measurements_are_keyed_by_the_model_code_as_it_is_now(tmp_path):
    from engine.config import Config
    from engine.evaluate import evaluate_checkpoint
    from engine.train import train

    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    code, run, cache = f"{nets}:Net", tmp_path / "run", tmp_path / "cache"
    train(Config(model=code, data=photos(tmp_path), test_split=0.5, epochs=1, batch_size=4, amp=False, device="cpu",
                 quiet=True, out=str(run), cache_dir=str(tmp_path / "train-cache")), log=None)
    flags = {"compile": True, "amp": False, "device": "cpu", "quiet": True, "cache_dir": str(cache)}

    def keys():
        return set(json.loads((cache / "compile.json").read_text()))

    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    before = keys()
    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    assert keys() == before  # the same code: measured once
    nets.write_text(NETS.replace("torch.relu", "torch.tanh"))
    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    assert keys() > before  # another forward: measured again, under another key
