"""Wall time, CPU time and peak memory of one step, run in a forked child process.

A process's peak resident memory (``ru_maxrss``) only ever grows, so the peak of each step of a
pipeline needs a process of its own: :func:`run_measured` forks, runs the step in the child and
reads the child's resource usage with ``os.wait4`` (exact, no sampling). The child starts as a
copy of the parent, so its peak includes the parent's memory that it shares or touches: keep the
parent small (pass file names, not graphs) and measure a step that does nothing for the floor.
Wall and CPU time cover the step function only (``time.perf_counter`` and
``time.process_time`` in the child, user + system), not the fork or what the child does after it.
POSIX only (``os.fork``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import time
import traceback
from typing import Any, Callable

from asr_kd.errors import ConfigError, DataError

@dataclasses.dataclass(frozen=True)
class StepUsage:
    """What one step cost: wall and CPU seconds of the step function and the child's peak
    resident memory (``ru_maxrss``) in MiB."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float


class StepFailed(RuntimeError):
    """A measured step raised an exception other than DataError/ConfigError, or its process died."""


def _data_bytes() -> int:
    """This process's data memory as the kernel counts it against ``RLIMIT_DATA`` (VmData)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(write_fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict, max_data_mb: float | None) -> None:
    """Run ``fn`` and send ``{"result", "wall_s", "cpu_s"}`` or ``{"error", "kind"}`` as JSON."""
    try:
        if max_data_mb is not None:
            # RLIMIT_DATA bounds the heap and private anonymous mappings (not the shared libraries),
            # so a step that outgrows it fails with MemoryError instead of waking the OOM killer,
            # which on a shared machine may pick someone else's process.
            # The cap counts from what the child already holds (the parent's heap, thread stacks and
            # the libraries' private data it inherited at the fork, which in a long-lived process
            # such as a test runner can exceed a gigabyte), so it bounds the step's own growth.
            limit = _data_bytes() + int(max_data_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
            # And should memory run out anyway, the kernel takes this step first.
            with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
                f.write("1000")
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        message = {"result": result, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        payload = json.dumps(message)
        code = 0
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as one message
        kind = type(err).__name__
        text = str(err) if isinstance(err, (DataError, ConfigError)) else "".join(traceback.format_exception_only(err)).strip()
        payload = json.dumps({"error": text, "kind": kind})
        code = 1
    data = payload.encode()
    view = memoryview(data)
    while view:
        view = view[os.write(write_fd, view):]
    os.close(write_fd)
    os._exit(code)  # never run the parent's cleanup (atexit, pytest) in the child


def run_measured(fn: Callable[..., Any], *args: Any, max_data_mb: float | None = None, **kwargs: Any) -> tuple[Any, StepUsage]:
    """Run ``fn(*args, **kwargs)`` in a forked child; return its result (which must be
    JSON-serialisable: it comes back as JSON, so tuples return as lists) and the :class:`StepUsage`.
    ``max_data_mb`` caps the data memory the child may add to what it inherited at the fork
    (``RLIMIT_DATA``; beyond it the step fails) and
    makes the child the out-of-memory killer's first choice.

    A DataError or ConfigError raised by ``fn`` is raised again here with its message; any other
    exception, or a child killed by a signal (e.g. the kernel's out-of-memory killer), raises
    :class:`StepFailed` saying what happened.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(write_fd, fn, args, kwargs, max_data_mb)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:  # read everything before waiting: a full pipe would block the child
        while chunk := pipe.read(1 << 16):
            chunks.append(chunk)
    _, status, usage = os.wait4(pid, 0)
    name = getattr(fn, "__name__", repr(fn))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        hint = {signal.SIGKILL: " (killed: out of memory?)", signal.SIGABRT: " (aborted: out of memory under the limit?)"}.get(sig, "")
        raise StepFailed(f"step {name} died from signal {signal.Signals(sig).name}{hint}; peak memory {usage.ru_maxrss / 1024:.0f} MiB")
    message = json.loads(b"".join(chunks).decode()) if chunks else {"error": "no result from the child", "kind": "StepFailed"}
    if "error" in message:
        if message["kind"] == "DataError":
            raise DataError(message["error"])
        if message["kind"] == "ConfigError":
            raise ConfigError(message["error"])
        raise StepFailed(f"step {name} failed: {message['error']}")
    # ru_maxrss is in KiB on Linux.
    return message["result"], StepUsage(wall_s=message["wall_s"], cpu_s=message["cpu_s"], peak_rss_mb=usage.ru_maxrss / 1024)



# CPU seconds of worker processes that this process never waits for (a multiprocessing pool
# started from a forkserver: its workers are the forkserver's children, so RUSAGE_CHILDREN never
# counts them). Pools that know this add their workers' CPU here before they end; the stage
# records' ``resources`` include it.
_DETACHED_CPU_S = [0.0]


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds of process ``pid`` and of the children it waited for
    (``/proc/<pid>/stat``); 0.0 where it cannot be read (not Linux, the process has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3, utime..cstime are fields 14..17 (proc(5)).
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def note_detached_cpu(pids: list[int]) -> float:
    """Add the CPU seconds of the processes ``pids`` (a pool's workers, read just before the pool
    ends) to :func:`detached_cpu_seconds`; return the seconds added."""
    seconds = sum(process_cpu_seconds(p) for p in pids)
    _DETACHED_CPU_S[0] += seconds
    return seconds


def detached_cpu_seconds() -> float:
    """Return the CPU seconds noted by :func:`note_detached_cpu` in this process so far."""
    return _DETACHED_CPU_S[0]
