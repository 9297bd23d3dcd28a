"""DDP under ``torchrun --nproc_per_node 2`` (gloo, CPU) on the ``tiny`` DNN: the ranks see
disjoint batches and end with identical weights, and only rank 0 writes the experiment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lhotse import CutSet

from tests.conftest import REPO_ROOT
from tests.unit.test_train_corpus import NUM_CLASSES, FrameCorpus, make_frame_corpus

# Runs in each of the two processes: trains through the library entry point, recording which cuts
# each step of this rank used and, at the end, this rank's weights.
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from asr_kd.config import TrainConfig
    from asr_kd.models.dnn import dnn_preset
    from asr_kd.train.frame_classifier import frame_cross_entropy, train_frame_classifier

    train_cuts, dev_cuts, train_cmvn, dev_cmvn, exp, out = sys.argv[1:7]
    rank = int(os.environ["RANK"])
    seen, holder = [], {}

    def recording_loss(model, batch):
        holder["model"] = model
        seen.append(batch["cut_ids"])
        return frame_cross_entropy(model, batch)

    cfg = TrainConfig(num_epochs=2, max_duration=4.5, num_buckets=2, warmup_steps=2, lr=3e-3,
                      checkpoint_every_steps=2, log_every_steps=1, seed=7)
    result = train_frame_classifier(train_cuts, dev_cuts, train_cmvn, dev_cmvn, %d, dnn_preset("tiny"), cfg, exp,
                                    compute_loss=recording_loss)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"batches": seen, "history": result.state.history, "world": os.environ["WORLD_SIZE"]}, f)
    torch.save(holder["model"].module.state_dict(), f"{out}/rank{rank}.pt")
    """
    % NUM_CLASSES
)


def _descendants(pid: int) -> list[int]:
    """Return the process ids below ``pid`` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_torchrun(cmd: list[str], env: dict[str, str], timeout: int) -> None:
    """Run a torchrun job; fail the test with the end of its stderr if it fails or hangs."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own: kill them by pid, then torchrun.
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s: {stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]


def prepare_driver(tmp_path: Path, text: str, train_speakers: tuple[int, ...] = (11, 12, 13, 14)) -> tuple[FrameCorpus, Path, Path, dict[str, str]]:
    """Return ``(corpus, driver script, empty output folder, environment)`` of a torchrun test."""
    corpus = make_frame_corpus(tmp_path / "data", train_speakers=train_speakers)
    driver = tmp_path / "driver.py"
    driver.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    return corpus, driver, out, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


@pytest.mark.slow
def test_two_ranks_see_disjoint_batches_and_agree_on_weights(tmp_path: Path) -> None:
    corpus, driver, out, env = prepare_driver(tmp_path, DRIVER)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(driver), str(corpus.train_cuts), str(corpus.dev_cuts), str(corpus.train_cmvn), str(corpus.dev_cmvn),
        str(tmp_path / "exp"), str(out),
    ]
    run_torchrun(cmd, env, timeout=180)

    runs = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in runs] == ["2", "2"]
    b0, b1 = runs[0]["batches"], runs[1]["batches"]
    assert len(b0) == len(b1) > 0  # lockstep: the same number of steps on both ranks
    all_ids = set(CutSet.from_file(corpus.train_cuts).ids)
    for x, y in zip(b0, b1):
        assert not set(x) & set(y)  # each step's two batches are disjoint
    # Over each epoch (2 epochs) the two ranks together cover the training set exactly once.
    per_epoch = len(b0) // 2
    for e in range(2):
        ids = [i for b in b0[e * per_epoch:(e + 1) * per_epoch] + b1[e * per_epoch:(e + 1) * per_epoch] for i in b]
        assert sorted(ids) == sorted(all_ids)
    w0, w1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert runs[0]["history"] == runs[1]["history"] and len(runs[0]["history"]) == 2
    # Only rank 0 wrote the experiment, and its final checkpoint holds the ranks' common weights.
    exp = tmp_path / "exp"
    final = torch.load(exp / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], w0[k]) for k in w0)
    assert len(list((exp / "tensorboard").iterdir())) == 1


@pytest.mark.slow
def test_ctc_teachers_under_torchrun_split_the_data_and_share_the_guide(tiny_stage2, tmp_path: Path) -> None:
    # The CTC path through its command line under torchrun: the independent set (teachers 0 and 1,
    # two DDP models one after the other in the same processes), then the guided set, whose
    # teacher 0 is the independent set's (the guide, linked by every rank: one wins) and whose
    # teacher 1 is trained with guided CTC. Each run is a DDP job of two gloo ranks.
    data, _ = tiny_stage2
    exp = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    conf = REPO_ROOT / "recipes" / "librispeech" / "conf"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "asr_kd",
        "ctc-train-teachers", "--data-dir", str(data), "--exp-dir", str(exp), "--ctc-config", str(conf / "ctc_tiny.yaml"),
        "--config", str(conf / "ctc_train_tiny.yaml"), "--set", "num_epochs=1",
        "--set", "max_steps=0", "--set", "device=cpu", "--num-threads", "1",
    ]
    run_torchrun(cmd, env, timeout=300)
    run_torchrun([*cmd, "--ctc-set", "guide_weight=1.0"], env, timeout=300)
    root = exp / "ctc" / "phone"
    guided = root / "teachers_guided1"
    assert (guided / "teacher0").is_symlink() and (guided / "teacher0").resolve() == (root / "teachers" / "teacher0").resolve()
    # One epoch over two ranks: each step consumed two batches, so the steps are about half of
    # the batches one process would take (the train sampler of ctc_train_tiny.yaml: 60 s batches).
    from asr_kd.data.frames import make_sampler

    cuts = CutSet.from_file(data / "fbank" / "cuts_train-clean-100.jsonl.gz")
    single = len(list(make_sampler(cuts, 60.0, shuffle=True, seed=0, bucketing=False)))
    for teacher in (root / "teachers" / "teacher0", guided / "teacher1"):
        state = torch.load(teacher / "final.pt", weights_only=True)["train_state"]
        assert single >= 4 and abs(state["step"] - single / 2) <= 1, (state["step"], single)
    assert "rank 1 of 2" in (exp / "log" / "ctc_train_teachers.log").read_text()


# Stage 5's inference under torchrun (asr_kd/kd/sharded_targets.py): rank 0 merges, the other rank
# serves; first a request-less round (the stage was up to date), then the posteriors of every cut.
SHARDED_DRIVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from lhotse import CutSet
    from asr_kd.data.features import CmvnStats
    from asr_kd.kd.sharded_targets import ShardedPosteriors, serve_posteriors
    from asr_kd.models.dnn import SplicedDnn, dnn_preset
    from asr_kd.train.ddp import init_distributed

    cuts_path, cmvn_path, out = sys.argv[1:4]
    torch.set_num_threads(1)

    def load():
        models = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            models.append(SplicedDnn(dnn_preset("tiny"), 7).eval())
        return models, CutSet.from_file(cuts_path), CmvnStats.load(cmvn_path)

    def work(log_probs):  # the posteriors themselves, as every rank sends them
        return {"log_probs": log_probs.numpy()}

    info = init_distributed("cpu")
    if info.rank == 0:
        ShardedPosteriors(info).release()
        merged = ShardedPosteriors(info)
        got = {cut.id: arrays["log_probs"] for cut, arrays in merged(*load(), 2.0, "arithmetic", 4.0, work=work)}
        merged.release()  # a no-op after a request
        np.savez(f"{out}/merged.npz", order=np.array(list(got)), **got)
    else:
        assert serve_posteriors(load, 2.0, "arithmetic", 4.0, info, lambda shared: work) == 0
        scored = serve_posteriors(load, 2.0, "arithmetic", 4.0, info, lambda shared: work)
        open(f"{out}/rank{info.rank}.txt", "w").write(str(scored))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stage5_posteriors_under_torchrun_equal_the_single_process_ones(tmp_path: Path) -> None:
    import numpy as np

    from asr_kd.data.features import CmvnStats
    from asr_kd.kd.ensemble import ensemble_log_posteriors
    from asr_kd.models.dnn import SplicedDnn, dnn_preset

    corpus, driver, out, env = prepare_driver(tmp_path, SHARDED_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           str(corpus.train_cuts), str(corpus.train_cmvn), str(out)]
    run_torchrun(cmd, env, timeout=240)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            models.append(SplicedDnn(dnn_preset("tiny"), 7).eval())
        cuts = CutSet.from_file(corpus.train_cuts)
        single = {c.id: lp.numpy() for c, lp in ensemble_log_posteriors(models, cuts, CmvnStats.load(corpus.train_cmvn), 2.0, "arithmetic", 4.0)}
    finally:
        torch.set_num_threads(before)
    merged = np.load(out / "merged.npz", allow_pickle=False)
    assert list(merged["order"]) == list(cuts.ids) == list(single)  # manifest order, every cut once
    for cut_id, lp in single.items():
        assert np.array_equal(merged[cut_id], lp), cut_id  # the same batches: bit-identical posteriors
    # Rank 1 scored the odd batches: a real share, neither nothing nor everything.
    scored = int((out / "rank1.txt").read_text())
    assert 0 < scored < len(cuts), scored


MISMATCH_DRIVER = textwrap.dedent(
    """
    import sys
    import torch
    from lhotse import CutSet
    from asr_kd.data.features import CmvnStats
    from asr_kd.kd.sharded_targets import ShardedPosteriors, serve_posteriors
    from asr_kd.models.dnn import SplicedDnn, dnn_preset
    from asr_kd.train.ddp import init_distributed

    cuts_path, cmvn_path = sys.argv[1:3]

    def load():
        return [SplicedDnn(dnn_preset("tiny"), 7).eval()], CutSet.from_file(cuts_path), CmvnStats.load(cmvn_path)

    info = init_distributed("cpu")
    if info.rank == 0:
        list(ShardedPosteriors(info, "top_k=20")(*load(), 2.0, "arithmetic", 4.0, work=lambda lp: {"n": lp[:1].numpy()}))
    else:
        serve_posteriors(load, 2.0, "arithmetic", 4.0, info, make_work=lambda shared: (lambda lp: {"n": lp[:1].numpy()}), settings="top_k=500")
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stage5_ranks_started_with_other_settings_stop_with_one_line(tmp_path: Path) -> None:
    # Every rank builds its per-cut work from its own kd config: a rank whose settings are not rank 0's must not
    # send targets made otherwise. It stops with a DataError, and torchrun ends the job (no hang).
    corpus, driver, _out, env = prepare_driver(tmp_path, MISMATCH_DRIVER, train_speakers=(11, 12))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
                           str(corpus.train_cuts), str(corpus.train_cmvn)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 1 was started with settings 'top_k=500', rank 0 with 'top_k=20'; every rank must run the same command" in proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_multi_node_command_form_runs_as_two_nodes_of_one_process(tmp_path: Path) -> None:
    # README's multi-node form (torchrun --nnodes 2 --rdzv_backend c10d --rdzv_endpoint HOST:PORT
    # --rdzv_id ID, the same command on every node) with both "nodes" on this machine: two torchrun agents meet at
    # the endpoint and their processes form one gloo group of 2, here stage 5's sharded inference.
    corpus, driver, out, env = prepare_driver(tmp_path, SHARDED_DRIVER, train_speakers=(11, 12))
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                                "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "asr-kd-test", str(driver),
                                str(corpus.train_cuts), str(corpus.train_cmvn), str(out)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
              for _node in range(2)]
    try:
        errors = [a.communicate(timeout=240)[1] for a in agents]
    finally:
        for a in (a for a in agents if a.poll() is None):  # hung: kill its workers, then the agent
            for pid in [*_descendants(a.pid), a.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert [a.returncode for a in agents] == [0, 0], [e[-3000:] for e in errors]
    import numpy as np

    merged = np.load(out / "merged.npz", allow_pickle=False)
    assert list(merged["order"]) == list(CutSet.from_file(corpus.train_cuts).ids)
    assert 0 < int((out / "rank1.txt").read_text()) < len(merged["order"])
