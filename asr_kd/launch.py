"""One launcher for the recipe's independent jobs (the trainings of stages 4, 6, 8 and 10), with a
backend chosen like Kaldi's ``cmd.sh`` (``run.sh --cmd``):

- ``local`` (the default): a pool of spawned processes on this machine, ``jobs`` at a time, each
  with ``num_threads`` torch threads (small networks train faster on one thread, so a 2-core
  machine trains two at once in about the time of one). With ``jobs=1`` the jobs run one after
  another in this process.
- ``slurm``: one Slurm job array through submitit's ``SlurmExecutor``, sized by a
  :class:`ClusterConfig` (``recipes/librispeech/conf/slurm.yaml``: partition, time, memory, CPUs,
  GPUs, how many array tasks run at once). Needs ``srun`` on PATH and an experiment folder that
  the compute nodes share.
- ``submitit-local``: the very path of ``slurm``, on this machine (submitit's ``LocalExecutor``),
  every job at once and on the CPU (the executor hides the GPUs): a check of a set-up, and what
  the tests run, without a cluster. ``jobs`` (``--nj``) applies to ``local`` only; a Slurm array
  runs ``array_parallelism`` tasks at once.

What crosses a job boundary, whatever the backend: the function's name (a module-level function
of ``asr_kd``) and its arguments as JSON (plain values, lists, tuples, dicts, paths and the
dataclasses of ``asr_kd``: the frozen configs, :class:`~asr_kd.stages.layout.RecipeLayout`), and
back the function's result as JSON. A job is rebuilt from data: the function is looked up by name
in ``asr_kd`` only, a dataclass is rebuilt through its own constructor (so its validation runs).
Results are identical whichever backend ran a job (training is seeded and deterministic on CPU,
and a float survives JSON exactly); the local backend encodes too, so a job that runs locally
runs on the cluster.

Pickles: submitit moves every job as a pickle of its own (``<log_dir>/*.pkl``). Here that pickle
holds a reference to :func:`run_task_file` and one path string; this process writes it moments
before the job reads it, in the experiment's own log folder, and it is never supplied by a user.
This process never unpickles a job's result: it asks submitit only whether a job ended and reads
the job's JSON result file. The pickles are deleted when the jobs end; the jobs' logs
(``*_log.out``, ``*_log.err``) stay.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from asr_kd.config import _check, load_config
from asr_kd.errors import ConfigError, DataError
from asr_kd.utils import write_json_atomic

log = logging.getLogger(__name__)

BACKENDS = ("local", "slurm", "submitit-local")
# Only functions and dataclasses of this package are rebuilt from a job's JSON.
_PACKAGE = "asr_kd"
_ERRORS = {"DataError": DataError, "ConfigError": ConfigError}


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """What each Slurm array task asks for (``conf/slurm.yaml``); ``submitit-local`` uses the time
    limit only."""

    partition: str = ""  # empty: the cluster's default partition
    time_min: int = 240  # per job; a teacher of the paper's size on 100 h needs hours
    mem_gb: float = 8.0
    cpus_per_task: int = 1  # = run.sh --num-threads for the trainings (one torch thread each)
    gpus_per_node: int = 0
    array_parallelism: int = 32  # array tasks running at once
    account: str = ""
    qos: str = ""
    # Shell lines each job runs first (e.g. "source /path/to/asr-kd/.venv/bin/activate").
    setup: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.time_min >= 1, f"time_min must be >= 1 (minutes), got {self.time_min}")
        _check(self.mem_gb > 0, f"mem_gb must be > 0, got {self.mem_gb}")
        _check(self.cpus_per_task >= 1, f"cpus_per_task must be >= 1, got {self.cpus_per_task}")
        _check(self.gpus_per_node >= 0, f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        _check(self.array_parallelism >= 1, f"array_parallelism must be >= 1, got {self.array_parallelism}")


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Where jobs run: ``backend`` (one of :data:`BACKENDS`) and, for the submitit backends, the
    cluster settings. Not part of any stage's settings: where a job runs never changes what it makes."""

    backend: str = "local"
    cluster: ClusterConfig = ClusterConfig()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--cmd takes {', '.join(BACKENDS)}, got {self.backend!r}")


def load_launcher(backend: str, cluster_config: Path | str | None = None) -> Launcher:
    """Return the :class:`Launcher` of ``backend`` with the :class:`ClusterConfig` read from
    ``cluster_config`` (YAML; default values when None or empty)."""
    try:
        cluster = load_config(ClusterConfig, cluster_config or None)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {cluster_config}; see recipes/librispeech/conf/slurm.yaml)" if cluster_config else str(err)) from None
    return Launcher(backend, cluster)


# --------------------------------------------------------------------------------------------
# Jobs as data
# --------------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """Return ``value`` as JSON-able data that :func:`decode` turns back into an equal value.
    TypeError for anything else (a model, an open file, a function)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: encode(v) for k, v in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value).__module__.startswith(_PACKAGE + "."):
        cls = type(value)
        return {"$dataclass": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}}
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():  # a numpy or torch scalar
        return encode(value.item())
    raise TypeError(f"a {type(value).__name__} cannot cross a job boundary: pass plain values, paths and asr_kd configs, "
                    "and return JSON-able results")


def _resolve(ref: str) -> Any:
    """Return the module-level object ``"asr_kd.module:name"``; ValueError for anything outside ``asr_kd``."""
    module, _, name = ref.partition(":")
    if not (module == _PACKAGE or module.startswith(_PACKAGE + ".")) or not name.isidentifier():
        raise ValueError(f"a job may only name a module-level function or dataclass of {_PACKAGE}, not {ref!r}")
    return getattr(importlib.import_module(module), name)


def decode(data: Any) -> Any:
    """Return the value that :func:`encode` turned into ``data``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "$path" in data:
        return Path(data["$path"])
    if "$tuple" in data:
        return tuple(decode(v) for v in data["$tuple"])
    if "$dict" in data:
        return {k: decode(v) for k, v in data["$dict"].items()}
    if "$dataclass" in data:
        cls = _resolve(data["$dataclass"])
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{data['$dataclass']} is not a dataclass")
        return cls(**{k: decode(v) for k, v in data["fields"].items()})
    raise ValueError(f"unknown job data {sorted(data)}")


def function_ref(fn: Callable[..., Any]) -> str:
    """Return ``"module:name"`` of a module-level function of ``asr_kd``; TypeError otherwise."""
    module, name = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
    if not module.startswith(_PACKAGE + ".") or not name.isidentifier() or getattr(importlib.import_module(module), name, None) is not fn:
        raise TypeError(f"a job must be a module-level function of {_PACKAGE}, got {module}.{name}")
    return f"{module}:{name}"


def _set_threads(num_threads: int) -> None:
    import torch

    from asr_kd.utils import setup_logging

    setup_logging()  # to stderr: the recipe's log (local) or the job's log file (submitit)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def run_encoded(ref: str, args_json: str) -> str:
    """Run the job ``ref(*decode(args))`` and return its result encoded as JSON (the local backend's job)."""
    result = _resolve(ref)(*decode(json.loads(args_json)))
    return json.dumps(encode(result))


def run_task_file(task_path: str) -> None:
    """Run the job described by the JSON file ``task_path`` (function, arguments, threads) and
    write its result, or the error that stopped it, to ``<task>.result.json`` (the job of the
    submitit backends: the file is this process's only answer)."""
    task = json.loads(Path(task_path).read_text())
    _set_threads(task["num_threads"])
    out = Path(task_path).with_suffix(".result.json")
    try:
        result = _resolve(task["function"])(*decode(task["args"]))
    except BaseException as err:
        write_json_atomic(out, {"error": type(err).__name__, "message": str(err)})
        raise
    write_json_atomic(out, {"result": encode(result)})


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def build_executor(launcher: Launcher, folder: Path, name: str) -> Any:
    """Return the submitit executor of ``launcher`` (``slurm`` or ``submitit-local``) with its
    parameters set, submitting nothing. ConfigError in one line when ``slurm`` finds no ``srun``."""
    import submitit

    if launcher.backend == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--cmd slurm: no `srun` on PATH (submitit submits through Slurm's sbatch and srun); "
                          "run on a Slurm login node, or use --cmd local")
    c = launcher.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm" if launcher.backend == "slurm" else "local")
    params: dict[str, Any] = {"name": name, "timeout_min": c.time_min, "mem_gb": c.mem_gb, "cpus_per_task": c.cpus_per_task,
                              "slurm_array_parallelism": c.array_parallelism}
    if launcher.backend == "slurm":  # the local executor would hide the GPUs of a node with gpus_per_node=0
        params["gpus_per_node"] = c.gpus_per_node
    for key in ("partition", "account", "qos"):
        if getattr(c, key):
            params[f"slurm_{key}"] = getattr(c, key)
    if c.setup:
        params["slurm_setup"] = list(c.setup)
    executor.update_parameters(**params)
    return executor


def _local_workers(jobs: int, num_jobs: int) -> int:
    """Return how many processes the local backend spawns for ``num_jobs`` jobs, ``jobs`` at a
    time: 0 where they run one after another in this process."""
    return 0 if jobs <= 1 or num_jobs <= 1 else min(jobs, num_jobs)


def _run_local(ref: str, payloads: list[str], jobs: int, num_threads: int) -> list[str]:
    workers = _local_workers(jobs, len(payloads))
    if not workers:
        return [run_encoded(ref, p) for p in payloads]
    log.info("running %d jobs in %d local processes (%d torch thread(s) each)", len(payloads), workers, num_threads)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_set_threads,
                             initargs=(num_threads,)) as pool:
        futures = [pool.submit(run_encoded, ref, p) for p in payloads]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_submitit(launcher: Launcher, ref: str, payloads: list[str], num_threads: int, log_dir: Path, name: str) -> list[str]:
    folder = Path(log_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    executor = build_executor(launcher, folder, name)
    tasks = []
    for i, payload in enumerate(payloads):
        task = folder / f"task{i}.json"
        task.with_suffix(".result.json").unlink(missing_ok=True)  # an answer of an earlier run is no answer
        write_json_atomic(task, {"function": ref, "args": json.loads(payload), "num_threads": num_threads})
        tasks.append(task)
    submitted = executor.map_array(run_task_file, [str(t) for t in tasks])
    log.info("submitted %d jobs (%s backend) as %s; logs in %s", len(tasks), launcher.backend,
             ", ".join(j.job_id for j in submitted), folder)
    try:
        for job in submitted:
            job.wait()
    except BaseException:
        for job in submitted:
            job.cancel(check=False)
        raise
    results, failures = [], []
    for i, (task, job) in enumerate(zip(tasks, submitted)):
        answer_path = task.with_suffix(".result.json")
        answer = json.loads(answer_path.read_text()) if answer_path.is_file() else {}
        if "result" in answer:
            results.append(json.dumps(answer["result"]))
        else:
            failures.append((i, job, answer))
    for job in submitted:  # submitit's transport files: ours, transient (see the module docstring)
        for p in (job.paths.submitted_pickle, job.paths.result_pickle):
            p.unlink(missing_ok=True)
    if failures:
        i, job, answer = failures[0]
        where = f"job {i} of {len(tasks)} ({name}, submitit job {job.job_id}; log {job.paths.stderr})"
        if answer.get("error") in _ERRORS:
            raise _ERRORS[answer["error"]](f"{answer['message']} [{where}]")
        what = f"{answer['error']}: {answer['message']}" if answer else f"no result (state {job.state}: killed, out of time or memory?)"
        raise RuntimeError(f"{where} failed: {what}")
    return results


def check_launch(launcher: Launcher | None, jobs: int, num_jobs: int) -> None:
    """Refuse (ConfigError) to run ``num_jobs`` jobs ``jobs`` at a time through ``launcher`` under
    torchrun, where each model is one DDP job across the ranks. :func:`launch_jobs` checks this; a
    stage that launches several rounds of jobs (CTC stage 4: a shared set's first steps, then the
    teachers; CTC stage 6: every student's seed 0, then the other seeds) calls it first with its
    largest round, so that it stops before the first round trains anything."""
    backend = (launcher or Launcher()).backend
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and (backend != "local" or (jobs > 1 and num_jobs > 1)):
        # Each job would start processes of its own that join this job's process group as
        # duplicate ranks (or submit every model once per rank): refuse before anything starts.
        raise ConfigError(f"under torchrun (WORLD_SIZE={world}) every model is one DDP job across the ranks: "
                          f"run the command with --jobs 1 --cmd local (got --jobs {jobs} --cmd {backend})")


def describe_launch(launcher: Launcher | None, jobs: int, num_jobs: int) -> str:
    """Return where :func:`launch_jobs` runs ``num_jobs`` jobs, for a stage's log line: "in this
    process", "in 2 local processes" or "as a slurm job array"."""
    backend = (launcher or Launcher()).backend
    if backend != "local":
        return f"as a {backend} job array"
    workers = _local_workers(jobs, num_jobs)
    return f"in {workers} local processes" if workers else "in this process"


def launch_jobs(fn: Callable[..., Any], jobs_args: Sequence[tuple], launcher: Launcher | None = None, jobs: int = 1, num_threads: int = 1,
                log_dir: Path | None = None, name: str = "jobs") -> list[Any]:
    """Return ``[fn(*args) for args in jobs_args]``, each call a job of ``launcher`` (default: local).

    ``fn`` must be a module-level function of ``asr_kd``, its arguments and result what
    :func:`encode` accepts. Local: up to ``jobs`` spawned processes of ``num_threads`` torch
    threads (in this process when ``jobs <= 1``); the first error of a job is raised here after
    the running jobs finish. Submitit backends: every call one task of a job array, its files in
    ``log_dir/name``; a job's DataError or ConfigError is raised here as such, naming its log.
    """
    launcher = launcher or Launcher()
    check_launch(launcher, jobs, len(jobs_args))
    ref = function_ref(fn)
    payloads = [json.dumps(encode(tuple(args))["$tuple"]) for args in jobs_args]
    if launcher.backend == "local":
        answers = _run_local(ref, payloads, jobs, num_threads)
    else:
        if log_dir is None:
            raise ConfigError(f"--cmd {launcher.backend} needs a log folder for its jobs (the stage passes <exp>/log)")
        answers = _run_submitit(launcher, ref, payloads, num_threads, log_dir, name)
    return [decode(json.loads(a)) for a in answers]

