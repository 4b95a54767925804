"""The one-forward-pass ranker against trie-constrained beam search, on a trained model.

For tasks whose items are each one token and whose target is one item after a decoder
prefix (the seqrec family), `flanrec.infer` ranks with one teacher-forced forward pass and a
top-K over the catalogue's token columns instead of beam search over the item trie. That is
only allowed because both give the same items and the same scores (log-probabilities under
the full-vocabulary softmax, seen items masked; the two programs sum in different orders,
so scores agree to 1e-4, not bit for bit): checked here, through the job's own
`TaskRunner` and through the bare rankers on prefixes of every length, with a tiny model
first trained on the task (a random model's near-uniform scores would hide ordering bugs).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hf_fixtures import random_params

from flanrec.model.config import T5Config

CFG = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
               num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
               name="tiny-one-pass-test")
LENGTHS = {"inputs": 64, "targets": 8}
USERS, ITEMS = 30, 30
TASK, SEQ_TASK = "toyop_seqrec_seqidx", "toyop_seq_seqidx"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A real prepared dir (seq + seqrec families) whose users have histories of different
    lengths, so evaluation prefixes range from short to the full window."""
    import tasks
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("one_pass")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        n = int(rng.integers(4, 13))
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=n, replace=False)):
            rows.append(f"{u},{item},4,{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    out = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(out), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, families=("seq", "seqrec"),
                           seqrec_window=6, seqrec_encoder_items=2, allow_download=False,
                           task_prefix="toyop"), log=lambda m: None)
    tasks.register_prepared(str(out))
    yield out
    tasks.unregister_prepared("toyop")


def _padded(rows, key: str, length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for r, ex in enumerate(rows):
        toks = np.asarray(ex[key])[:length]
        out[r, : len(toks)] = toks
    return out


@pytest.fixture(scope="module")
def trained(data):
    """Params of the tiny model after 60 full-batch Adam steps on the seqrec train split."""
    from flanrec.infer import run as job
    from flanrec.model.network import Transformer

    rows = [ex for _, ex in job.task_examples(TASK, "train", LENGTHS, 0, 1)]
    enc = jnp.asarray(_padded(rows, "inputs", LENGTHS["inputs"]))
    tgt = jnp.asarray(_padded(rows, "targets", LENGTHS["targets"]))
    dec = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
    model = Transformer(CFG)

    def loss(p):
        logits = model.apply({"params": p}, enc, dec, tgt)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
        w = (tgt > 0).astype(jnp.float32)
        return jnp.sum(ce * w) / jnp.sum(w)

    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    params = jax.tree.map(jnp.asarray, random_params(CFG, 0))
    state = tx.init(params)
    losses = []
    for _ in range(60):
        params, state, value = step(params, state)
        losses.append(float(value))
    assert losses[-1] < 0.8 * losses[0], losses[::10]  # it learned something
    return params


def _runner(params, split: str, ranker: str, task: str = TASK, **kw):
    from flanrec.infer import run as job

    opts = job.InferenceOptions(output_dir="-", task_feature_lengths=LENGTHS, split=split,
                                batch_size=8, ranker=ranker, **kw)
    (info,) = job.resolve_tasks(task, split, "predict")
    return job.TaskRunner(info, CFG, params, opts)


def _rank_all(runner, split: str) -> list[dict]:
    from flanrec.infer import run as job

    rows = list(job.task_examples(runner.info.name, split, LENGTHS, 0, 1))
    b = runner.opts.batch_size
    return [rec for lo in range(0, len(rows), b) for rec in runner.run_batch(rows[lo: lo + b])]


@pytest.mark.parametrize("split,k,mask_seen", [("validation", 10, True), ("test", 10, True),
                                               ("test", ITEMS, True), ("validation", 5, False)])
def test_job_ranks_the_same_items_with_the_same_scores(data, trained, split, k, mask_seen):
    """TaskRunner, RANKER one_pass vs beam_search: identical top-K items per user, scores
    equal to float rounding; seen items never returned. k = the catalogue size leaves users
    fewer allowed items than k (both paths return exactly the allowed ones, all ranked);
    the last batch (30 users, batches of 8) is padded."""
    from flanrec.data import prepared, splits

    one = _runner(trained, split, "one_pass", num_beams=k, mask_seen=mask_seen)
    beam = _runner(trained, split, "beam_search", num_beams=k, mask_seen=mask_seen)
    auto = _runner(trained, split, "auto", num_beams=k, mask_seen=mask_seen)
    assert (one.ranking_path, beam.ranking_path, auto.ranking_path) == (
        "one_pass", "beam_search", "one_pass")
    fast, slow = _rank_all(one, split), _rank_all(beam, split)
    assert len(fast) == len(slow) == USERS
    seen = {s.user: set(splits.seen_items(s, split))
            for s in prepared.load_split(str(data)).users}
    for f, s in zip(fast, slow, strict=True):
        assert f["user"] == s["user"] and f["items"] == s["items"], (f["user"], f["items"],
                                                                      s["items"])
        np.testing.assert_allclose(f["scores"], s["scores"], rtol=0, atol=1e-4)
        assert f["scores"] == sorted(f["scores"], reverse=True)
        assert f["invalid"] == f["duplicates"] == 0 and f["prediction"] == f["ids"][0]
        if mask_seen:
            assert not set(f["items"]) & seen[f["user"]]
            assert len(f["items"]) == min(k, ITEMS - len(seen[f["user"]]))
        else:
            assert len(f["items"]) == k


def test_prefixes_of_every_length_and_random_masks(data, trained):
    """The bare rankers on right-aligned prefixes of lengths 0..P (0: the decoder reads only
    its start token) and random per-row masks, against `TriePredictor`."""
    from flanrec.data.trie import build_trie
    from flanrec.infer import modes

    runner = _runner(trained, "validation", "one_pass")
    tokens = modes.one_token_items(runner.decoder.id_strings, runner.vocab.encode)
    assert tokens is not None and len(set(tokens.tolist())) == len(tokens)
    trie = build_trie([[int(t)] for t in tokens], eos_id=1, vocab_size=CFG.vocab_size,
                      end_with_eos=False)
    rng = np.random.default_rng(3)
    batch, width, k = 12, 5, 7
    lengths = np.arange(batch) % (width + 1)
    prefix = np.zeros((batch, width), np.int32)
    for r, n in enumerate(lengths):
        prefix[r, width - n:] = rng.choice(tokens, n, replace=False)
    enc = rng.integers(3, 300, (batch, 20)).astype(np.int32)
    enc[:, 15:] = 0
    allowed = rng.random((batch, len(tokens))) > 0.3
    items, scores = modes.NextItemRanker(CFG, tokens)(trained, enc, k, allowed, prefix,
                                                      lengths)
    seqs, beam_scores = modes.TriePredictor(CFG, trie)(trained, enc, k, allowed,
                                                       decoder_prefix=prefix,
                                                       prefix_lengths=lengths)
    by_token = {int(t): j for j, t in enumerate(tokens)}
    beam_items = np.vectorize(by_token.get)(seqs[:, :, 0])
    np.testing.assert_array_equal(items, beam_items)
    np.testing.assert_allclose(scores, beam_scores, rtol=0, atol=1e-4)
    assert all(allowed[r, items[r]].all() for r in range(batch))
    # Without a mask every catalogue item may come back; k beyond the catalogue is cut.
    items, scores = modes.NextItemRanker(CFG, tokens)(trained, enc, 100, None, prefix, lengths)
    assert items.shape == (batch, len(tokens))
    assert all(sorted(row.tolist()) == list(range(len(tokens))) for row in items)
    assert np.isfinite(scores).all()


def test_which_tasks_take_the_one_pass_ranker(data, trained):
    """auto falls back to beam search where one pass would not give beam search's answer
    (targets with EOS, free decoding); one_pass there is refused in one line."""
    from flanrec.infer import run as job
    from flanrec.infer.taskinfo import InferenceConfigError

    assert _runner(trained, "test", "auto", task=SEQ_TASK).ranking_path == "beam_search"
    assert _runner(trained, "test", "auto", constrained=False).ranking_path == "beam_search"
    with pytest.raises(InferenceConfigError, match="targets end with EOS"):
        _runner(trained, "test", "one_pass", task=SEQ_TASK)
    with pytest.raises(InferenceConfigError, match="CONSTRAINED=False"):
        _runner(trained, "test", "one_pass", constrained=False)
    with pytest.raises(InferenceConfigError, match="RANKER 'fast' is not one of"):
        job.validate_options(job.InferenceOptions(output_dir="o", task_feature_lengths=LENGTHS,
                                                  ranker="fast"))


def test_predictions_files_of_both_rankers_are_interchangeable(data, trained, tmp_path):
    """The job end to end on a saved checkpoint: both files pass the predictions contract
    that eval and ensemble read, list the same items, and their manifests name the ranker."""
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.files import predictions
    from flanrec.infer import run as job

    ckpt = save_params_checkpoint(CFG, jax.tree.map(np.asarray, trained), tmp_path / "ckpt")
    got = {}
    for ranker in ("auto", "beam_search"):
        out = tmp_path / ranker
        opts = job.InferenceOptions(output_dir=str(out), task_feature_lengths=LENGTHS,
                                    split="test", batch_size=16, num_beams=10, ranker=ranker,
                                    progress_every=1000.0)
        (summary,) = job.run_inference(str(ckpt), TASK, opts)
        records = predictions.read_records([summary["path"]], TASK, "predict")
        got[ranker] = {r.data["index"]: r.data for r in records}
        manifest = json.loads(
            (out / predictions.manifest_name(TASK, "predict", 0, 1)).read_text())
        assert manifest["ranker"] == ("one_pass" if ranker == "auto"
                                                else "beam_search")
    assert got["auto"].keys() == got["beam_search"].keys() and len(got["auto"]) == USERS
    for i, rec in got["auto"].items():
        assert rec["items"] == got["beam_search"][i]["items"]
        np.testing.assert_allclose(rec["scores"], got["beam_search"][i]["scores"], atol=1e-4)


def test_infer_reads_the_moving_average_of_an_ema_run(data, trained, tmp_path):
    """A training checkpoint whose meta names `ema_params` (a run with EMA_DECAY): the
    infer job ranks with the average, not with the trained weights beside it, and its
    manifest identifies the average."""
    from flanrec.checkpoints import TrainCheckpointer
    from flanrec.files import predictions
    from flanrec.infer import run as job

    raw = jax.tree.map(jnp.asarray, random_params(CFG, 5))
    with TrainCheckpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(7, raw, meta={"model_config": CFG.to_dict(), "ema_decay": 0.99},
                  ema_params=trained)
    out = tmp_path / "out"
    opts = job.InferenceOptions(output_dir=str(out), task_feature_lengths=LENGTHS,
                                split="validation", batch_size=16, num_beams=5,
                                progress_every=1000.0)
    (summary,) = job.run_inference(str(tmp_path / "run"), TASK, opts)
    manifest = json.loads((out / predictions.manifest_name(TASK, "predict", 0, 1)).read_text())
    assert manifest["settings"]["checkpoint_step"] == 7
    assert manifest["settings"]["params_sha256"] == job.params_sha256(trained)
    assert manifest["settings"]["params_sha256"] != job.params_sha256(raw)
    records = predictions.read_records([summary["path"]], TASK, "predict")
    want = _rank_all(_runner(trained, "validation", "auto", num_beams=5), "validation")
    assert [r.data["items"] for r in records] == [w["items"] for w in want]
