"""The seqrec family: SASRec-style many-targets-per-example instructions, end to end.

Checked on real data paths: the window cover of every training sequence, the protocol's
leakage rule on ml-100k, the SeqIO task's token layout (targets without EOS, one token per
item), the trie without EOS, and that `flanrec.infer` ranks exactly what a teacher-forced
decoder pass over the example's prefix predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import random_params

from flanrec.data.families import seqrec as ex_lib
from flanrec.data.indexing import fit_index
from flanrec.data.trie import build_trie
from flanrec.errors import UserError

USERS, ITEMS = 24, 30


@pytest.mark.parametrize("n", [2, 3, 7, 40, 41, 95, 200])
@pytest.mark.parametrize("window,tilings", [(40, 1), (40, 2), (10, 3), (1, 1)])
def test_windows_cover_every_target_once_per_tiling(n, window, tilings):
    wins = ex_lib.seqrec_windows(n, window, tilings)
    for t in range(tilings):
        covered = [p for tt, a, e in wins if tt == t for p in range(a, e)]
        # A later tiling is either a full cover with new cuts, or left out whole: a
        # sequence too short for its shift would repeat tiling 0's windows exactly.
        if t == 0 or covered:
            assert sorted(covered) == list(range(1, n)), (t, wins)
        else:
            assert n - (t * window) // tilings <= 1 or (t * window) // tilings == 0, (t, wins)
    assert len({(a, e) for _, a, e in wins}) == len(wins)  # no example twice
    assert all(0 < e - a <= window and a >= 1 for _, a, e in wins)
    if tilings > 1 and n > window:
        starts = {t: {a for tt, a, _ in wins if tt == t} for t in range(tilings)}
        assert starts[0] != starts[1]  # shifted cuts: other contexts for the same targets


def test_eval_split_keeps_an_encoder_item_and_a_bounded_prefix():
    hist = [str(i) for i in range(30)]
    enc, prefix = ex_lib.seqrec_eval_split(hist, window=10, encoder_items=4)
    assert prefix == hist[-9:] and enc == hist[-13:-9]
    enc, prefix = ex_lib.seqrec_eval_split(["a", "b"], window=40, encoder_items=10)
    assert enc == ["a"] and prefix == ["b"]
    enc, prefix = ex_lib.seqrec_eval_split(["a"], window=40, encoder_items=10)
    assert enc == ["a"] and prefix == []


def test_ml100k_seqrec_examples_follow_the_protocol(ml100k_split):
    split = ml100k_split
    index = fit_index("sequential", split, split.all_items)
    id_of = index.item_to_id
    train = list(ex_lib.seqrec_examples(split, index, split_name="train", tilings=2))
    # Every training item but each user's first is a target twice (two tilings), except in
    # sequences too short for the second tiling's shift: their one window is not repeated.
    shift = ex_lib.SEQREC_WINDOW // 2
    n_targets = sum(len(e["targets"].split()) for e in train)
    assert n_targets == sum((len(s.train_items) - 1) * (2 if len(s.train_items) - shift > 1
                                                        else 1) for s in split.users)
    by_user = {s.user: s for s in split.users}
    for e in train[:3000]:
        s = by_user[e["user"]]
        held = {id_of[s.valid_item], id_of[s.test_item]}
        assert not held & set(e["targets"].split())
        assert len(e["targets"].split()) <= ex_lib.SEQREC_WINDOW
    for stage in ("validation", "test"):
        evals = list(ex_lib.seqrec_examples(split, index, split_name=stage))
        assert len(evals) == len(split.users)
        for e in evals[:200]:
            s = by_user[e["user"]]
            target = s.valid_item if stage == "validation" else s.test_item
            assert e["target_item"] == target
            ids = e["targets"].split()
            assert ids[-1] == id_of[target]
            history = (s.train_items if stage == "validation"
                       else s.train_items + [s.valid_item])[-50:]
            # The prefix is the history's most recent items, in order.
            assert ids[:-1] == [id_of[i] for i in history[len(history) - len(ids) + 1:]]
            assert id_of[target] not in e["inputs"].split(", ")


def test_trie_without_eos_needs_items_of_equal_length():
    trie = build_trie([[5], [7], [9]], eos_id=1, vocab_size=16, end_with_eos=False)
    assert trie.max_length == 1 and sorted(trie.leaf_item[trie.leaf_item >= 0]) == [0, 1, 2]
    with pytest.raises(ValueError, match="same number of tokens"):
        build_trie([[5], [5, 7]], eos_id=1, vocab_size=16, end_with_eos=False)


# ------------------------------------------------------------------ a real prepared dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A real `flanrec.prepare` output (24 users, 30 items, every family, item pieces)."""
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("seqrec")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=12, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    data = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(data), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, num_candidates=5,
                           seqrec_window=4, seqrec_encoder_items=2, allow_download=False,
                           task_prefix="toysr"), log=lambda m: None)
    import tasks

    tasks.register_prepared(str(data))
    yield data
    tasks.unregister_prepared("toysr")


def test_seqrec_task_layout(toy):
    import seqio

    task = seqio.get_mixture_or_task("toysr_seqrec_seqidx")
    vocab = task.output_features["targets"].vocabulary
    info = json.loads((toy / "tasks" / "seqrec_seqidx" / "info.json").read_text())
    assert info["targets_eos"] is False and info["target_layout"] == "item_sequence"
    for split in ("train", "validation"):
        ds = task.get_dataset({"inputs": 64, "targets": 8}, split=split, shuffle=False)
        for ex in ds.take(20).as_numpy_iterator():
            assert ex["inputs"][-1] == vocab.eos_id  # the instruction ends with EOS
            assert vocab.eos_id not in ex["targets"].tolist()  # the items run on, no EOS
            # One token per item: --train_vocab keeps every item ID whole.
            assert len(ex["targets"]) == len(ex["targets_pretokenized"].split())
    assert (toy / "index" / "sequential" / "trie_noeos.npz").exists()


def test_infer_ranks_what_teacher_forcing_predicts(toy, tmp_path):
    """flanrec.infer on a seqrec task = the logits at the last prefix position, seen items
    masked, best first."""
    from flanrec.data import prepared, splits
    from flanrec.infer import run as job
    from flanrec.model.config import T5Config
    from flanrec.model.network import Transformer

    cfg = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                   num_encoder_layers=1, num_decoder_layers=1, name="tiny-seqrec-test")
    params = jax.tree.map(jnp.asarray, random_params(cfg, 3))
    lengths = {"inputs": 64, "targets": 8}
    opts = job.InferenceOptions(output_dir=str(tmp_path), task_feature_lengths=lengths,
                                split="validation", batch_size=8, num_beams=5)
    (info,) = job.resolve_tasks("toysr_seqrec_seqidx", "validation", "predict")
    runner = job.TaskRunner(info, cfg, params, opts)
    rows = list(job.task_examples(info.name, "validation", lengths, 0, 1))
    records = runner.run_batch(rows[:8])
    split = {s.user: s for s in prepared.load_split(str(toy)).users}
    model = Transformer(cfg)
    for (_, ex), rec in zip(rows[:8], records, strict=True):
        tgt = [int(t) for t in ex["targets"]]
        dec = np.asarray([[0] + tgt[:-1]], np.int32)  # start + prefix items
        logits = model.apply({"params": params}, jnp.asarray(ex["inputs"][None]),
                             jnp.asarray(dec))
        logp = np.asarray(jax.nn.log_softmax(logits[0, -1]))
        item_tok = {item: runner.decoder.id_strings[j] for j, item in
                    enumerate(runner.decoder.items)}
        vocab_ids = {item: runner.vocab.encode(s)[0] for item, s in item_tok.items()}
        seen = set(splits.seen_items(split[rec["user"]], "validation"))
        ranked = sorted((i for i in vocab_ids if i not in seen),
                        key=lambda i: -logp[vocab_ids[i]])
        assert rec["items"] == ranked[:5]
        np.testing.assert_allclose(rec["scores"], [logp[vocab_ids[i]] for i in ranked[:5]],
                                   atol=1e-4)


def test_seqrec_refuses_score_mode(toy):
    from flanrec.infer import run as job
    from flanrec.infer.taskinfo import InferenceConfigError

    with pytest.raises(InferenceConfigError, match="MODE='predict'"):
        job.resolve_tasks("toysr_seqrec_seqidx", "validation", "score")


def test_default_prepare_skips_seqrec_when_ids_are_not_one_token(tmp_path):
    """Without --train_vocab item pieces, sequential IDs split unevenly: the default family
    list drops seqrec with a warning; asking for it by name is an error."""
    from flanrec.prepare import PrepareOptions, prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, 13):
        for t, item in enumerate(rng.choice(np.arange(1, 400), size=6, replace=False)):
            rows.append(f"{u},{item},4,{1000 + t}")
    (raw / "ratings.csv").write_text("\n".join(rows) + "\n")
    messages: list[str] = []
    opts = dict(dataset="ml-latest-small", raw_dir=str(raw), train_vocab=True,
                vocab_size=400, item_pieces=False, num_candidates=3, allow_download=False,
                task_prefix="toyskip")
    doc = prepare(PrepareOptions(out=str(tmp_path / "a"), **opts), log=messages.append)
    if "seqrec_seqidx" in doc["counts"]["tasks"]:
        pytest.skip("this vocabulary happened to make every ID one token")
    assert any("seqrec_seqidx skipped" in m for m in messages)
    assert not Path(tmp_path / "a" / "tasks" / "seqrec_seqidx").exists()
    with pytest.raises(UserError, match="same number of tokens"):
        prepare(PrepareOptions(out=str(tmp_path / "b"), families=("seq", "seqrec"), **opts),
                log=messages.append)


def test_family_baselines_answer_the_prepared_examples(toy):
    """The direct baseline ranks exactly the candidate lists of the prepared test examples."""
    from flanrec.baselines import families
    from flanrec.data import prepared, task_records

    split = prepared.load_split(str(toy))
    rows, info = families.all_rows(split, str(toy), "test")
    assert set(rows) == {"bias", "popularity_binary", "bias_binary", "popularity_direct"}
    direct = rows["popularity_direct"][1]
    shown = task_records.read_task_split(str(toy), "direct_seqidx", "test")
    assert [r["candidates"] for r in direct] == [e["candidates"] for e in shown]
    assert all(r["target_item"] in r["candidates"] for r in direct)
    assert info["bias"]["chosen_on"] == "validation RMSE"


def test_dir_prepared_with_an_external_vocab_registers_without_the_variable(toy, tmp_path,
                                                                           monkeypatch):
    """prepare with FLANREC_VOCAB=... records the file and its md5; registering the dir
    later needs no variable, and a changed file under that name is not used."""
    import shutil

    import tasks
    from flanrec.data import vocab as vocab_lib
    from flanrec.prepare import PrepareOptions, prepare

    spm = tmp_path / "spm.model"
    shutil.copy(toy / "vocab" / "spm.model", spm)
    monkeypatch.setenv(vocab_lib.VOCAB_ENV, str(spm))
    out = tmp_path / "ext"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(out),
                           raw_dir=str(toy.parent / "raw"), families=("seqrec",),
                           seqrec_window=4, seqrec_encoder_items=2, allow_download=False,
                           task_prefix="toyext"), log=lambda m: None)
    monkeypatch.delenv(vocab_lib.VOCAB_ENV)
    assert vocab_lib.recorded_vocab_path(str(out)) == str(spm)
    try:
        assert "toyext_seqrec_seqidx" in tasks.register_prepared(str(out))
    finally:
        tasks.unregister_prepared("toyext")
    spm.write_bytes(spm.read_bytes() + b"\0")
    assert vocab_lib.recorded_vocab_path(str(out)) is None
