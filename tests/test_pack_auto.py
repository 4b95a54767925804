"""PACK = 'auto': packing decided from the recorded train lengths, packed TASK_FEATURE_LENGTHS
and a TRAIN_STEPS in packed rows (the row count replays seqio's own packer), unpacked
EVAL_TASK_FEATURE_LENGTHS, a BATCH_SIZE of packed rows carrying EXAMPLES_PER_UPDATE examples;
a bound PACK or BATCH_SIZE wins; ML-100K keeps every value it had."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from flanrec.data import data_stats, derived
from flanrec.errors import ConfigError

ML100K_CLEAN = "/tmp/clean/data/ml-100k"
QUICKSTART = {"MIXTURE_OR_TASK_NAME": "{prefix}_seqrec_{indexing}",
              "RANK_EVAL_TASK": "{prefix}_seqrec_{indexing}", "PACK": "auto",
              "TASK_FEATURE_LENGTHS": "auto", "EVAL_TASK_FEATURE_LENGTHS": "auto",
              "VOCAB_SIZE": "auto", "TRAIN_STEPS": "auto", "TRAIN_EPOCHS": 41,
              "BATCH_SIZE": "auto", "EXAMPLES_PER_UPDATE": 32, "EVAL_PERIOD": "auto",
              "CHECKPOINT_PERIOD": "auto", "NUM_EVALS": 8}


def _lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Short sequences as on Amazon 5-core: a long-tailed item count per example."""
    rng = np.random.default_rng(seed)
    items = np.minimum(rng.geometric(0.2, n), 39)
    return [int(20 + min(k, 10) * 3 + 1) for k in items], [int(k) + 1 for k in items]


def _doc(in_lens: list[int], tg_lens: list[int], with_pairs: bool = True) -> dict:
    train = {"examples": len(in_lens), "measured": len(in_lens),
             "inputs": data_stats._summary(in_lens), "targets": data_stats._summary(tg_lens)}
    if with_pairs:
        train["pairs"] = data_stats.length_pairs(in_lens, tg_lens)
    return {"task_prefix": "shop", "index_suffixes": ["seqidx"],
            "counts": {"tasks": {"seqrec_seqidx": {"train": len(in_lens),
                                                   "validation": 300}}},
            "stats": {"vocab": {"size": 13094, "pieces": 13094},
                      "tasks": {"seqrec_seqidx": {
                          "train": train,
                          "validation": {"examples": 300, "inputs": {"p50": 30, "p99": 50,
                                                                     "max": 52},
                                         "targets": {"p50": 5, "p99": 38,
                                                     "max": 40}}}}}}


def _derive(values: dict, doc: dict) -> dict:
    return {m: v for m, (v, _) in derived.derive(values, doc, "/data").items()}


def test_pack_rows_counts_the_rows_seqio_packs():
    """The replay is seqio's packer, row for row, on examples of mixed lengths."""
    import seqio
    import tensorflow as tf

    rng = random.Random(1)
    pairs = [(rng.randint(1, 61), rng.choice([rng.randint(1, 6), rng.randint(1, 40)]))
             for _ in range(700)]
    row = {"inputs": 128, "targets": 48}
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.arange(1, i + 1, dtype=np.int32),
                  "targets": np.arange(1, t + 1, dtype=np.int32)} for i, t in pairs),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                          "targets": tf.TensorSpec([None], tf.int32)})
    packed = seqio.utils.trim_and_pack_dataset(ds, row)
    rows = sum(1 for _ in packed.as_numpy_iterator())
    assert derived.pack_rows(pairs, row) == rows
    assert rows < len(pairs) / 2  # packing did something


def test_short_examples_are_packed_and_steps_count_packed_rows():
    in_lens, tg_lens = _lengths(20_000)
    doc = _doc(in_lens, tg_lens)
    out = derived.derive(QUICKSTART, doc, "/data")
    values = {m: v for m, (v, _) in out.items()}
    assert values["PACK"] is True
    lengths = values["TASK_FEATURE_LENGTHS"]
    assert all(v % 8 == 0 for v in lengths.values())
    assert lengths["inputs"] >= 56 and lengths["targets"] >= 40  # the longest example fits
    # Several examples per row: about PACK_EXAMPLES mean examples per feature.
    assert lengths["inputs"] >= 6 * np.mean(in_lens)
    assert values["EVAL_TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    # TRAIN_STEPS: the rows seqio's packer makes, which the replay reproduces exactly on the
    # whole (here fully recorded) train split up to the sample's shuffle.
    rows = derived.pack_rows(list(zip(in_lens, tg_lens, strict=True)), lengths)
    # BATCH_SIZE: the whole number of rows carrying at most 32 examples, as the replay counts.
    per_row = len(in_lens) / rows
    assert values["BATCH_SIZE"] == max(1, int(32 // per_row)) and values["BATCH_SIZE"] >= 2
    assert values["BATCH_SIZE"] * per_row <= 32 * 1.03 < (values["BATCH_SIZE"] + 1) * per_row
    assert "EXAMPLES_PER_UPDATE=32" in out["BATCH_SIZE"][1]
    expected = 41 * rows / values["BATCH_SIZE"]
    assert abs(values["TRAIN_STEPS"] - expected) / expected < 0.03
    # about as many updates as unpacked examples at 32 per update, not 32 rows' worth fewer
    unpacked_steps = 41 * len(in_lens) / 32
    assert 0.9 * unpacked_steps < values["TRAIN_STEPS"] < 1.5 * unpacked_steps
    assert values["EVAL_PERIOD"] == -(-values["TRAIN_STEPS"] // 8)
    assert "estimated by replaying seqio's packer" in out["TRAIN_STEPS"][1]
    assert "packing when below 50%" in out["PACK"][1]


def test_full_examples_are_not_packed():
    in_lens = [40 + i % 13 for i in range(3000)]
    tg_lens = [40] * 3000
    values = _derive(QUICKSTART, _doc(in_lens, tg_lens))
    assert values["PACK"] is False
    assert values["TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert values["EVAL_TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert values["TRAIN_STEPS"] == -(-41 * 3000 // 32)
    assert values["BATCH_SIZE"] == 32  # unpacked: EXAMPLES_PER_UPDATE rows
    values = _derive({**QUICKSTART, "EXAMPLES_PER_UPDATE": 12}, _doc(in_lens, tg_lens))
    assert values["BATCH_SIZE"] == 12 and values["TRAIN_STEPS"] == -(-41 * 3000 // 12)


def test_a_bound_batch_size_wins_and_auto_needs_examples_per_update():
    in_lens, tg_lens = _lengths(5000)
    doc = _doc(in_lens, tg_lens)
    values = _derive({**QUICKSTART, "BATCH_SIZE": 32}, doc)
    assert "BATCH_SIZE" not in values
    rows = derived.pack_rows(list(zip(in_lens, tg_lens, strict=True)),
                             values["TASK_FEATURE_LENGTHS"])
    assert abs(values["TRAIN_STEPS"] - 41 * rows / 32) / (41 * rows / 32) < 0.03
    # fewer examples wanted than one row holds: one row per update, never zero
    assert _derive({**QUICKSTART, "EXAMPLES_PER_UPDATE": 1}, doc)["BATCH_SIZE"] == 1
    for bad in (None, 0, "32", True):
        values = {**QUICKSTART, "EXAMPLES_PER_UPDATE": bad}
        if bad is None:
            del values["EXAMPLES_PER_UPDATE"]
        with pytest.raises(ConfigError, match=r"BATCH_SIZE = 'auto' needs "
                           r"EXAMPLES_PER_UPDATE, a positive integer.*or set BATCH_SIZE"):
            derived.derive(values, doc, "/data")


def test_a_bound_pack_wins():
    in_lens, tg_lens = _lengths(5000)
    doc = _doc(in_lens, tg_lens)
    values = _derive({**QUICKSTART, "PACK": False}, doc)
    assert "PACK" not in values
    assert values["TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert values["TRAIN_STEPS"] == -(-41 * 5000 // 32)
    full = [40] * 100
    values = _derive({**QUICKSTART, "PACK": True}, _doc(full, full))
    assert "PACK" not in values and values["TASK_FEATURE_LENGTHS"]["targets"] >= 320
    # Bound lengths with PACK = True: the steps count rows of those lengths.
    bound = {**QUICKSTART, "PACK": True, "BATCH_SIZE": 32,
             "TASK_FEATURE_LENGTHS": {"inputs": 256, "targets": 64}}
    values = _derive(bound, doc)
    assert "TASK_FEATURE_LENGTHS" not in values
    assert values["EVAL_TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    rows = derived.pack_rows(list(zip(in_lens, tg_lens, strict=True)),
                             {"inputs": 256, "targets": 64})
    assert abs(values["TRAIN_STEPS"] - 41 * rows / 32) / (41 * rows / 32) < 0.03


def test_stats_without_means_or_pairs_still_decide():
    """Stats recorded before means and length pairs: medians decide, rows are estimated."""
    in_lens, tg_lens = _lengths(5000)
    doc = _doc(in_lens, tg_lens, with_pairs=False)
    for split in doc["stats"]["tasks"]["seqrec_seqidx"].values():
        for feature in ("inputs", "targets"):
            split[feature].pop("mean", None)
    out = derived.derive(QUICKSTART, doc, "/data")
    assert out["PACK"][0] is True and "median" in out["PACK"][1]
    assert "estimated" in out["TRAIN_STEPS"][1]


def test_a_dir_without_stats_names_the_command_that_adds_them():
    doc = _doc(*_lengths(100))
    del doc["stats"]
    with pytest.raises(ConfigError, match=r"prepared by an older flanrec.*"
                       r"python -m flanrec\.prepare --add_stats /data"):
        derived.derive(QUICKSTART, doc, "/data")


def _ml100k_stats_as_recorded() -> dict:
    """What `prepare --dataset ml-100k --train_vocab` records for the seqrec task (before
    means and length pairs were recorded), copied from a dir prepared at HEAD."""
    def split(n, i50, imax, t50=40, i99=None):
        return {"examples": n, "measured": n,
                "inputs": {"max": imax, "p50": i50, "p99": i99 or imax},
                "targets": {"max": 40, "p50": t50, "p99": 40}}
    return {"task_prefix": "ml100k", "index_suffixes": ["seqidx"],
            "counts": {"tasks": {"seqrec_seqidx": {"train": 6142, "validation": 943,
                                                   "test": 943, "test_unseen": 943}}},
            "stats": {"vocab": {"pieces": 4100, "size": 4100},
                      "tasks": {"seqrec_seqidx": {
                          "train": split(6142, 40, 52), "validation": split(943, 38, 52),
                          "test": split(943, 38, 52), "test_unseen": split(943, 38, 51)}}}}


@pytest.mark.parametrize("where", ["recorded", "prepared at HEAD"])
def test_ml100k_keeps_every_derived_value(where):
    if where == "recorded":
        doc = _ml100k_stats_as_recorded()
    else:
        path = os.path.join(ML100K_CLEAN, "prepare.json")
        if not os.path.exists(path):
            pytest.skip(f"{path}: no ML-100K dir prepared at HEAD here")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    values = _derive(QUICKSTART, doc)
    assert values["PACK"] is False
    assert values["TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert values["EVAL_TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert values["VOCAB_SIZE"] == 4224
    assert values["TRAIN_STEPS"] == 7870 and values["EVAL_PERIOD"] == 984
    assert values["CHECKPOINT_PERIOD"] == 984
