"""Template ensembles on a tiny prepared dataset and a random checkpoint.

Checks the two things that make an ensemble trustworthy: the re-rendered queries are exactly
what `prepare` wrote for that template, and `mean` fusion equals an independent computation of
each item's mean log-likelihood over templates (teacher-forced scoring through the public API).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import random_params

USERS, ITEMS = 16, 24


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.model.config import T5Config
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("ens")
    (root / "raw").mkdir()
    rng = np.random.default_rng(1)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=7, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    data = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(data), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, families=("seq",),
                           allow_download=False, task_prefix="toyens"), log=lambda m: None)
    cfg = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                   num_encoder_layers=1, num_decoder_layers=1, name="tiny-ens-test")
    ckpt = save_params_checkpoint(cfg, random_params(cfg, 3), root / "ckpt")
    return data, Path(str(ckpt))


def _opts(**kw):
    from flanrec.ensemble.templates import TemplateEnsembleOptions

    base = dict(templates=(0, 1, 2), method="mean", split="test", num_beams=5,
                input_length=128, target_length=8, batch_size=8)
    base.update(kw)
    return TemplateEnsembleOptions(**base)


def _read(path):
    return [json.loads(x) for x in open(path)]


def test_rendered_queries_match_what_prepare_wrote(toy):
    import seqio

    import tasks
    from flanrec.ensemble import templates as ens

    data, ckpt = toy
    tasks.register_prepared(str(data))
    try:
        task = seqio.get_mixture_or_task("toyens_seq_seqidx")
        written = {}
        for ex in task.get_dataset(None, split="test", shuffle=False):
            written[ex["user"].numpy().decode()] = (int(ex["_template_idx"].numpy()),
                                                    ex["inputs_pretokenized"].numpy().decode())
    finally:
        tasks.unregister_prepared("toyens")
    res = ens._Resources(str(ckpt), str(data), None)
    checked = 0
    from flanrec.data.templates import template_indices

    for t in template_indices("seq", ("seen",)):
        for ex in ens._queries(res, "test", t):
            idx, text = written[ex["user"]]
            if idx == t:
                assert ex["inputs"] == text
                checked += 1
    assert checked == len(written) == USERS


def test_mean_fusion_equals_independent_mean_log_likelihood(toy, tmp_path):
    from flanrec.api import load
    from flanrec.data import prepared
    from flanrec.data import vocab as vocab_lib
    from flanrec.data.families import seq as examples
    from flanrec.data.indexing import ItemIndex
    from flanrec.ensemble.templates import run_template_ensemble

    data, ckpt = toy
    summary = run_template_ensemble(str(ckpt), str(data), str(tmp_path), _opts())
    fused = _read(summary["path"])
    members = [_read(tmp_path / f"toyens_seq_ens-t{t}-predict.jsonl-00000-of-00001")
               for t in (0, 1, 2)]
    assert len(fused) == USERS and all(len(m) == USERS for m in members)

    model = load(str(ckpt))
    vocab = vocab_lib.vocabulary_for_prepared(str(data))
    index = ItemIndex.load(str(data / "index" / "sequential"))
    split = prepared.load_split(str(data))
    meta = prepared.load_meta(str(data))
    queries = {t: list(examples.seq_examples(split, index, meta, split_name="test",
                                             template_idx=t)) for t in (0, 1, 2)}
    for u in (0, 5, USERS - 1):
        union = list(dict.fromkeys(i for m in members for i in m[u]["items"]))
        assert set(fused[u]["items"]) <= set(union)
        total = np.zeros(len(union))
        for t in (0, 1, 2):
            enc = np.zeros((len(union), 128), np.int32)
            toks = list(vocab.encode(queries[t][u]["inputs"])) + [vocab.eos_id]
            enc[:, : len(toks)] = toks
            tgt = np.zeros((len(union), 8), np.int32)
            for c, item in enumerate(union):
                ids = list(vocab.encode(index.id_of(item))) + [vocab.eos_id]
                tgt[c, : len(ids)] = ids
            total += np.asarray(model.score(enc, tgt))
        mean = total / 3
        order = np.argsort(-mean, kind="stable")[:5]
        assert fused[u]["items"] == [union[j] for j in order]
        np.testing.assert_allclose(fused[u]["scores"], mean[order], atol=1e-4)


def test_vote_and_rrf_never_return_seen_items(toy, tmp_path):
    from flanrec.data import prepared, splits
    from flanrec.ensemble.templates import run_template_ensemble

    data, ckpt = toy
    seen = {s.user: set(splits.seen_items(s, "test"))
            for s in prepared.load_split(str(data)).users}
    for method in ("vote", "rrf"):
        summary = run_template_ensemble(str(ckpt), str(data), str(tmp_path / method),
                                        _opts(method=method, templates=(0, 3)))
        for rec in _read(summary["path"]):
            assert rec["items"] and not set(rec["items"]) & seen[rec["user"]]
            assert len(rec["items"]) == len(set(rec["items"])) <= 5


def test_bad_arguments(toy, tmp_path):
    from flanrec.ensemble.__main__ import main

    data, ckpt = toy
    base = ["templates", "--checkpoint", str(ckpt), "--data_dir", str(data), "--out",
            str(tmp_path)]
    assert main([*base, "--templates", "0"]) == 2
    assert main([*base, "--templates", "0,99"]) == 2
