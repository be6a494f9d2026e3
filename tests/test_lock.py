"""engine.lock: one training per run directory, never stuck after its owner dies; dead processes' temporaries go."""

import os
import signal
import subprocess
import sys
import time

import pytest

from engine.errors import EngineError
from engine.lock import LOCK_NAME, RunLock, remove_stale_temporaries


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_lock_is_refused_and_release_frees_it(tmp_path):
    first = RunLock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(EngineError, match=f"--out {tmp_path} is in use by another engine train \\(pid {os.getpid()}\\)"):
        RunLock(tmp_path)
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).release()


def test_resuming_a_live_run_before_its_first_checkpoint_names_its_owner_not_a_deletion(tmp_path):
    from engine.resume import resume_path

    (tmp_path / "config.json").write_text("{}")  # a run at its start: config.json, no checkpoint yet
    owner = RunLock(tmp_path)
    with pytest.raises(EngineError, match=f"--resume {tmp_path} is in use by another engine train \\(pid {os.getpid()}\\)"):
        resume_path(tmp_path)
    owner.release()  # the run died before its first checkpoint: now that is what is said
    with pytest.raises(EngineError, match="stopped before its first checkpoint"):
        resume_path(tmp_path)


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # fails as a read-only file system does, even for root
    with pytest.raises(EngineError, match=f"--resume {tmp_path}: cannot write there \\(Is a directory\\); a resumed run"):
        RunLock(tmp_path, "--resume")
    with pytest.raises(EngineError, match="choose a writable --out$"):
        RunLock(tmp_path)


def test_the_lock_dies_with_its_owner_even_by_kill_9(tmp_path):
    code = "import sys, time; from engine.lock import RunLock; RunLock(sys.argv[1]); print('held', flush=True); time.sleep(600)"
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "held"
    with pytest.raises(EngineError, match=f"pid {owner.pid}"):
        RunLock(tmp_path)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays behind, the lock does not
    lock = RunLock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()


@pytest.mark.slow
def test_two_trainings_in_one_run_directory(tmp_path):
    """The second `engine train` at a run directory in use refuses in one line, exit 1."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENGINE_TEST_PAUSE_AT": "step:1"}
    args = [sys.executable, "-m", "engine", "train", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32",
            "--epochs", "1", "--device", "cpu", "--out", str(run)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.stdout.readline().strip() != "ENGINE_TEST_PAUSED step":
            pass
        env.pop("ENGINE_TEST_PAUSE_AT")
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"engine: error: --out {run} is in use by another engine train (pid {first.pid}); wait for it to finish, "
            "or choose another run directory"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
    RunLock(run).release()  # not stuck after kill -9


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    gone = dead_pid()
    names = [f".last.pt.tmp{gone}", f".curves.png.tmp{gone}.png", f".cifar-abc.pt.tmp{gone}",
             f".last.pt.tmp{os.getpid()}", "notes.tmp12", "last.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


def test_a_resumed_run_cleans_what_a_killed_one_left(tiny_run, tmp_path):
    import shutil

    from engine.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    (run / f".last.pt.tmp{dead_pid()}").write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "confusion.json", "confusion.png",
                                                     "curves.png", "last.pt", "metrics.jsonl"]
