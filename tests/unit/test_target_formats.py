"""Compact soft-target formats (asr_kd.kd.target_formats, read back by asr_kd.data.stored_targets):
uint16 ids + uint8 log-probabilities, and residual VQ codes of the whole posterior."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, Recording, load_manifest

from asr_kd.config import KdConfig
from asr_kd.data.array_archive import ARCHIVE_NAME
from asr_kd.data.stored_targets import (
    LOGPROB_STEP, SOFT_CODEBOOK, SOFT_CODES, SOFT_DECODE_K, SOFT_TAIL, DecodedTargetCache, collate_soft_targets, decode_codes, dequantise_log_probs,
    has_soft_targets, load_soft_targets, load_targets, quantise_log_probs,
)
from asr_kd.data.frames import FrameDataset
from asr_kd.errors import ConfigError
from asr_kd.kd.soft_targets import kl_bucketed_vs_full, kl_stored_vs_full, store_soft_targets, store_target_arrays, topk_compress, topk_mass
from asr_kd.kd.target_formats import ResidualQuantiser, encode_topk, sample_for_fitting, storage_bytes_per_frame
from asr_kd.stages.layout import soft_targets_name

NUM_CLASSES = 60
K = 5


def _posteriors(seed: int, frames: int, classes: int = NUM_CLASSES, scale: float = 4.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(frames, classes, generator=g, dtype=torch.float64), -1).numpy()


def _clustered_posteriors(seed: int, frames: int, classes: int = NUM_CLASSES, prototypes: int = 12) -> np.ndarray:
    """Posteriors like an acoustic model's: each frame near one of a few senone-like prototypes."""
    g = torch.Generator().manual_seed(seed)
    centres = 5.0 * torch.randn(prototypes, classes, generator=g, dtype=torch.float64)
    which = torch.randint(prototypes, (frames,), generator=g)
    return torch.softmax(centres[which] + 0.5 * torch.randn(frames, classes, generator=g, dtype=torch.float64), -1).numpy()


@pytest.fixture(scope="module")
def fbank_cuts(tmp_path_factory) -> CutSet:
    """Cuts of real (noise) audio with real fbank features."""
    root = tmp_path_factory.mktemp("cuts")
    rng = np.random.default_rng(0)
    recordings = []
    for i, seconds in enumerate((0.53, 1.0, 1.37)):
        path = root / f"utt{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32), 16000)
        recordings.append(Recording.from_file(path, recording_id=f"spk0-utt{i}"))
    cuts = CutSet.from_manifests(recordings=recordings)
    with LilcomChunkyWriter(root / "feats") as writer:
        return CutSet.from_cuts(c.compute_and_store_features(Fbank(FbankConfig(num_filters=40)), writer) for c in cuts)


def test_log_probability_quantisation_keeps_each_probability_within_its_step():
    p = _posteriors(0, 200)
    ids, probs = topk_compress(p, K)
    kept = np.take_along_axis(p, ids.astype(np.int64), 1)
    kept = kept / kept.sum(1, keepdims=True)
    q = quantise_log_probs(kept)
    assert q.dtype == np.uint8
    back = np.exp(-q.astype(np.float64) * LOGPROB_STEP)
    # Before renormalising, each value is within half a step (1/32 nat) of the original.
    assert np.all(np.abs(np.log(back) - np.log(kept)) <= LOGPROB_STEP / 2 + 1e-9)
    restored = dequantise_log_probs(q)
    assert restored.dtype == np.float32 and np.allclose(restored.sum(1), 1.0, atol=1e-5)
    # After renormalising, within 2 half-steps: about 6.5% of each probability at most.
    assert np.all(np.abs(np.log(restored) - np.log(kept)) <= LOGPROB_STEP + 1e-6)
    assert quantise_log_probs(np.array([1.0, 1e-12]))[1] == 255  # far below the range: the last step


def test_compact_top_k_round_trips_through_storage_at_half_the_bytes(fbank_cuts, tmp_path):
    targets = {c.id: topk_compress(_posteriors(i, c.num_frames), K) for i, c in enumerate(fbank_cuts)}
    sizes = {}
    for storage in ("int32-fp16", "uint16-uint8"):
        stored = store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / storage, K, temperature=1.0,
                                    storage=storage)
        stored.to_file(tmp_path / f"{storage}.jsonl.gz")
        sizes[storage] = (tmp_path / storage / ARCHIVE_NAME).stat().st_size
        for cut in load_manifest(tmp_path / f"{storage}.jsonl.gz"):
            ids, probs = load_soft_targets(cut)
            want_ids, want_probs = targets[cut.id]
            assert np.array_equal(ids.astype(np.int32), want_ids)
            assert np.allclose(probs.sum(1), 1.0, atol=1e-3)
            tolerance = 1e-3 if storage == "int32-fp16" else 0.07
            assert np.allclose(probs.astype(np.float64), want_probs.astype(np.float64), rtol=tolerance, atol=1e-4)
            if storage == "uint16-uint8":
                assert ids.dtype == np.uint16 and probs.dtype == np.float32
    frames = sum(c.num_frames for c in fbank_cuts)
    payload = {s: storage_bytes_per_frame(s, K, 8) * frames for s in sizes}
    assert payload == {"int32-fp16": 30 * frames, "uint16-uint8": 15 * frames}
    # The archive is the payload plus one .npy header per array: the compact one is about half.
    assert sizes["uint16-uint8"] - payload["uint16-uint8"] == pytest.approx(sizes["int32-fp16"] - payload["int32-fp16"], abs=64)


def test_uint16_ids_refuse_more_than_65536_senones():
    with pytest.raises(ConfigError, match="uint16-uint8"):
        encode_topk(np.array([[70_000]]), np.array([[1.0]]), "uint16-uint8")
    with pytest.raises(ConfigError, match="kd.storage"):
        KdConfig(storage="int4")
    with pytest.raises(ConfigError, match="kd.codebooks"):
        KdConfig(storage="rvq", codebooks=0)


def test_residual_codes_approach_the_posteriors_as_codebooks_are_added():
    frames = torch.from_numpy(_clustered_posteriors(0, 3500))
    train, held_out = frames[:3000], frames[3000:]
    kls = []
    for books in (1, 2, 4):
        quantiser = ResidualQuantiser.fit(train, books, seed=0)
        assert quantiser.codebooks.shape == (books, 256, NUM_CLASSES) and quantiser.codebooks.dtype == np.float16
        codes = quantiser.encode(held_out)
        assert codes.dtype == np.uint8 and codes.shape == (500, books)
        ids, probs = quantiser.decode(codes, NUM_CLASSES)
        kls.append(float(kl_stored_vs_full(held_out.numpy(), ids, probs).mean()))
    assert kls[0] > kls[1] > kls[2]
    # A broken quantiser (codes ignored, or decoding to the mean posterior) stays near the KL of
    # the mean: here far above what 4 codebooks reach.
    mean = held_out.mean(0, keepdim=True).expand_as(held_out).numpy()
    mean_ids, mean_probs = topk_compress(mean, NUM_CLASSES)
    assert kls[2] < 0.2 * float(kl_stored_vs_full(held_out.numpy(), mean_ids, mean_probs).mean())


def test_quantiser_converts_its_codebooks_once_and_decodes_as_the_students_do():
    frames = torch.from_numpy(_clustered_posteriors(1, 600))
    quantiser = ResidualQuantiser.fit(frames[:500], 2, seed=0, iterations=3)
    books = quantiser.books()
    assert books is quantiser.books() and books.dtype == torch.float32  # once per stage, not once per cut
    assert np.array_equal(books.numpy(), quantiser.codebooks.astype(np.float32))
    codes = quantiser.encode(frames[500:])
    ids, probs = quantiser.decode(codes, 20)
    student_ids, student_probs = decode_codes(codes, quantiser.codebooks, 20)  # what a student reads from storage
    assert np.array_equal(ids, student_ids) and np.array_equal(probs, student_probs)
    assert ResidualQuantiser(quantiser.codebooks) == quantiser  # the cached tensor is not part of its value


def test_codes_stored_on_cuts_decode_to_the_quantisers_top_k(fbank_cuts, tmp_path, monkeypatch):
    posteriors = {c.id: torch.from_numpy(_clustered_posteriors(i, c.num_frames)) for i, c in enumerate(fbank_cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 3, seed=0)
    stored = store_target_arrays(fbank_cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / "rvq",
                                 shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: K})
    stored.to_file(tmp_path / "rvq.jsonl.gz")
    cuts = load_manifest(tmp_path / "rvq.jsonl.gz").shuffle(random.Random(0))
    # The codebook is stored once for all cuts.
    assert len({c.custom[SOFT_CODEBOOK].storage_key for c in cuts}) == 1
    for cut in cuts:
        assert has_soft_targets(cut) and cut.custom[SOFT_CODES].shape == [cut.num_frames, 3]
        ids, probs = load_soft_targets(cut)
        want_ids, want_probs = quantiser.decode(quantiser.encode(posteriors[cut.id]), K)
        assert np.array_equal(ids, want_ids) and np.allclose(probs, want_probs)
        assert ids.shape == (cut.num_frames, K)
    batch_ids, batch_probs = collate_soft_targets(list(cuts))
    assert batch_ids.shape[2] == K and torch.allclose(batch_probs.sum(-1)[batch_probs.sum(-1) > 0], torch.tensor(1.0), atol=1e-5)

    # Decoded once, then served from memory with the same values; read-only, since every later
    # batch shares the arrays.
    cache = DecodedTargetCache()
    for _ in range(2):
        ids_c, probs_c = collate_soft_targets(list(cuts), cache=cache)
        assert torch.equal(ids_c, batch_ids) and torch.equal(probs_c, batch_probs)
    frames = sum(c.num_frames for c in cuts)
    assert len(cache) == len(cuts) and cache.bytes == frames * K * (4 + 4)
    first = cache.load(cuts[0])
    assert cache.load(cuts[0])[0] is first[0] and not first[0].flags.writeable and not first[1].flags.writeable
    # A truncated cut is another entry, with its own frames.
    short = cuts[0].truncate(duration=0.3)
    assert np.array_equal(cache.load(short)[0], load_soft_targets(short)[0]) and len(cache) == len(cuts) + 1
    # A bound that holds only the first cut: the others are decoded each time.
    small = DecodedTargetCache(max_bytes=cuts[0].num_frames * K * 8)
    collate_soft_targets(list(cuts), cache=small)
    assert len(small) == 1 and small.load(cuts[0])[0] is small.load(cuts[0])[0] and small.load(cuts[1])[0] is not small.load(cuts[1])[0]
    # The frame dataset keeps its own cache, but not inside a loader's worker process, which ends
    # with its epoch.
    dataset = FrameDataset(None, labels_name=None)
    assert torch.equal(dataset[CutSet.from_cuts(cuts)]["soft_probs"], probs_c) and len(dataset.target_cache) == len(cuts)
    in_worker = FrameDataset(None, labels_name=None)
    loader = torch.utils.data.DataLoader(in_worker, sampler=[CutSet.from_cuts(cuts)] * 2, batch_size=None, num_workers=1)
    for batch in loader:
        assert torch.equal(batch["soft_probs"], probs_c)
    assert len(in_worker.target_cache) == 0
    # The parent's copy above stays empty either way; inside a worker (as get_worker_info says)
    # the cache keeps nothing.
    import asr_kd.data.stored_targets as stored_targets

    monkeypatch.setattr(stored_targets, "get_worker_info", lambda: object())
    worker_cache = DecodedTargetCache()
    assert np.array_equal(worker_cache.load(cuts[0])[1], first[1]) and len(worker_cache) == 0 and worker_cache.bytes == 0


def test_codes_decoded_to_every_senone_come_dense_in_float16(fbank_cuts, tmp_path):
    # soft_decode_k >= the senones (the recipe's default on mini): float16 probabilities in
    # senone order and no ids, in memory and in batches; the values are the top-k decoding's.
    posteriors = {c.id: torch.from_numpy(_clustered_posteriors(i, c.num_frames)) for i, c in enumerate(fbank_cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 3, seed=0)
    for tail in (False, True):  # with every senone kept, renormalising and keeping the shares are the same
        stored = store_target_arrays(fbank_cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / f"dense{tail}",
                                     shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: 500, SOFT_TAIL: tail})
        cuts = list(stored)
        for cut in cuts:
            ids, probs = load_targets(cut)
            assert ids is None and probs.dtype == np.float16 and probs.shape == (cut.num_frames, NUM_CLASSES)
            top_ids, top_probs = quantiser.decode(quantiser.encode(posteriors[cut.id]), NUM_CLASSES)
            want = np.zeros_like(top_probs)
            np.put_along_axis(want, top_ids.astype(np.int64), top_probs, axis=1)
            assert np.allclose(probs, want, rtol=1e-3, atol=1e-7) and np.allclose(probs.astype(np.float64).sum(1), 1.0, atol=2e-3)
            # The public reader still gives k ids: every senone, in order.
            all_ids, same = load_soft_targets(cut)
            assert all_ids.shape == probs.shape and (all_ids == np.arange(NUM_CLASSES)).all() and np.array_equal(same, probs)
        cache = DecodedTargetCache()
        ids_b, probs_b = collate_soft_targets(cuts, cache=cache)
        frames = sum(c.num_frames for c in cuts)
        assert ids_b is None and probs_b.dtype == torch.float32 and probs_b.shape == (len(cuts), max(c.num_frames for c in cuts), NUM_CLASSES)
        assert cache.bytes == frames * NUM_CLASSES * 2  # a quarter of an int32 id and a float32 probability per senone
        for b, cut in enumerate(cuts):
            n = cut.num_frames
            assert torch.equal(probs_b[b, :n], torch.from_numpy(load_targets(cut)[1]).float()) and (probs_b[b, n:] == 0).all()
        again = collate_soft_targets(cuts, num_frames=7, cache=cache)
        assert again[0] is None and torch.equal(again[1], probs_b[:, :7]) and len(cache) == len(cuts)
        assert FrameDataset(None, labels_name=None)[CutSet.from_cuts(cuts)]["soft_ids"] is None
    # A dense cut batched with top-k cuts of k = C gets its ids written out in senone order.
    top = store_target_arrays(fbank_cuts[:1], ((cid, encode_topk(*topk_compress(posteriors[cid].numpy(), NUM_CLASSES), "int32-fp16"))
                                               for cid in [fbank_cuts[0].id]), tmp_path / "topk")
    mixed_ids, mixed_probs = collate_soft_targets([top[0], cuts[1]])
    n = cuts[1].num_frames
    assert (mixed_ids[1, :n] == torch.arange(NUM_CLASSES)).all() and torch.equal(mixed_probs[1, :n], probs_b[1, :n])
    dense_p = torch.zeros(mixed_probs.shape[1], NUM_CLASSES).scatter_(1, mixed_ids[0], mixed_probs[0])
    assert torch.allclose(dense_p[: top[0].num_frames], posteriors[top[0].id].float(), atol=1e-3)


@pytest.mark.parametrize("decode_k, tail", [(K, False), (K, True), (500, False)])
def test_codes_left_in_the_batch_decode_where_the_loss_runs_to_the_loaders_targets(fbank_cuts, tmp_path, decode_k, tail, monkeypatch):
    # A student on a GPU gets its batches' rvq codes undecoded (FrameDataset codes_in_batch) and
    # decodes them on the device: the targets and the loss must be those of the loader's decoding,
    # bit for bit on the CPU, padding included (three cuts of different lengths in one batch).
    from asr_kd.data.stored_targets import SOFT_CODE_LENGTHS, decode_batch_codes
    from asr_kd.kd.student import StoredDistillationLoss
    from asr_kd.models.dnn import SplicedDnn, dnn_preset

    posteriors = {c.id: torch.from_numpy(_clustered_posteriors(i, c.num_frames)) for i, c in enumerate(fbank_cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 3, seed=0)
    stored = store_target_arrays(fbank_cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / "rvq",
                                 shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: decode_k, SOFT_TAIL: tail})
    batch_cuts = CutSet.from_cuts(list(stored))
    plain = FrameDataset(None, labels_name=None)[batch_cuts]
    coded = FrameDataset(None, labels_name=None, codes_in_batch=True)[batch_cuts]
    assert "soft_ids" not in coded and coded[SOFT_CODES].dtype == torch.uint8 and coded[SOFT_CODES].shape[2] == 3
    assert coded[SOFT_CODE_LENGTHS].tolist() == [c.num_frames for c in batch_cuts]
    ids, probs = decode_batch_codes(coded)
    if decode_k >= NUM_CLASSES:
        assert ids is None and plain["soft_ids"] is None
    else:
        assert torch.equal(ids, plain["soft_ids"])
    assert probs.dtype == torch.float32 and torch.equal(probs, plain["soft_probs"])
    # Decoded a few frames at a time (chunks that end inside a cut and across cuts): the same.
    import asr_kd.data.stored_targets as stored_targets

    monkeypatch.setattr(stored_targets, "DECODE_CHUNK_FRAMES", (7, 7))
    chunked_ids, chunked_probs = decode_batch_codes(coded)
    assert torch.equal(chunked_probs, probs) and (chunked_ids is None if ids is None else torch.equal(chunked_ids, ids))
    monkeypatch.undo()
    # Through a DataLoader worker process (conf/train_paper.yaml reads with 4): the codes, their
    # lengths and the codebook's manifest cross the process boundary and decode the same.
    from asr_kd.data.frames import make_loader

    (from_worker,) = list(make_loader(FrameDataset(None, labels_name=None, codes_in_batch=True), [batch_cuts], num_workers=1))
    worker_ids, worker_probs = decode_batch_codes(from_worker)
    assert torch.equal(worker_probs, probs) and (worker_ids is None if ids is None else torch.equal(worker_ids, ids))
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    kd = KdConfig(temperature=2.0, hard_weight=0.0, tail="bucket" if tail else "renormalise")
    loss_plain, _ = StoredDistillationLoss(kd)(model, plain)
    loss_coded, _ = StoredDistillationLoss(kd)(model, coded)
    assert torch.equal(loss_plain, loss_coded) and float(loss_plain.detach()) > 0
    # A batch that mixes coded cuts with top-k ones is decoded by the loader, as before.
    k = min(decode_k, NUM_CLASSES)
    top = store_target_arrays(fbank_cuts[:1], ((cid, encode_topk(*topk_compress(posteriors[cid].numpy(), k), "int32-fp16"))
                                               for cid in [fbank_cuts[0].id]), tmp_path / "topk")
    mixed_cuts = CutSet.from_cuts([top[0], list(stored)[1]])
    mixed = FrameDataset(None, labels_name=None, codes_in_batch=True)[mixed_cuts]
    assert SOFT_CODES not in mixed and torch.equal(mixed["soft_probs"], FrameDataset(None, labels_name=None)[mixed_cuts]["soft_probs"])


def test_fitting_sample_is_seeded_and_bounded(fbank_cuts):
    cuts = list(fbank_cuts)
    a, b = sample_for_fitting(cuts, 500, seed=3), sample_for_fitting(cuts, 500, seed=3)
    assert [c.id for c in a] == [c.id for c in b] and len(a) == len(cuts)  # 3 short cuts fit the budget
    # Many classes shrink the budget to one cut at least.
    assert len(sample_for_fitting(cuts, 10**9)) == 1


def test_soft_target_folders_are_named_by_their_format():
    assert soft_targets_name(4, "arithmetic", 1.0, 20) == "teachers4_arithmetic_T1_k20"
    assert soft_targets_name(4, "arithmetic", 1.0, 5, "uint16-uint8") == "teachers4_arithmetic_T1_k5_u16u8"
    assert soft_targets_name(4, "arithmetic", 1.0, 20, "rvq", 8) == "teachers4_arithmetic_T1_k20_rvq8"
    assert soft_targets_name(4, "arithmetic", 2.0, 20, "rvq", 8, "bucket") == "teachers4_arithmetic_T2_k20_rvq8_bucket"


def test_bucket_targets_keep_the_ensembles_own_probabilities_in_every_format(fbank_cuts, tmp_path):
    # kd.tail=bucket: rows are stored as kept (not renormalised) and read back so, from cuts
    # marked soft_tail; each row sums to the mass it keeps, which the loss makes the rest of.
    full = {c.id: _posteriors(i, c.num_frames, scale=1.5) for i, c in enumerate(fbank_cuts)}  # flat: top 5 keep well under 1
    for storage in ("int32-fp16", "uint16-uint8"):
        targets = {cid: topk_compress(p, K, renormalise=False) for cid, p in full.items()}
        arrays = ((cid, encode_topk(*t, storage)) for cid, t in targets.items())
        stored = store_target_arrays(fbank_cuts, arrays, tmp_path / storage, custom={SOFT_TAIL: True})
        stored.to_file(tmp_path / f"{storage}.jsonl.gz")
        for cut in load_manifest(tmp_path / f"{storage}.jsonl.gz"):
            ids, probs = load_soft_targets(cut)
            mass = topk_mass(full[cut.id], ids.astype(np.int64))
            assert 0.2 < mass.mean() < 0.9  # a real rest to keep
            assert np.allclose(probs.astype(np.float64).sum(1), mass, rtol=0.03 if storage == "uint16-uint8" else 2e-3)
            # With the rest as one class, exact top-k targets lose nothing but rounding; renormalised
            # ones lose -log(mass) per frame.
            exact = kl_bucketed_vs_full(full[cut.id], ids, probs)
            assert exact.max() < (2e-3 if storage == "int32-fp16" else 2e-2)
            assert np.allclose(kl_stored_vs_full(full[cut.id], ids, probs), -np.log(mass), atol=2e-2)
    # rvq: the kept senones' shares of the whole reconstruction.
    posteriors = {c.id: torch.from_numpy(_clustered_posteriors(i, c.num_frames)) for i, c in enumerate(fbank_cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 3, seed=0)
    stored = store_target_arrays(fbank_cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / "rvq",
                                 shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: K, SOFT_TAIL: True})
    stored.to_file(tmp_path / "rvq.jsonl.gz")
    for cut in load_manifest(tmp_path / "rvq.jsonl.gz"):
        ids, probs = load_soft_targets(cut)
        codes = quantiser.encode(posteriors[cut.id])
        want_ids, renormalised = quantiser.decode(codes, K)
        _, all_probs = quantiser.decode(codes, NUM_CLASSES)
        assert np.array_equal(ids, want_ids)
        whole = np.take_along_axis(all_probs, np.argsort(all_probs, axis=1)[:, ::-1][:, :K], axis=1)
        assert np.allclose(probs, whole, atol=1e-6) and np.allclose(probs / probs.sum(1, keepdims=True), renormalised, atol=1e-6)
        assert (probs.sum(1) < 1 - 1e-3).any()


def test_bucket_kl_stays_finite_for_a_confident_ensemble_and_bucket_needs_precise_storage():
    # A confident ensemble: the top 5 keep all but ~1e-12 of the mass, so 1 - their float32 sum is
    # 0 while float16 rounding leaves the stored rows a rest of ~1e-4; the full rest, taken from the
    # log-probabilities, is tiny but not 0, and the KL finite. With every class kept, no rest.
    logits = torch.full((4, NUM_CLASSES), -30.0)
    logits[:, :K] = torch.tensor([8.0, 1.0, 0.5, 0.3, 0.2])
    log_full = torch.log_softmax(logits, dim=-1)
    full = log_full.exp()
    ids, probs = topk_compress(full, K, renormalise=False)
    assert 1.0 - full[:, :K].sum(1).max().item() == 0.0 and (1.0 - probs.astype(np.float64).sum(1)).max() > 0
    kl = kl_bucketed_vs_full(full.numpy(), ids, probs, log_full.numpy())
    assert np.isfinite(kl).all() and (kl >= -1e-6).all()
    every_ids, every_probs = topk_compress(full, NUM_CLASSES, renormalise=False)
    assert np.isfinite(kl_bucketed_vs_full(full.numpy(), every_ids, every_probs, log_full.numpy())).all()
    with pytest.raises(ConfigError, match="int32-fp16 or rvq"):
        KdConfig(tail="bucket", storage="uint16-uint8")
    with pytest.raises(ConfigError, match="kd.tail=renormalise"):
        KdConfig(tail="bucket", mode="online")
    assert KdConfig(tail="bucket").storage == "rvq"
