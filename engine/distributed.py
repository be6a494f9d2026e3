"""The process group under torchrun, and what the ranks share: sums, broadcasts, RNG states.

`process_group(device)` joins the group torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK
(NCCL on CUDA, gloo on CPU) and leaves it on exit; without torchrun it yields a one-rank `Ranks`
whose helpers do nothing, so single-process runs are unchanged. `launch()` is `engine train
--nproc N`: torchrun with the same arguments, and one line if a rank fails.
"""

import contextlib
import datetime
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from engine.errors import RANK_ERRORS_ENV, EngineError, UsageError, rank_errors

TIMEOUT_S = 300  # default collective timeout: longer than any skew between ranks (a save, a first compile)
LOST_GRACE_S = 3  # a rank that lost contact waits this long before it reports (see process_group)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
LAUNCHER_ENV = "ENGINE_LAUNCHER_PID"  # set by launch(): the ranks stop if that process dies (see die_with_launcher)
PR_SET_PDEATHSIG = 1  # prctl(2)


def launched():
    """True in a process torchrun started."""
    return all(name in os.environ for name in TORCHRUN_ENV)


@dataclass
class Ranks:
    """This process's place in the group; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device | None = None  # the device of this rank (cuda:LOCAL_RANK or cpu)

    @property
    def is_main(self):
        """Rank 0 writes the run directory, the checkpoints and the report."""
        return self.rank == 0

    def sum(self, *tensors):
        """The tensors summed over all ranks (new tensors; each on its own device)."""
        if self.world == 1:
            return tensors
        out = [t.clone() for t in tensors]
        for t in out:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(out)

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def seed(self, seed):
        """Give this rank its own torch RNG stream (dropout differs per rank), after the model is
        built from the common seed; rank 0 of 1 keeps the single-process stream."""
        if self.world > 1:
            state = np.random.SeedSequence([seed, self.rank, 1]).generate_state(1, np.uint64)[0]
            torch.manual_seed(int(state) & (2**63 - 1))

    def gather_rng(self, states):
        """The checkpoint's RNG entry: this rank's `states`, plus every rank's under "ranks"."""
        if self.world == 1:
            return states
        every = [None] * self.world
        dist.all_gather_object(every, states)
        return {**every[0], "ranks": every}

    def rng_of_rank(self, saved):
        """The RNG states this rank resumes from: its own when the run had as many ranks, else rank 0's."""
        ranks = saved.get("ranks")
        if ranks and len(ranks) == self.world:
            return ranks[self.rank]
        return {k: v for k, v in saved.items() if k != "ranks"}

    def wrap(self, model, user_code=False):
        """The model under DistributedDataParallel (it averages gradients across ranks), or as is.
        user_code: the user's own module, whose forward may leave a parameter out (one it never
        uses, a branch taken on some steps: stochastic depth); DDP then looks for the parameters
        each step's graph did not reach (a walk of the graph per step), where the built-ins use
        every parameter every step."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=user_code)

    def sync_batchnorm(self, model):
        """SyncBatchNorm on CUDA, so batch statistics span the global batch. PyTorch's SyncBatchNorm
        runs only on GPUs; on CPU each rank normalises by its own batch and DDP copies rank 0's
        running statistics to every rank at each forward."""
        if self.world > 1 and self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def sync_buffers(self, model):
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so sharded evaluation
        uses one model."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)


def timeout():
    value = os.environ.get("ENGINE_DIST_TIMEOUT", str(TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not 0 < seconds < 10**9:  # timedelta overflows at about 3e13 s, inf at once
        raise EngineError(f"ENGINE_DIST_TIMEOUT={value!r}: set it to a number of seconds above 0 and below 1e9 "
                          f"(unset: {TIMEOUT_S:g})")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(device: torch.device, say=lambda *_: None):
    """Join torchrun's process group for the block (a one-rank `Ranks` without torchrun).

    device: the resolved --device; CUDA ranks get cuda:LOCAL_RANK and NCCL, CPU ranks gloo and
    an equal share of this machine's cores (else their OpenMP threads fight over them); more local
    ranks than cores share them, one thread each, which rank 0 says in one line (`say`).
    """
    if not launched():
        yield Ranks(device=device)
        return
    die_with_launcher()
    env = {name: int(os.environ[name]) for name in TORCHRUN_ENV}
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
    threads = torch.get_num_threads()  # the caller's, put back on the way out
    if device.type == "cuda":
        device = torch.device("cuda", env["LOCAL_RANK"])
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    ranks = Ranks(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], local_world, device)
    joined = dist.is_available() and dist.is_initialized()  # a script that joined the group before train()
    if joined:
        check_group(backend)
    else:
        dist.init_process_group(backend, timeout=timeout(), device_id=device if backend == "nccl" else None)
    if backend == "gloo":
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores // local_world))
        if local_world > cores and ranks.is_main:
            say(f"{local_world} ranks on this machine's {cores} cores: they share cores, one thread each, and run "
                f"slower than --nproc {cores} would")
    try:
        yield ranks
        ranks.barrier()  # leave together: a rank tearing down gloo while rank 0 still saves aborted (SIGABRT)
    except RuntimeError as error:
        if not lost_contact(error):
            raise
        time.sleep(LOST_GRACE_S)  # if a local rank died, torchrun stops this one now: one line, the root cause
        first = re.sub(r"^\[[^]]*\]\s*", "", str(error).strip().splitlines()[0])[:200]  # drop gloo's [file.cc:78]
        raise EngineError(f"rank {ranks.rank}: lost contact with the other ranks ({first}); a rank died or hung "
                          f"(collectives wait ENGINE_DIST_TIMEOUT={timeout().total_seconds():.0f} s)") from None
    finally:
        torch.set_num_threads(threads)
        if not joined:  # the caller's own group stays theirs
            dist.destroy_process_group()


def check_group(backend):
    """The process group a caller joined before train() must be torchrun's, on this device's backend."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if (rank, world) != (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])):
        raise UsageError(f"train(): the process group already joined is rank {rank} of {world}, but torchrun made this "
                         f"process rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}; join it with "
                         "dist.init_process_group() as torchrun sets it up, or leave the joining to train()")
    if dist.get_backend() != backend:
        raise UsageError(f"train(): the process group already joined uses {dist.get_backend()}, and this device "
                         f"trains with {backend}; join it with {backend}, or leave the joining to train()")


def lost_contact(error):
    """True for a collective that failed because another rank died or stopped answering: torch
    raises DistError for some, and a plain RuntimeError from gloo's transport (from DDP's reducer)."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(word in text for word in ("gloo", "nccl", "timed out", "connection closed"))


def die_with_launcher():
    """A rank of `engine train --nproc N` gets SIGTERM (taken as Ctrl-C is) when the launcher that
    started it dies, even by `kill -9`, which gives torchrun no chance to stop its ranks: else they
    trained on, unseen, holding the run's lock. Linux only (prctl); elsewhere nothing changes."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != launcher:  # it died before the request: the signal would never come
        os.kill(os.getpid(), signal.SIGTERM)


def launch(nproc, argv):
    """`engine train --nproc N ...`: torchrun (torch.distributed.run) on this machine with the same
    arguments minus --nproc. Returns the exit code; a failed rank becomes one line."""
    if launched():
        raise UsageError("--nproc starts torchrun itself; under torchrun leave it out")
    args = without_nproc(argv)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    for name in list(logging.root.manager.loggerDict):  # torchrun's report becomes our one line
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic")):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # each sets its own level, so one by one
    with tempfile.TemporaryDirectory(prefix="engine-ranks-") as folder:
        os.environ[RANK_ERRORS_ENV] = folder  # the ranks inherit it: each leaves its error line there
        os.environ[LAUNCHER_ENV] = str(os.getpid())
        quiet = "TORCH_CPP_LOG_LEVEL" not in os.environ
        if quiet:  # torch's C++ warnings (DDP's reducer on a user model that used every parameter on a
            os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"  # step, which Ranks.wrap expects) are nothing to act on
        try:
            torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "engine", *args])
        except SignalException as stop:  # Ctrl-C or kill: torchrun stopped the ranks, and rank 0 said what was saved
            return 128 + int(stop.sigval)  # 130 for SIGINT, 143 for SIGTERM, as without --nproc
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            if failure.exitcode in (1, 2, 130):  # engine's own errors: rank 0 printed its line already
                for line in rank_errors(folder):  # and another rank's, where it said something else
                    print(f"engine: error: {line}", file=sys.stderr, flush=True)
                return failure.exitcode
            code = failure.exitcode
            how = f"was killed by {failure.signal_name()}" if code < 0 else f"exited with code {code}"
            print(f"engine: error: rank {rank} {how}; torchrun stopped the other ranks", file=sys.stderr, flush=True)
            return 1 if code < 0 or code > 255 else code
        finally:
            os.environ.pop(RANK_ERRORS_ENV, None)
            os.environ.pop(LAUNCHER_ENV, None)
            if quiet:
                os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
    return 0


def without_nproc(argv):
    """argv with every `--nproc N` / `--nproc=N` removed, abbreviated as argparse takes it (`--npr 2`)."""
    out, skip = [], False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif arg == "--":
            out.append(arg)
        elif len(flag) > 3 and "--nproc".startswith(flag):
            skip = "=" not in arg
        else:
            out.append(arg)
    return out

