"""Storage errors end a command with one line naming the path: a real full disk (a small tmpfs)
and a real read-only file system, no mocks. Needs mount(8) rights (root); skipped, with the
reason, where tmpfs cannot be mounted."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch

from asr_kd.bin.cli import main
from asr_kd.data.librispeech import prepare_manifests
from asr_kd.stages.provenance import IN_PROGRESS_NAME, RECORD_NAME
from asr_kd.train.checkpoint import save_checkpoint


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}); storage errors untested")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, nearly filled: about 16 KiB stay free."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=256k")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (240 * 1024))
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)  # lazy: a writer that failed may still hold a file open


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "ro,size=64k")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)  # lazy: a writer that failed may still hold a file open


def test_a_full_disk_ends_a_command_in_one_line_and_a_rerun_resumes(tone_corpus: Path, tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "manifests"
    prepare_manifests(tone_corpus, manifests, ["train-clean-100"])
    capsys.readouterr()  # only what the command prints counts
    argv = ["compute-features", "--manifest-dir", str(manifests), "--output-dir", str(small_disk), "--parts", "train-clean-100", "--set", "num_jobs=1"]
    assert main(argv) == 1
    err = capsys.readouterr().err  # progress bars and log lines, then the error
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"asr-kd compute-features: error: no space left on device writing {small_disk / 'fbank' / 'feats_train-clean-100.lca'} "
        "(free space there or point the command at another folder (e.g. another --exp, --data-dir or --output-dir))"
    )
    # Nothing half-written is left to be mistaken for a result: only the stage engine's note
    # that a run of these settings started, no record of a finished one.
    assert sorted(p.name for p in (small_disk / "fbank").iterdir()) == [IN_PROGRESS_NAME]
    (small_disk / "filler").unlink()
    assert main(argv) == 0
    assert (small_disk / "mfcc" / "cuts_train-clean-100.jsonl.gz").is_file() and (small_disk / "fbank" / RECORD_NAME).is_file()


def test_a_checkpoint_on_a_full_disk_names_the_file(small_disk: Path) -> None:
    target = small_disk / "exp" / "checkpoints" / "step-000000010.pt"
    # torch's zip writer fails with "unexpected pos ..." (a RuntimeError without errno) here.
    with pytest.raises(OSError) as err:
        save_checkpoint(target, {"model": {"w": torch.zeros(100_000)}})
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(target))
    assert list(target.parent.iterdir()) == []


def test_a_read_only_folder_ends_a_command_in_one_line(tone_corpus: Path, read_only_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = read_only_disk / "manifests"
    assert main(["prepare-manifests", "--corpus-dir", str(tone_corpus), "--output-dir", str(out), "--parts", "train-clean-100"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"asr-kd prepare-manifests: error: read-only file system: cannot write {out} "
        "(point the command at another folder (e.g. another --exp, --data-dir or --output-dir))"
    )


def test_training_graphs_on_a_full_disk_name_the_archive(small_disk: Path) -> None:
    from asr_kd.gmm.align import GraphStore
    from asr_kd.kaldi import kaldifst

    graph = kaldifst.StdVectorFst()
    state = graph.add_state()
    graph.start = state
    for _ in range(2000):  # about 40 KiB per graph
        nxt = graph.add_state()
        graph.add_arc(state, kaldifst.StdArc(1, 1, 0.5, nxt))
        state = nxt
    graph.set_final(state, 0.0)
    store = GraphStore(small_disk / "graphs")
    (small_disk / "graphs").mkdir()
    # Kaldi's table writer says only "Write failed" (a RuntimeError); the store names the file.
    with pytest.raises(OSError) as err:
        store.write(range(0, 10), {i: graph for i in range(10)})
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(small_disk / "graphs" / "graphs.0-10.ark"))



def test_a_log_file_on_a_full_device_stops_with_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    """/dev/full takes every write and fails it with ENOSPC, as a full disk does."""
    import logging

    from asr_kd.utils import setup_logging

    setup_logging(Path("/dev/full"))
    try:
        for i in range(3):
            logging.getLogger("asr_kd.test").info("record %d", i)
    finally:
        setup_logging()  # back to the console only
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert err.count("log file /dev/full: No space left on device; logging there stopped (the console log goes on)") == 1
    assert "record 2" in err  # the console log went on


def test_tensorboard_on_a_full_disk_stops_logging_and_training_goes_on(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    from asr_kd.train.tensorboard import TensorBoardLog

    board = TensorBoardLog(small_disk / "exp" / "tensorboard")
    for step in range(20_000):  # ~1 MB of events: far more than the 16 KiB left
        board.add_scalar("train/loss", 1.0 / (step + 1), step)
        if step % 1000 == 0:
            board.flush()
    board.close()
    assert board.stopped is not None and "No space left on device" in board.stopped and str(small_disk / "exp" / "tensorboard") in board.stopped
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard logging stopped" in r.getMessage()]
    assert len(warnings) == 1
