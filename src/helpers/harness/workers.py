"""Runs in parallel on Ray: local workers on this machine, or a cluster by address.

Every run of a plan is independent (it builds its own arm from the inputs, trains, evaluates), so
`run_all(..., workers=W)` (helpers.harness.schedule) hands the runs still to do to W Ray actors and lands each result on the driver as it
comes back (the same atomic write as in-process: results do not depend on where a run ran). Each actor holds
the plan's `Inputs` (sent once, with cloudpickle) and loads the yardsticks once.

- Locally (`make study WORKERS=2`, or WORKERS in 04's and 05's parameters): Ray starts on this machine and
  each worker gets `threads_per_worker(W)` of its cores, so W workers never oversubscribe them.
- On a cluster (`RAY_ADDRESS=ray://head:10001` or `auto`): each run asks for `gpus_per_run` GPUs where the
  cluster has GPUs (0.5: two small runs share one), else for that many CPUs. The 01 adapter and the 02
  model are read by their paths, so every node needs them at the same path (shared storage), and the model
  cache (`TUTORIAL_CACHE`) for the base model and the reward.

A worker that dies loses only the run it held: the other runs land, a new worker takes its place, and
`run_all` then raises an error naming the runs that did not land; the next call runs only those.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Callable

import torch

from .arms import yardsticks
from .execute import execute
from .trainers import TRAINERS, trainer_for

START_TIMEOUT_S = float(os.environ.get("TUTORIAL_RAY_START_TIMEOUT_S", 300))  # load a model, import torch
POLL_S = 10.0
FAULT = "TUTORIAL_TEST_WORKER_DIES_ON"  # tests only: a worker given this run label exits (a killed worker)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(workers: int | str | None = None) -> int:
    """`workers` as a count, with the profiles' precedence (helpers.profiles.configure): the value given, else
    $TUTORIAL_WORKERS (`make ... WORKERS=`), else "auto". "auto" is 2 on a CPU-only machine with at least 2
    cores where Ray is installed, else 1 (benchmarks/workers.py measures the two layouts; its figures are on the
    site's Performance page); a GPU runs one run at a time."""
    if workers is None:
        workers = os.environ.get("TUTORIAL_WORKERS") or "auto"
    if isinstance(workers, str) and workers.strip().isdigit():
        workers = int(workers)  # from the environment (make tutorial WORKERS=2)
    if workers == "auto":
        if importlib.util.find_spec("ray") is None:  # Ray is the optional `scale` extra
            return 1
        return 2 if cores() >= 2 and not torch.cuda.is_available() else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f'workers must be an integer >= 1 or "auto", not {workers!r}')
    return workers


def threads_per_worker(workers: int) -> int:
    """Each local worker's share of this machine's cores (at least one)."""
    return max(1, cores() // max(1, workers))


class Worker:
    """One Ray actor: the plan's inputs, the yardsticks loaded once, torch on its share of the cores."""

    def __init__(self, inputs, threads: int):
        torch.set_num_threads(threads)
        self.inputs, self.sticks = inputs, None

    def ready(self) -> bool:
        return True

    def run(self, run, trainer) -> dict:
        TRAINERS.setdefault(run.trainer, trainer)  # a trainer registered on the driver only (a notebook's, a test's)
        if os.environ.get(FAULT) == run.label:
            os._exit(1)
        src = self.inputs.sources
        self.sticks = self.sticks or yardsticks(src.profile, src.merged_dir, src.quantize)
        return execute(run, self.inputs, self.sticks, trainer=trainer)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before any work, when $RAY_ADDRESS names a host and port nothing answers on (Ray itself
    retries for minutes). "auto" and "local" are Ray's own and left to it."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"RAY_ADDRESS={address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"RAY_ADDRESS={address!r}: nothing answers at {host}:{port} ({e}). Start the cluster "
                              f"(`ray start --head`), fix the address, or unset RAY_ADDRESS to run on this "
                              f"machine.") from None


def start_ray():
    """Connect to $RAY_ADDRESS, or start Ray on this machine with one CPU slot per core."""
    # Ray's C++ core prints a stack trace to stderr on SIGTERM, which is how a notebook's kernel ends (papermill,
    # JupyterLab's restart): pages of "logging.cc" in `make tutorial`'s output after a run that went well
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:  # here, not at the top: Ray is optional (the `scale` extra) and takes seconds to import
        import ray
    except ImportError as e:
        raise ImportError('WORKERS > 1 and RAY_ADDRESS need Ray: pip install "lora-rlhf-tutorial[scale]" '
                          '(or `pip install ray`), or run with WORKERS = 1.') from e
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            check_reachable(address)
        # workers find the package and the fault switch through the environment they inherit
        env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("TUTORIAL_")}}
        if address:  # a cluster's nodes get this package with the job, whatever they have installed
            env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
        ray.init(address=address or None, num_cpus=None if address else cores(), include_dashboard=False,
                 log_to_driver=True, logging_level="error",  # not its banner and token notice in notebooks
                 runtime_env=env)
    return ray


def capped_workers(asked: int, free: dict, threads: int, gpus_per_run: float) -> tuple[int, str]:
    """As many workers as asked, but no more than Ray's free slots (CPUs per worker, or GPUs per run): an actor
    that cannot get its slot never starts, and a run handed to it would wait forever."""
    if free.get("GPU", 0) > 0:
        slots, unit = int(free["GPU"] // gpus_per_run), f"{free['GPU']:g} free GPUs, {gpus_per_run:g} per run"
    else:
        slots, unit = int(free.get("CPU", 0) // threads), f"{free.get('CPU', 0):g} free CPUs, {threads} per worker"
    if slots < 1:
        raise RuntimeError(f"Ray has no free slot for a worker ({unit}): stop what holds them, or run with WORKERS = 1")
    n = min(asked, slots)
    return n, f"{n} Ray workers" + (f" (asked for {asked}; {unit})" if n < asked else f" ({unit})")


def run_on_ray(todo: list, inputs, workers: int, land: Callable, gpus_per_run: float = 1.0) -> list:
    """Execute `todo` (Run values) on at most `workers` Ray actors, capped by the free slots, calling
    `land(run, result)` on the driver as each finishes; returns the runs whose worker died or raised, with why.
    Every actor is released on any exit, an interrupt (Ctrl-C in a notebook) included."""
    ray = start_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    threads = threads_per_worker(workers)
    workers, said = capped_workers(min(workers, len(todo)), ray.available_resources(), threads, gpus_per_run)
    print(said, flush=True)
    actor = ray.remote(num_cpus=0 if gpus else threads, num_gpus=gpus_per_run if gpus else 0)(Worker)
    shared = ray.put(inputs)
    pool = [actor.remote(shared, threads) for _ in range(workers)]
    everyone = list(pool)
    queue, busy, failed = list(todo), {}, []
    try:
        ready, waiting = ray.wait([w.ready.remote() for w in pool], num_returns=len(pool), timeout=START_TIMEOUT_S)
        if waiting:
            raise RuntimeError(f"{len(waiting)} of {len(pool)} Ray workers did not start within {START_TIMEOUT_S} s "
                               f"(no free slot for them?): run with fewer WORKERS, or WORKERS = 1")
        while queue or busy:
            while queue and pool:
                worker, run = pool.pop(), queue.pop(0)
                busy[worker.run.remote(run, trainer_for(run.trainer))] = (run, worker)
            done, _ = ray.wait(list(busy), num_returns=1, timeout=POLL_S)  # short waits: an interrupt gets through
            if not done:
                continue
            run, worker = busy.pop(done[0])
            try:
                result = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                failed.append((run, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
                if isinstance(e, ray.exceptions.RayActorError):  # the worker died: a new one takes its place
                    ray.kill(worker)
                    worker = actor.remote(shared, threads)
                    everyone.append(worker)
            else:
                land(run, result)
            pool.append(worker)
    finally:
        for worker in everyone:
            ray.kill(worker)
    return failed
