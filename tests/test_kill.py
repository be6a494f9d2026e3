"""Kill anywhere, resume exactly: a real `engine train` is killed with SIGKILL at seeded moments
(mid-epoch after a mid-epoch checkpoint, during a checkpoint write, during evaluation, between
last.pt and best.pt, mid-epoch without a mid-epoch checkpoint), resumed each time, and must end
with the very weights of an uninterrupted run.

The moments are hit exactly through the test-only hook ENGINE_TEST_PAUSE_AT=STAGE:N
(engine.faults.pause_point): the process prints a marker and stops itself there.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.checkpoint import load

pytestmark = pytest.mark.slow  # subprocesses or whole trainings: in CI (README's test command), not in a plain `pytest`

TINY = ["--epochs", "3", "--limit-train", "256", "--limit-test", "64", "--batch-size", "32", "--no-amp",
        "--device", "cpu", "--quiet"]  # 8 steps an epoch
DEADLINE = 600  # s: each wait is for a condition (a marker, a stopped or ended process), so a quiet machine never
# waits this long; a loaded one (other processes on every core) may need minutes where a quiet one needs seconds


def start(*args, pause=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ENGINE_TEST_PAUSE_AT", None)
    if pause:
        env["ENGINE_TEST_PAUSE_AT"] = pause
    return subprocess.Popen([sys.executable, "-m", "engine", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_pause(process, stage, timeout=DEADLINE):
    """Read the process's stdout until it says it paused at `stage` (then it is stopped). Blocking
    reads with a watchdog, not select: a line read ahead into the pipe's buffer (the epoch's line and
    the marker arrive together) would leave select waiting on an empty descriptor."""
    import threading

    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in iter(process.stdout.readline, ""):
            seen.append(line)
            if line.strip() == f"ENGINE_TEST_PAUSED {stage}":
                wait_until_stopped(process)  # a signal sent before the process stops itself is lost
                return seen
    finally:
        watchdog.cancel()
    process.wait()
    pytest.fail(f"never paused at {stage} (exit {process.returncode}, {timeout} s at most): {process.stderr.read()[-2000:]}")


def kill_at(process, pause):
    wait_for_pause(process, pause.split(":")[0])
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()


def finish(process):
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err
    return out


def test_killed_five_times_anywhere_resumes_to_the_uninterrupted_weights(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    finish(start(*TINY, "--out", str(reference)))

    kills = [  # (pause point, extra flags): each process is killed there, then the next one resumes
        ("step:3", ["--save-every", "0s"]),  # mid-epoch 1, just after a mid-epoch checkpoint (every step)
        ("save:2", []),  # inside a checkpoint write: the temporary written, not yet renamed
        ("eval:1", []),  # during epoch 1's evaluation
        ("commit:1", []),  # between the renames of last.pt and best.pt (best.pt and metrics left behind)
        ("step:11", ["--save-every", "off"]),  # mid-epoch 3 with only epoch-end checkpoints
    ]
    where = []
    for n, (pause, flags) in enumerate(kills):
        args = [*TINY, "--out", str(run), *flags] if n == 0 else ["--resume", str(run), *flags]
        kill_at(start(*args, pause=pause), pause)
        state = load(run / "last.pt")
        where.append((state.epoch, state.step))
        if pause == "save:2":
            assert list(run.glob(".last.pt.tmp*")), "the kill during a write leaves its temporary behind"
        if pause == "commit:1":
            assert not (run / "best.pt").exists() and not (run / "metrics.jsonl").exists()
    assert where == [(0, 3), (0, 4), (0, 7), (1, 0), (2, 0)]  # (epochs done, steps of the next)
    finish(start("--resume", str(run)))

    a, b = load(reference / "last.pt"), load(run / "last.pt")
    assert b.epoch == 3 and b.step == 0
    assert a.model.keys() == b.model.keys()
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert [m[key] for m in a.metrics] == [m[key] for m in b.metrics], key
    best_a, best_b = load(reference / "best.pt"), load(run / "best.pt")
    assert best_a.epoch == best_b.epoch and all(torch.equal(v, best_b.model[k]) for k, v in best_a.model.items())
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "confusion.json", "confusion.png",
                                                     "curves.png", "last.pt", "metrics.jsonl"]


def test_a_ctrl_c_before_the_first_checkpoint_keeps_nothing_and_the_same_command_starts_again(tmp_path):
    """Nothing of a run interrupted before its first checkpoint can be resumed: its folder goes (it
    stayed, holding config.json, and the same command was then refused as a run to delete)."""
    args = [*TINY, "--save-every", "off", "--out", str(tmp_path / "run")]
    process = start(*args, pause="step:2")
    wait_for_pause(process, "step")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 130 and "interrupted before the first checkpoint; nothing of" in err, err
    assert not (tmp_path / "run").exists()
    finish(start(*args))  # the same command, again


def test_a_resumed_runs_time_to_target_counts_on_from_its_earlier_commands(tmp_path):
    """--target-acc's clock runs over a kill and its resume: the earlier command's time to its last
    evaluation is added (elapsed_s went back to 0 on resume, and a time to target after one was
    shorter than the time already spent)."""
    run = tmp_path / "run"
    kill_at(start(*TINY, "--target-acc", "99", "--save-every", "0s", "--out", str(run), pause="step:12"), "step:12")
    before = max(m["elapsed_s"] for m in load(run / "last.pt").metrics if "elapsed_s" in m)
    out = finish(start("--resume", str(run), "--no-quiet"))
    stamps = [m["elapsed_s"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert stamps == sorted(stamps) and stamps[-1] > before > 0
    assert f"from the run's start ({before:.1f} s of it before this command resumed the run)" in out


def wait_until_stopped(process, timeout=DEADLINE):
    """The pause point prints its marker, then stops itself: a SIGINT and SIGCONT sent in between are
    taken while it runs and the SIGSTOP that follows is never undone (the run hangs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{process.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    pytest.fail(f"the process never stopped within {timeout} s")


def test_a_run_directory_removed_mid_run_is_one_line(tmp_path):
    run = tmp_path / "run"
    process = start(*TINY, "--out", str(run), pause="step:2")
    wait_for_pause(process, "step")
    shutil.rmtree(run)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1
    assert err.strip().splitlines() == [f"engine: error: the run directory {run} was removed during the run; "
                                        "stopped (nothing more can be saved)"]
    assert not run.exists()  # never silently recreated


def test_a_full_disk_is_one_line_and_leaves_no_temporaries(tmp_path):
    """RLIMIT_FSIZE makes every write past 1 MB fail with EFBIG, as a full disk fails with ENOSPC:
    the 2 MB checkpoint cannot be written."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "engine", "train", *TINY, "--epochs", "1", "--out", str(run)],
                            preexec_fn=small_files, capture_output=True, text=True, timeout=DEADLINE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"engine: error: cannot save to {run} (File too large); stopped before any checkpoint was saved (nothing is "
        "kept): make room and train again"]
    assert not run.exists()  # no half-written last.pt, no temporary, no config.json of a run that cannot resume


def wait_for_workers(process, timeout=DEADLINE):
    """Wait until the decoding processes of `process` (stopped at its decode pause) run their loop: each
    child ignores SIGINT, which the pool's initializer sets. A fixed half second was too short for a
    worker still waiting for a core on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = []
        for entry in os.scandir("/proc"):
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f)
            except (OSError, ValueError):  # not a process, or one that ended meanwhile
                continue
            if int(fields.get("PPid", "0").strip()) == process.pid:
                workers.append(int(fields["SigIgn"].strip(), 16) >> (signal.SIGINT - 1) & 1)
        if workers and all(workers):
            return
        time.sleep(0.02)
    pytest.fail(f"the decoding processes never started within {timeout} s")


def photos(root, count=300):
    import numpy as np
    from PIL import Image

    base = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for name in ("a", "b"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:04d}.png", compress_level=1)
    return root


def test_a_sigterm_to_the_process_group_while_a_folder_decodes_ends_it_at_once(tmp_path):
    """systemd and Kubernetes send SIGTERM to every process of the command: the decoding workers die of
    it, one of them holding the pool's task-queue lock, and a main process that handled the signal then
    waited on that lock forever in Pool.terminate(). During a decode SIGTERM keeps its default action."""
    env = {**os.environ, "ENGINE_CACHE_DIR": str(tmp_path / "cache"), "ENGINE_TEST_PAUSE_AT": "decode"}
    process = subprocess.Popen([sys.executable, "-m", "engine", "train", "--data", str(photos(tmp_path / "photos")),
                                "--image-size", "32", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    wait_for_pause(process, "decode")
    wait_for_workers(process)  # the workers have the chunk: some decoding, one waiting on the queue's lock
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGCONT)
    try:
        _, err = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"engine train did not end within {DEADLINE} s of a SIGTERM to its process group during the decode")
    assert process.returncode in (-signal.SIGTERM, 143) and "Traceback" not in err, err


def test_ctrl_c_while_a_folder_decodes_stops_at_once_with_one_line(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while the decoding processes hold work:
    their workers ignore it and are ended by the main process, which says `interrupted` in one line and
    exits 130. Workers that took it printed their tracebacks, and one that died of it mid-task left
    the pool's shutdown waiting forever."""
    env = {**os.environ, "ENGINE_CACHE_DIR": str(tmp_path / "cache"), "ENGINE_TEST_PAUSE_AT": "decode"}
    process = subprocess.Popen([sys.executable, "-m", "engine", "train", "--data", str(photos(tmp_path / "photos")),
                                "--image-size", "32", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    wait_for_pause(process, "decode")
    wait_for_workers(process)  # the workers have the chunk: some still decoding, some waiting for more
    os.killpg(process.pid, signal.SIGINT)  # every process of the command, as a terminal's Ctrl-C
    process.send_signal(signal.SIGCONT)
    try:
        _, err = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"engine train did not stop within {DEADLINE} s of a Ctrl-C during the decode")
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("engine: interrupted"), err


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_ctrl_c_during_an_epochs_writes_still_says_the_saved_epoch(tmp_path, number, code):
    """The epoch's line is said once last.pt is committed, inside the writes a Ctrl-C waits for: the
    interrupt then ends the run with every saved epoch said (it used to land before the line).
    SIGTERM (kill, docker stop) is taken the same way, exit 143: it used to end the run silently,
    leaving its lock and a half-written temporary."""
    process = start(*TINY, "--out", str(tmp_path / "run"), pause="commit:1")
    seen = wait_for_pause(process, "commit")  # the epoch's line comes first
    assert any(line.startswith("Epoch: 1,") for line in seen), seen
    process.send_signal(number)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == code and "the run up to its last checkpoint is saved" in err, err
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no lock, no temporary
    assert load(tmp_path / "run" / "last.pt").epoch == 1 and not any(line.startswith("Epoch: 2,") for line in out.splitlines())
