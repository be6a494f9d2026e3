"""Resuming a run: which checkpoint (`resume_path`), the config it continues with (`resume_config`,
the same checks for the CLI and for Python callers), whether this data and schedule can continue it
(`check_resume`, `data_fingerprint`). Putting its states back is engine.restore's.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

from engine.checkpoint import Checkpoint, load
from engine.config import Config, absolute_model, flag
from engine.errors import EngineError, UsageError
from engine.lock import LOCK_NAME, RunLock
from engine.report import stopped_before_first_checkpoint


def resume_path(run_dir):
    """last.pt of `run_dir` (a run directory, `runs/latest`, or that last.pt itself).

    Any other checkpoint (best.pt, a copy) is refused: resuming rewrites the run's last.pt and
    metrics from the checkpoint's epoch on, which would silently drop the epochs after it.
    """
    run_dir = Path(run_dir).expanduser()  # --resume=~/runs/a, as --data=~/... is read
    if run_dir.is_file():
        if run_dir.name != "last.pt":
            raise UsageError(f"--resume takes a run directory or its last.pt, not {run_dir}; to go on from another "
                             "checkpoint, copy it as last.pt into a new run directory")
        return run_dir
    last = run_dir / "last.pt"
    if not last.is_file():
        if (run_dir / LOCK_NAME).exists():  # a live run that has not saved yet is the first thing to say
            RunLock(run_dir, "--resume").release()
        if stopped_before_first_checkpoint(run_dir):
            raise UsageError(f"--resume: nothing to resume ({run_dir} has no last.pt: its run stopped before its first "
                             "checkpoint); delete the folder and train it again")
        if run_dir.is_dir() and (run_dir / "best.pt").is_file():
            raise UsageError(f"--resume: nothing to resume ({run_dir} has best.pt but no last.pt); to go on from best.pt, "
                             "copy it as last.pt into a new run directory and --resume that")
        where = (f"{run_dir} has no last.pt" if run_dir.is_dir() else f"{run_dir} is not a run directory"
                 if run_dir.exists() else f"{run_dir} links to {os.readlink(run_dir)}, which does not exist any more"
                 if run_dir.is_symlink() else f"{run_dir} does not exist")
        raise UsageError(f"--resume: nothing to resume ({where}); train without --resume first, or name a run directory")
    return last


def resume_config(run_dir, given=None, say=print):
    """(Config, Checkpoint) to continue the run at `run_dir` with. `given`: Config values passed
    again (a command line's flags); those that change what the weights depend on must equal the run's,
    except that a user model's code is named again (`--model nets.py:Net`), which must be the run's."""
    from engine.models.reference import parse_model, reopen

    say = (lambda *_: None) if say is None else say  # say=None: silent, as train(log=None) is
    path = resume_path(run_dir).resolve()  # runs/latest -> the run it names
    checkpoint = load(path)
    saved, values = checkpoint.config, dict(given or {})
    fixed = {f.name for f in dataclasses.fields(Config) if not f.metadata["resume"]}
    if "data" in values:  # the run saved it absolute
        values["data"] = Config(data=values["data"]).with_absolute_paths().data
    if checkpoint.ref.user_code or "model" in values:  # the code, named again, must be the run's (one line if not)
        given_ref = parse_model(values["model"], saved.get("model_args")) if "model" in values else None
        if given_ref is not None and not checkpoint.ref.user_code and given_ref.label != checkpoint.ref.label:
            raise UsageError(f"--resume continues the run as configured; --model {values['model']} differs from its "
                             f"--model {saved.get('model')} (start a new run to change it)")
        ref = reopen(checkpoint.ref, given_ref, path)
        values["model"] = absolute_model(values.get("model", saved["model"]))
        if ref.user_code:
            saved = dict(saved, model=values["model"])
    if "out" in values and Path(values["out"]).expanduser().resolve() == path.parent:
        del values["out"]  # the run's own folder, named another way (absolute, through a link)
    saved = dict(saved, out=str(path.parent))  # where the run is now (a moved run's config names where it was)
    moved = moved_data(saved.get("data"), values.get("data"))
    if moved:
        say(f"Data: {values['data']} in place of the run's {saved['data']}; resuming only if its images are the run's")
    elif "data" not in values:
        check_data_there(saved.get("data"))
    for name, value in values.items():
        if name in fixed and not same_setting(name, saved.get(name), value, saved.get("target_acc")) and not (
                name == "data" and moved):
            more = f"; a new run with --init-from {path} starts from its weights" if name == "epochs" else ""
            raise UsageError(f"--resume continues the run as configured; {as_flag(name, value)} differs from its "
                             f"{as_flag(name, saved.get(name))} (start a new run to change it{more})")
    values = dict(saved, **values)
    values["out"] = str(path.parent)
    return Config.from_dict(values), checkpoint


def check_resumed_config(cfg: Config, checkpoint: Checkpoint):
    """train(cfg, resume=checkpoint) from Python: `cfg` must keep the run's fixed settings as
    resume_config gave them, as the command line's --resume requires (its data and model, which
    may be named again, are checked when they are read)."""
    if cfg.out is None or not (Path(cfg.out).expanduser() / "last.pt").is_file():
        raise UsageError(f"train(resume=...) continues the run in the Config's out, and {cfg.out} holds no last.pt; "
                         "cfg, checkpoint = resume_config(RUN_DIR) gives the run's own (to start from its weights "
                         "in a new run: Config(init_from=...))")
    named = {name: getattr(cfg, name) for name in ("data", "model", "out")}  # as given now: a model file moved since
    saved = Config.from_dict({**checkpoint.config, **named})  # (named again at its new place) is not looked for
    for f in dataclasses.fields(Config):
        name = f.name
        if f.metadata["resume"] or name in ("data", "model", "out"):
            continue
        if not same_setting(name, getattr(saved, name), getattr(cfg, name), saved.target_acc):
            raise UsageError(f"train(resume=...) continues the run as configured; {as_flag(name, getattr(cfg, name))} "
                             f"differs from its {as_flag(name, getattr(saved, name))} (start a new run to change it; "
                             "cfg, checkpoint = resume_config(RUN_DIR) gives the run's own)")


def same_setting(name, saved, given, target_acc=None):
    """Whether a fixed setting given on --resume is the run's: --amp and --amp unset pick the same
    precision on every device (--amp only warns where it keeps fp32), so either resumes the other; a
    default given by its value is the unset one (--eval-every 1 in a run without --target-acc, the
    run's `target_acc`; --test-split 10%)."""
    if name == "eval_every" and target_acc is None:
        saved, given = (1.0 if value is None else value for value in (saved, given))
    if name == "test_split":
        saved, given = (_split_share(value) for value in (saved, given))
    return saved == given or (name == "amp" and {saved, given} <= {None, True})


def _split_share(value):
    """--test-split as the share it holds out (unset: the default 10%), or as given where it is no percentage."""
    from engine.data.layout import DEFAULT_TEST_SPLIT, parse_fraction

    try:
        return parse_fraction(DEFAULT_TEST_SPLIT if value is None else value, "--test-split", whole=True)
    except UsageError:
        return value


def as_flag(name, value):
    """A setting as its flag reads: --no-amp, --compile, --lr 0.1; --no-ema for a flag whose --no- form
    gives its default; '--amp unset' for another None (chosen per machine, or off)."""
    field = next(f for f in dataclasses.fields(Config) if f.name == name)
    if isinstance(value, bool) or (value == field.default and field.metadata["const"] is not None):
        return flag(name) if value is True else f"--no-{flag(name)[2:]}"
    return f"{flag(name)} {'unset' if value is None else value}"


def moved_data(saved, given):
    """Whether `given` (--data on resume) names an image folder or archive in place of the run's
    `saved` one, which is gone: the same images moved (check_resume's fingerprint then compares them)."""
    from engine.config import BUILTIN_DATASETS

    if given is None or saved is None or given == saved or saved in BUILTIN_DATASETS or given in BUILTIN_DATASETS:
        return False
    return not Path(saved).exists() and Path(given).exists()


def check_data_there(saved):
    """A run's image folder that is not where it trained: one line saying how to resume from where it is."""
    from engine.config import BUILTIN_DATASETS

    if saved and saved not in BUILTIN_DATASETS and not Path(saved).exists():
        raise UsageError(f"--resume: the run's data {saved} is not there any more; if it moved, resume with --data "
                         "NEW_PATH (its images must be the run's)")


def check_resume(checkpoint: Checkpoint, path, fingerprint, total_steps, source, world=1):
    """One line naming what keeps a checkpoint from being resumed on this data by `world` processes: a
    missing optimizer state, RNG states or metrics, data whose images changed, another number of
    processes (the schedule counts the steps of the run's global batch), or a schedule of another length."""
    missing = [k for k in ("optimizer", "rng", "metrics", "scheduler") if getattr(checkpoint, k) is None]
    if missing:
        raise EngineError(f"--resume: {path} has no {', '.join(missing)} (it holds weights only); "
                          "evaluate or export it, or start a new run")
    metrics = checkpoint.metrics
    epochs = [m for m in metrics if not m.get("partial")] if isinstance(metrics, list) else None
    if epochs is None or len(epochs) != checkpoint.epoch:  # evaluations within an epoch (--eval-every) aside
        raise EngineError(f"--resume: {path} has metrics for {len(metrics)} epochs but says "
                          f"{checkpoint.epoch} are done; it is damaged")
    import torch

    if not isinstance(checkpoint.rng, dict) or not isinstance(checkpoint.rng.get("torch"), torch.Tensor):
        raise EngineError(f"--resume: {path} has no torch RNG state; it is damaged")
    changes = fingerprint_changes(checkpoint.fingerprint or fingerprint, fingerprint)
    if changes:
        raise EngineError(f"--resume: the data at {source} changed since the run started ({changes}); restore it, "
                          "or start a new run on the new data")
    saved = (checkpoint.scheduler or {}).get("total_steps", total_steps)
    trained_by = len(checkpoint.rng.get("ranks") or ()) or 1  # every rank's RNG state is kept under DDP
    if trained_by != world:
        again = f"--nproc {trained_by}" if trained_by > 1 else "without --nproc"
        raise UsageError(f"--resume: the run trained with {trained_by} process{'es' if trained_by > 1 else ''} and "
                          f"this one has {world}: its schedule ({saved:,} steps) counts the steps of its global batch; "
                          f"resume it {again}")
    if saved != total_steps:
        raise EngineError(f"--resume: the run was scheduled for {saved:,} steps, but the data at {source} now gives "
                          f"{total_steps:,}; restore the data, or start a new run")


def data_fingerprint(data):
    """What --resume compares: image counts and a digest of the labels and the pixels (a strided
    sample of at most 2,048 images per split, so a large set costs milliseconds)."""
    def digest(x, y):
        h = hashlib.blake2b(digest_size=8)
        h.update(y.numpy().tobytes())
        step = max(1, len(x) // 2048)
        h.update(x[::step].contiguous().numpy().tobytes())
        return h.hexdigest()

    return {"train_images": len(data.train_x), "test_images": len(data.test_x),
            "train": digest(data.train_x, data.train_y), "test": digest(data.test_x, data.test_y)}


def test_set_changes(saved, data):
    """What changed in a run's test set since its data fingerprint `saved` was taken, or None (also
    where there is no fingerprint, as in checkpoints from before it)."""
    if not saved:
        return None
    now = data_fingerprint(data)
    if saved.get("test_images") != now["test_images"]:
        return f"test images {saved.get('test_images', 0):,} -> {now['test_images']:,}"
    return "test images or labels differ" if saved.get("test") != now["test"] else None


def fingerprint_changes(saved, now):
    """A phrase saying what changed between two data fingerprints, or None."""
    changes = [f"{key.replace('_', ' ')} {saved[key]:,} -> {now[key]:,}"
               for key in ("train_images", "test_images") if saved.get(key) != now.get(key)]
    if not changes:
        changes = [f"{split} images or labels differ" for split in ("train", "test") if saved.get(split) != now.get(split)]
    return "; ".join(changes) or None
