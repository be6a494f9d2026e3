"""What `runs/latest` means: the run in runs/ last started or resumed (training.md, --out's help). The
docs said "the newest run", while `--resume` of an older run moved the link to it; the docs now say
what the engine does, and this pins it: a resume that is refused leaves the link where it was."""

import pytest


@pytest.mark.slow
def test_latest_follows_the_run_last_started_or_resumed_and_not_a_refused_resume(tmp_path, monkeypatch):
    from engine.config import Config
    from engine.errors import UsageError
    from engine.resume import resume_config
    from engine.train import train

    monkeypatch.chdir(tmp_path)
    latest = tmp_path / "runs" / "latest"
    flags = dict(model="mlp", data=photos(tmp_path), test_split=0.5, epochs=1, batch_size=4, amp=False, device="cpu", quiet=True,
                 cache_dir=str(tmp_path / "cache"))
    for name in ("A", "B"):
        train(Config(out=f"runs/{name}", **flags), log=None)
        assert latest.resolve() == (tmp_path / "runs" / name).resolve()
    with pytest.raises(UsageError, match="differs"):
        resume_config("runs/A", {"epochs": 2}, say=None)
    assert latest.resolve() == (tmp_path / "runs" / "B").resolve()
    cfg, checkpoint = resume_config("runs/A", say=None)
    train(cfg, resume=checkpoint, log=None)
    assert latest.resolve() == (tmp_path / "runs" / "A").resolve()


def photos(root):
    """Two classes of 8 tiny PNG images each: a run on them takes a fraction of the synthetic set's time."""
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (40 * i, 200 * c, 90)).save(root / "photos" / name / f"{i}.png")
    return str(root / "photos")
