"""Stage provenance: what a stage made, from what, with which settings, and the one skip/redo rule.

Every recipe stage writes ``provenance.json`` into its output folder, last and atomically, once
its work has succeeded (it replaces the old ``.done`` markers):

- ``config``: the resolved settings the stage ran with (configs as dicts, part names, sizes);
  never folder paths, so that a copied or moved experiment folder still matches;
- ``config_fingerprint``: a hash of that config;
- ``inputs``: the fingerprints of what it read (upstream stages' records, a corpus listing);
- ``outputs``: the size and SHA-256 of its key output files;
- ``fingerprint``: a hash of all three, the value downstream stages record as their input;
- ``code_version`` (``git describe`` or the package version) and ``command``, for the reader;
- ``resources``: what the work cost (wall and CPU seconds, peak memory, disk), for the reader and
  ``bench/scaling.py``; never part of a fingerprint.

:class:`StageGuard` applies the single rule: a stage is skipped only when its record exists, its
config and input fingerprints equal the ones it would run with now, and its recorded outputs are
intact. Otherwise the stage's folders are emptied and the work redone (``on_change="redo"``, the
default), or the stage stops with one line naming the differing keys (``on_change="stop"``; the
environment variable ``ASR_KD_ON_CHANGE`` sets it for every stage of a recipe run). An
interrupted run leaves ``.in_progress.json`` naming its fingerprints: a rerun with the same ones
resumes (checkpoints, finished sub-steps), any other empties the folders first. Modification
times are never consulted, and an output that merely exists is never reused.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from asr_kd.config import recorded_fields
from asr_kd.errors import ConfigError, DataError
from asr_kd.resource_usage import detached_cpu_seconds
from asr_kd.utils import file_sha256, not_rank_0, write_text_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "provenance.json"
IN_PROGRESS_NAME = ".in_progress.json"
# What asr_kd.utils.atomic_path and the archive writer name a file or folder while writing it.
TEMPORARY_PATTERN = ".*.tmp*"
ON_CHANGE_ENV = "ASR_KD_ON_CHANGE"
ON_CHANGE_CHOICES = ("redo", "stop")
# Settings that change how fast a stage runs or how much it logs, never what it makes.
# "launcher": where jobs run (asr_kd.launch: local processes or Slurm) never changes what they make.
NEUTRAL_KEYS = frozenset({"num_jobs", "num_workers", "log_every_steps", "checkpoint_every_steps", "keep_last_checkpoints", "launcher"})
# Output files up to this size are hashed when a stage is skipped; larger ones are checked by size.
HASH_ON_SKIP_BYTES = 64 << 20


def _canonical(value: Any) -> Any:
    """Return ``value`` as plain JSON types (dataclasses as dicts, tuples as lists, paths as str);
    a dataclass field made by :func:`asr_kd.config.later_option` is left out at its default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = recorded_fields(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_dict(value: Any) -> dict[str, Any]:
    """Return the JSON form of a stage's config (dataclasses and mappings, nested), without the
    :data:`NEUTRAL_KEYS` at any depth."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in NEUTRAL_KEYS}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    out = strip(_canonical(value))
    if not isinstance(out, dict):
        raise TypeError(f"a stage config must be a mapping or dataclass, got {type(value).__name__}")
    return out


def fingerprint(value: Any) -> str:
    """Return a 16-hex-digit SHA-256 of ``value``'s canonical JSON."""
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def listing_fingerprint(root: Path | str, parts: Sequence[str] = ()) -> str:
    """Return the fingerprint of the files below ``root`` (or its ``parts`` folders): their
    relative paths and sizes, so a changed or added file changes it and a copy does not."""
    root = Path(root)
    entries = []
    for top in [root / p for p in parts] or [root]:
        if not top.exists():
            entries.append([str(top.relative_to(root)), None])
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                entries.append([str(p.relative_to(root)), p.stat().st_size])
    return fingerprint(entries)


# What "-dirty" looks at: the code and the recipes' scripts and configs, not the RESULTS.md files
# and plots that the stages themselves rewrite (which made every later stage of a run "dirty").
_CODE_PATHS = ("asr_kd", "local", "recipes", "egs", "pyproject.toml", "Makefile",
               ":(exclude,glob)**/RESULTS.md", ":(exclude,glob)**/*.png", ":(exclude,glob)recipes/*/data/**", ":(exclude,glob)recipes/*/exp/**")


def code_differs_from(version: str) -> bool | None:
    """Whether the code now (tracked code, recipe scripts and configs of this checkout, uncommitted
    changes included) differs from what ``version`` (a :func:`code_version`) names: False when
    ``version`` is a clean commit whose code equals today's (a commit of RESULTS.md or the README
    alone changes nothing), True when it differs, None when that cannot be told (a ``-dirty``
    version, another install, a commit this checkout lacks)."""
    if not version.startswith("git ") or version.endswith("-dirty"):
        return None
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", version.removeprefix("git "), "--", *_CODE_PATHS],
                             capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(out.returncode)


def _older_code_note(record: "StageRecord", folder: Path) -> str:
    """The clause a skipped stage's log line ends with when other code made it: the skip rule
    compares settings and inputs, not code, so the reader learns that the outputs kept are another
    code's and how to redo them."""
    now = code_version()  # two git calls: once
    if not record.code_version or record.code_version == now:
        return ""
    differs = code_differs_from(record.code_version)
    if differs is False:
        return ""
    return (f" (made by {record.code_version}, whose code {'differs from' if differs else 'may differ from'} today's "
            f"{now}: remove {folder} to redo it with this code)")


def code_is_modified(repo: Path) -> bool:
    """Return whether tracked code, recipe scripts or configs of the git checkout ``repo`` differ
    from its commit (RESULTS.md files, plots and recipe data/exp folders do not count)."""
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHS],
                            capture_output=True, text=True, timeout=10)
    return status.returncode != 0 or bool(status.stdout.strip())


def code_version() -> str:
    """Return ``git <commit>`` of the asr-kd checkout (``-dirty`` when tracked code, recipe scripts
    or configs differ from it), else the package version. A copy of the tree without its ``.git``
    (rsynced to a GPU machine or a cluster node) names its commit in ``ASR_KD_CODE_VERSION``."""
    return os.environ.get("ASR_KD_CODE_VERSION", "").strip() or _checkout_version()


@functools.lru_cache(maxsize=1)
def _checkout_version() -> str:
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(repo), "describe", "--always"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return "git " + out.stdout.strip() + ("-dirty" if code_is_modified(repo) else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        from importlib.metadata import version

        return "asr-kd " + version("asr-kd")
    except Exception:  # noqa: BLE001 - not installed: say so rather than fail a stage
        return "unknown"


# The libraries whose versions can change a number in a table (BLAS and kernels through torch and
# numpy, the decoders, the feature code).
_LIBRARIES = ("torch", "numpy", "lhotse", "kaldi-hmm-gmm", "kaldifst", "kaldi-decoder", "jiwer")


def environment() -> dict[str, str]:
    """Return what a stage ran on: CPU model and count, Python, torch threads and the versions of
    the libraries that can change its numbers (results can differ across machines through BLAS
    kernels and thread counts; the README says so)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"cpu": f"{cpu}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            env[lib] = version(lib)
        except PackageNotFoundError:
            continue
    try:
        import torch

        env["torch_threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env


@dataclasses.dataclass(frozen=True)
class _Usage:
    """A snapshot of the clock and of the resource usage of this process and of the child
    processes it waited for (job pools, torchrun, launched jobs; not Slurm jobs elsewhere), plus
    the CPU of pool workers it does not wait for that noted theirs
    (:func:`asr_kd.resource_usage.note_detached_cpu`: stage 0's forkserver pool)."""

    wall: float
    cpu: float  # user + system seconds
    peak_rss_mb: float  # the largest resident set of this process or of any one such child, over its life

    @classmethod
    def now(cls) -> "_Usage":
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + detached_cpu_seconds()
        return cls(time.monotonic(), cpu, max(me.ru_maxrss, kids.ru_maxrss) / 1024)  # Linux reports KiB


def files_below(folders: Iterable[Path | str], skip: Iterable[Path] = ()) -> list[Path]:
    """Return, sorted, every file below ``folders`` other than ``skip``; symbolic links are neither
    listed nor followed (os.walk does not enter linked folders)."""
    skip = set(skip)
    files: list[Path] = []
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            files += [p for p in (Path(dirpath) / n for n in filenames) if not p.is_symlink() and p not in skip]
    return sorted(files)


def work_costs(start: _Usage, files: Iterable[Path], resumed: bool) -> dict[str, Any]:
    """Return what a stage's work cost since ``start`` (a record's ``resources``): ``wall_s``,
    ``cpu_s``, ``peak_rss_mb`` (see :class:`_Usage`), ``disk_bytes`` of ``files`` and ``resumed``
    (the times then cover only the last, resumed run)."""
    end = _Usage.now()
    return {"wall_s": round(end.wall - start.wall, 2), "cpu_s": round(end.cpu - start.cpu, 2), "peak_rss_mb": round(end.peak_rss_mb, 1),
            "disk_bytes": sum(p.stat().st_size for p in files), "resumed": resumed}


def describe_environment(record: "StageRecord | None") -> str:
    """Return the line a RESULTS.md section prints about where its stage ran ("" if unknown)."""
    if record is None or not record.environment:
        return ""
    return environment_text(record.environment, record.code_version)


def environment_text(environment_: Mapping[str, str], version: str) -> str:
    """Return the "Ran on ..." line of an :func:`environment` dict and a :func:`code_version`."""
    env = dict(environment_)
    head = [env.pop("cpu", "")] + ([f"GPU {env.pop('gpu')}"] if "gpu" in env else []) + [f"Python {env.pop('python', '?')}"]
    threads = env.pop("torch_threads", "")
    libs = ", ".join(f"{k} {v}" for k, v in env.items())
    return f"Ran on {', '.join(h for h in head if h)}; {libs}" + (f"; {threads} torch thread(s)" if threads else "") + f" ({version})."


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """The contents of a stage's ``provenance.json``."""

    stage: str
    config: dict[str, Any]
    config_fingerprint: str
    inputs: dict[str, str]
    outputs: dict[str, dict[str, Any]]
    fingerprint: str
    code_version: str = ""
    command: str = ""
    finished: str = ""
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)  # work_costs(); empty in older records

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> "StageRecord":
        """Read a record; DataError naming the file if it is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"{path} is not a readable stage record ({type(err).__name__}); delete it to redo that stage") from None


def read_record(folder: Path | str) -> StageRecord | None:
    """Return the record of the stage whose output folder is ``folder``, or None if unfinished."""
    path = Path(folder) / RECORD_NAME
    return StageRecord.read(path) if path.is_file() else None


def require_record(folder: Path | str, stage_hint: str) -> StageRecord:
    """Return the record of ``folder``; DataError naming ``stage_hint`` when it is missing."""
    rec = read_record(folder)
    if rec is None:
        raise DataError(f"{Path(folder)} holds no finished stage ({RECORD_NAME} is missing); run {stage_hint} first")
    return rec


def require_current(folder: Path | str, stage_hint: str, current: Mapping[str, str]) -> StageRecord:
    """Return the record of ``folder`` (:func:`require_record`); DataError naming ``stage_hint``
    when the record was made from another version of one of its inputs than the one there now
    (``current``: input key -> that input's fingerprint today): the input's stage was redone
    since, and whatever is built on ``folder`` would mix the two versions."""
    rec = require_record(folder, stage_hint)
    stale = stale_inputs(rec, current)
    if stale:
        raise DataError(f"{Path(folder)} was made from an earlier run of its input {stale[0]!r} (that stage was redone since); "
                        f"run {stage_hint} again first")
    return rec


def stale_inputs(rec: StageRecord, current: Mapping[str, str]) -> list[str]:
    """The keys of ``current`` (input key -> that input's fingerprint today) that ``rec`` names
    with another fingerprint: inputs redone since ``rec`` was made (keys it does not name pass)."""
    return [key for key, fp in current.items() if rec.inputs.get(key) is not None and rec.inputs[key] != fp]


def input_fingerprint(folder: Path | str, files: Iterable[Path | str] = ()) -> str:
    """Return the fingerprint of an input folder: its stage record's, or, for a folder that no
    stage of ours made (manifests prepared elsewhere), a hash of ``files`` that exist there
    (contents), so that changed inputs still redo what used them."""
    rec = read_record(folder)
    if rec is not None:
        return rec.fingerprint
    return fingerprint([[str(Path(f).name), file_sha256(f)] for f in files if Path(f).is_file()])


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old_config: Mapping[str, Any], new_config: Mapping[str, Any], old_inputs: Mapping[str, str],
                new_inputs: Mapping[str, str]) -> list[str]:
    """Return ``["key: old -> new", ...]`` for every differing config key and input fingerprint."""
    a, b = _flatten(old_config), _flatten(new_config)
    diffs = [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b)) if a.get(k, "?") != b.get(k, "?")]
    diffs += [f"input {k}: {old_inputs.get(k, '(absent)')} -> {new_inputs.get(k, '(absent)')}"
              for k in sorted(set(old_inputs) | set(new_inputs)) if old_inputs.get(k) != new_inputs.get(k)]
    return diffs


def check_outputs(root: Path, outputs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Return why the recorded outputs below ``root`` are not intact, or None if they are."""
    for rel, info in outputs.items():
        p = root / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{p} has {p.stat().st_size} bytes, {info['bytes']} were recorded (truncated or replaced)"
        if info["bytes"] <= HASH_ON_SKIP_BYTES and file_sha256(p) != info["sha256"]:
            return f"{p} differs from the recorded SHA-256 (changed since the stage finished)"
    return None


def on_change_policy(value: str | None = None) -> str:
    """Return the change policy: ``value``, else ``$ASR_KD_ON_CHANGE``, else "redo"."""
    policy = value or os.environ.get(ON_CHANGE_ENV) or "redo"
    if policy not in ON_CHANGE_CHOICES:
        raise ConfigError(f"{ON_CHANGE_ENV}={policy!r}: must be one of {ON_CHANGE_CHOICES}")
    return policy


class StageGuard:
    """The skip/redo/refuse rule of one stage whose outputs live in ``folder`` (and, if the stage
    writes elsewhere too, ``extra_folders``, emptied with it on a redo).

    Use::

        guard = StageGuard("s5_soft_targets", out, config=kd, inputs={"s4": teachers_fp})
        if guard.needs_work():
            ... work ...
            guard.finish(["cuts_train.jsonl.gz", "stats.json"])
        record = guard.record
    """

    def __init__(
        self, stage: str, folder: Path | str, config: Any, inputs: Mapping[str, str] | None = None, command: str = "",
        on_change: str | None = None, extra_folders: Iterable[Path | str] = (), redo_hint: str = "",
        adopt_unrecorded: bool = False,
    ) -> None:
        self.stage = stage
        # Absolute: outputs listed by walking the folder, or given relative to it, resolve alike.
        self.folder = Path(folder).absolute()
        self.extra_folders = [Path(p).absolute() for p in extra_folders]
        self.config = config_dict(config)
        self.config_fingerprint = fingerprint(self.config)
        self.inputs = dict(sorted((inputs or {}).items()))
        self.command = command
        self.on_change = on_change_policy(on_change)
        self.redo_hint = redo_hint
        # True: a folder with contents but neither record nor in-progress note (made before
        # records existed, or by hand) is left to the work to reuse or refuse, never emptied.
        self.adopt_unrecorded = adopt_unrecorded
        # Under torchrun every rank runs the stage; only rank 0 empties folders and writes records.
        self.is_main = not not_rank_0()
        self.record: StageRecord | None = None
        self._started: _Usage | None = None  # set when the work starts (needs_work returns True)
        self._resumed = False
        self._stale: str | None = None  # on another rank: the "finished" stamp of a record rank 0 will replace

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_NAME

    @property
    def in_progress_path(self) -> Path:
        return self.folder / IN_PROGRESS_NAME

    def _wanted(self) -> dict[str, Any]:
        return {"config_fingerprint": self.config_fingerprint, "inputs": self.inputs}

    def _empty_folders(self, why: str) -> None:
        log.info("%s: %s; emptying %s and redoing it", self.stage, why, ", ".join(str(f) for f in [self.folder, *self.extra_folders]))
        self.record_path.unlink(missing_ok=True)  # first: a crash below leaves an unfinished stage, never a stale record
        for folder in [self.folder, *self.extra_folders]:
            if folder.is_symlink():
                folder.unlink()
            elif folder.is_dir():
                for child in folder.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()

    def _remove_temporaries(self) -> None:
        """Delete what a killed writer left half-written: the ``.<name>.tmp*`` files and folders of
        :func:`asr_kd.utils.atomic_path` and the archive writer (never part of a finished output)."""
        for folder in [self.folder, *self.extra_folders]:
            for p in sorted(folder.rglob(TEMPORARY_PATTERN), reverse=True) if folder.is_dir() else []:
                log.info("%s: removing %s, left by an interrupted writer", self.stage, p)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def needs_work(self) -> bool:
        """Decide: return False when the finished record matches (``self.record`` is set), True
        when the work must run (the folders were emptied unless an interrupted run of the same
        settings is resumed). Raises ConfigError under ``on_change="stop"`` when settings differ."""
        old = read_record(self.folder)
        if not self.is_main:  # decide as rank 0 does, touch nothing
            matches = old is not None and not differences(old.config, self.config, old.inputs, self.inputs)
            if matches and check_outputs(self.folder, old.outputs) is not None:
                self._stale = old.finished  # rank 0 redoes it: wait_for_main waits for a newer record
                matches = False
            self.record = old if matches else None
            return not matches
        if old is not None:
            diffs = differences(old.config, self.config, old.inputs, self.inputs)
            if not diffs:
                broken = check_outputs(self.folder, old.outputs)
                if broken is None:
                    log.info("%s: up to date (%s matches its config and inputs); skipping%s", self.stage, self.record_path,
                             _older_code_note(old, self.folder))
                    self.record = old
                    return False
                self._empty_folders(broken)
            elif self.on_change == "stop":
                shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
                raise ConfigError(
                    f"{self.stage}: {self.folder} was made with other settings ({shown}); rerun with --on-change redo "
                    f"(run.sh; {ON_CHANGE_ENV}=redo for an asr-kd command) to redo it"
                    + (f" ({self.redo_hint})" if self.redo_hint else "") + ", or with the settings it was made with")
            else:
                self._empty_folders("settings differ from the finished run (" + "; ".join(diffs[:4]) + ")")
        else:
            wanted = self._wanted()
            try:
                resumable = json.loads(self.in_progress_path.read_text()) == wanted
            except (OSError, ValueError):
                resumable = False
            if resumable:
                log.info("%s: resuming an interrupted run with the same settings in %s", self.stage, self.folder)
                self._remove_temporaries()
                self._resumed = True
            elif self.folder.is_dir() and any(self.folder.iterdir()) and not self.adopt_unrecorded:
                self._empty_folders("unfinished outputs of other or unknown settings")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.in_progress_path, json.dumps(self._wanted()) + "\n")
        self._started = _Usage.now()
        return True

    def needs_work_on_rank_0(self) -> bool:
        """:meth:`needs_work` for work that rank 0 alone does (files every rank reads): on another
        rank of a torchrun job, wait for rank 0's record instead (as long as rank 0 works; torchrun
        ends the job if it fails) and return False."""
        if not self.needs_work():
            return False
        if self.is_main:
            return True
        self.wait_for_main(timeout=math.inf)
        return False

    def wait_for_main(self, timeout: float = 3600.0, disagree_after: float = 60.0) -> StageRecord:
        """On another rank of a torchrun job: wait for rank 0's record of these settings (what
        follows may read it: the next stage's inputs), set ``self.record`` and return it. Work
        that only rank 0 does (files every rank reads) is skipped by the other ranks with this.

        A finished record of other settings or inputs that stays for ``disagree_after`` seconds
        (rank 0 removes a stale record before it starts work, and a record is never there while
        it works) means the ranks disagree on what the stage is made from: a one-line error
        naming the differences, not an hour's wait."""
        deadline = time.monotonic() + timeout
        disagree_since: float | None = None
        while time.monotonic() < deadline:
            try:
                rec = read_record(self.folder) if self.record_path.is_file() else None
            except (DataError, OSError):  # being replaced or removed by rank 0 right now
                rec = None
            if rec is not None and rec.finished == self._stale:
                rec = None  # the record this rank found broken; rank 0 is redoing the stage
            if rec is not None and rec.config_fingerprint == self.config_fingerprint and rec.inputs == self.inputs:
                self.record = rec
                return rec
            if rec is None:
                disagree_since = None
            elif disagree_since is None:
                disagree_since = time.monotonic()
            elif time.monotonic() - disagree_since > disagree_after:
                diffs = differences(rec.config, self.config, rec.inputs, self.inputs)
                raise DataError(
                    f"{self.stage}: rank 0's record {self.record_path} differs from this rank's settings ({'; '.join(diffs[:4])}); "
                    "an upstream stage changed under the job: rerun the command")
            time.sleep(0.2)
        raise DataError(f"{self.stage}: rank 0 wrote no record to {self.record_path} within {timeout:.0f} s; see its log")

    def all_files(self) -> list[Path]:
        """Return every file below the stage's folder (not the record, not symbolic links): the
        outputs of a stage whose whole folder is its output. A writer's temporary (``.<name>.tmp*``,
        of another rank or process still writing) is never an output."""
        return [p for p in files_below([self.folder], {self.record_path, self.in_progress_path})
                if not any(fnmatch.fnmatch(part, TEMPORARY_PATTERN) for part in p.relative_to(self.folder).parts)]

    def finish(self, outputs: Iterable[Path | str]) -> StageRecord:
        """Record the finished stage: ``outputs`` (files, relative to the folder or absolute) are
        hashed, and ``.pt`` checkpoints must load (a truncated file stops here, before a record
        could vouch for it); the record is written last and atomically. Returns it. Another rank
        of a torchrun job hashes nothing (rank 0 may still be writing): it waits for rank 0's record."""
        if not self.is_main:
            record = self.wait_for_main()
            log.info("%s: finished; rank 0 wrote %s", self.stage, self.record_path)
            return record
        files: dict[str, dict[str, Any]] = {}
        for out in outputs:
            p = Path(out)
            p = p if p.is_absolute() else self.folder / p
            if not p.is_file():
                raise DataError(f"{self.stage}: expected output {p} was not written; the stage failed, rerun it")
            if p.suffix == ".pt":
                from asr_kd.train.checkpoint import load_checkpoint  # DataError naming the file if unreadable

                load_checkpoint(p)
            # Relative to the folder ("../mfcc/x" for an extra folder), so a copied tree still matches.
            files[os.path.relpath(p, self.folder)] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        record = StageRecord(
            stage=self.stage, config=self.config, config_fingerprint=self.config_fingerprint, inputs=self.inputs,
            outputs=dict(sorted(files.items())), fingerprint=fingerprint([self.config_fingerprint, self.inputs, files]),
            code_version=code_version(), command=self.command,
            finished=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), environment=environment(),
            resources=work_costs(self._started, files_below([self.folder, *self.extra_folders], [self.in_progress_path]), self._resumed)
            if self._started else {},
        )
        write_text_atomic(self.record_path, record.to_json())
        self.in_progress_path.unlink(missing_ok=True)
        self.record = record
        log.info("%s: finished; %s written", self.stage, self.record_path)
        return record
