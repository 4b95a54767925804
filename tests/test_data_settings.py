"""Run settings from the data: prepare records token lengths, vocabulary and counts, and the
shipped experiments derive the task names, TASK_FEATURE_LENGTHS, VOCAB_SIZE and an epoch
budget from them, so the quickstart runs untouched on logs unlike ML-100K (long string ids,
unicode ids, one-line-per-user files, any task prefix); a value the user binds wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

import flanrec.configurables  # noqa: F401 - registers what the experiments bind
from flanrec.data import derived
from flanrec.errors import ConfigError
from flanrec.quickstart import job as quickstart

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import log_shapes  # noqa: E402

QUICKSTART_GIN = str(REPO / quickstart.DEFAULT_EXPERIMENT)


def _doc(**stats_overrides):
    """A prepare.json as prepare writes it, reduced to what `derive` reads."""
    lengths = {"inputs": {"p50": 40, "p99": 52, "max": 61},
               "targets": {"p50": 12, "p99": 38, "max": 40}}
    doc = {"task_prefix": "shop", "index_suffixes": ["seqidx"],
           "counts": {"tasks": {"seqrec_seqidx": {"train": 1000, "validation": 300},
                                "seq_seqidx": {"train": 5000, "validation": 300}}},
           "stats": {"vocab": {"size": 4100, "pieces": 4000},
                     "tasks": {"seqrec_seqidx": {"train": {"examples": 1000, **lengths},
                                                 "validation": {"examples": 300,
                                                                **lengths}},
                               "seq_seqidx": {"train": {
                                   "examples": 5000,
                                   "inputs": {"p50": 90, "p99": 140, "max": 150},
                                   "targets": {"p50": 2, "p99": 2, "max": 2}}}}}}
    doc["stats"].update(stats_overrides)
    return doc


def test_derive_fills_templates_lengths_vocab_and_an_epoch_budget():
    values = {"MIXTURE_OR_TASK_NAME": "{prefix}_seqrec_{indexing}",
              "RANK_EVAL_TASK": "{prefix}_seqrec_{indexing}",
              "TASK_FEATURE_LENGTHS": "auto", "VOCAB_SIZE": "auto", "TRAIN_STEPS": "auto",
              "TRAIN_EPOCHS": 10, "BATCH_SIZE": 32, "EVAL_PERIOD": "auto",
              "CHECKPOINT_PERIOD": "auto", "NUM_EVALS": 4}
    out = {m: v for m, (v, _) in derived.derive(values, _doc(), "/data").items()}
    assert out == {"MIXTURE_OR_TASK_NAME": "shop_seqrec_seqidx",
                   "RANK_EVAL_TASK": "shop_seqrec_seqidx",
                   "TASK_FEATURE_LENGTHS": {"inputs": 64, "targets": 40},
                   "VOCAB_SIZE": 4224, "TRAIN_STEPS": 313,  # ceil(10 * 1000 / 32)
                   "EVAL_PERIOD": 79, "CHECKPOINT_PERIOD": 79}
    # A mixture of the dir: every task's lengths count, and its train examples add up.
    mix = derived.derive({**values, "MIXTURE_OR_TASK_NAME": "shop_rec_mix"}, _doc(), "/d")
    assert mix["TASK_FEATURE_LENGTHS"][0] == {"inputs": 152, "targets": 40}
    assert mix["TRAIN_STEPS"][0] == 1875


def test_values_the_user_binds_are_left_alone():
    values = {"MIXTURE_OR_TASK_NAME": "shop_seq_seqidx", "RANK_EVAL_TASK": "",
              "TASK_FEATURE_LENGTHS": {"inputs": 512, "targets": 16}, "VOCAB_SIZE": 32128,
              "TRAIN_STEPS": 50, "EVAL_PERIOD": "auto", "CHECKPOINT_PERIOD": 7}
    out = derived.derive(values, _doc(), "/d")
    assert list(out) == ["EVAL_PERIOD"] and out["EVAL_PERIOD"][0] == 7  # 8 evals of 50


@pytest.mark.parametrize("values, doc, match", [
    ({"MIXTURE_OR_TASK_NAME": "ml100k_seqrec_seqidx", "TASK_FEATURE_LENGTHS": "auto"},
     _doc(), "not a task of /d"),
    ({"MIXTURE_OR_TASK_NAME": "shop_seqrec_seqidx", "TASK_FEATURE_LENGTHS": "auto"},
     {**_doc(), "stats": {}}, "TASK_FEATURE_LENGTHS = 'auto'.*prepare it again"),
    ({"MIXTURE_OR_TASK_NAME": "shop_seqrec_seqidx", "TRAIN_STEPS": "auto",
      "BATCH_SIZE": 32}, _doc(), "TRAIN_STEPS = 'auto' needs TRAIN_EPOCHS"),
    ({"VOCAB_SIZE": "auto"}, _doc(vocab=None), "VOCAB_SIZE = 'auto'"),
])
def test_what_cannot_be_derived_is_named(values, doc, match):
    with pytest.raises(ConfigError, match=match):
        derived.derive(values, doc, "/d")


def _prepare(raw: Path, out: Path, dataset: str, prefix: str) -> dict:
    from flanrec.prepare import PrepareOptions, prepare

    prepare(PrepareOptions(dataset=dataset, raw_dir=str(raw), out=str(out), task_prefix=prefix,
                           train_vocab=True, vocab_size=600, families=("seq", "seqrec"),
                           allow_download=False), log=lambda msg: None)
    return json.loads((out / "prepare.json").read_text())


@pytest.fixture(scope="module")
def long_ids_sequences(tmp_path_factory):
    """A one-line-per-user file with long string ids (`viewer_000000042`), prepared."""
    root = tmp_path_factory.mktemp("shapes")
    log_shapes.write("long_ids", str(root / "log.txt"), "sequences", users=150, items=120)
    return root / "out", _prepare(root / "log.txt", root / "out", "sequences", "viewers")


def test_prepare_records_what_a_model_needs_to_know(long_ids_sequences):
    out, doc = long_ids_sequences
    stats = doc["stats"]
    assert stats["catalogue"] == doc["counts"]["items"] == 120
    assert stats["users"] == 150 and stats["history"]["max_history"] == 50
    assert 1 <= stats["history"]["p50"] <= stats["history"]["p99"] <= stats["history"]["max"]
    assert stats["vocab"]["size"] >= stats["vocab"]["pieces"] >= 120  # one piece per item
    for task, splits in doc["counts"]["tasks"].items():
        for split, n in splits.items():
            rec = stats["tasks"][task][split]
            assert rec["examples"] == n and rec["measured"] == n  # small: measured whole
            for feature in ("inputs", "targets"):
                s = rec[feature]
                assert 1 <= s["p50"] <= s["p99"] <= s["max"]
    # seqrec targets: one token per item, no EOS, at most the window of 40 items.
    assert stats["tasks"]["seqrec_seqidx"]["train"]["targets"]["max"] <= 40
    # The lengths are those seqio feeds the model (EOS included): tokenize one example.
    import seqio

    import tasks

    tasks.register_prepared(str(out))
    try:
        task = seqio.get_mixture_or_task("viewers_seq_seqidx")
        ds = task.get_dataset({"inputs": 4096, "targets": 4096}, split="validation",
                              shuffle=False, use_cached=False)
        longest = max(len(ex["inputs"]) for ex in ds.as_numpy_iterator())
        assert longest == stats["tasks"]["seq_seqidx"]["validation"]["inputs"]["max"]
    finally:
        tasks.unregister_prepared("viewers")


def test_train_gin_takes_the_settings_from_the_prepared_dir(long_ids_sequences, monkeypatch,
                                                           capsys):
    from flanrec.train import cli as train_cli

    out, doc = long_ids_sequences
    monkeypatch.setenv("FLANREC_DATA_DIR", str(out))
    try:
        train_cli.configure_gin([QUICKSTART_GIN], ["MODEL_DIR = '/tmp/x'",
                                                   "TRAIN_EPOCHS = 2"])
        said = capsys.readouterr().out
        n = doc["counts"]["tasks"]["seqrec_seqidx"]["train"]
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "viewers_seqrec_seqidx"
        assert gin.query_parameter("%RANK_EVAL_TASK") == "viewers_seqrec_seqidx"
        assert gin.query_parameter("%TRAIN_STEPS") == -(-2 * n // 32)
        lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
        seqrec = doc["stats"]["tasks"]["seqrec_seqidx"]
        assert lengths["inputs"] >= max(s["inputs"]["max"] for s in seqrec.values())
        assert lengths["inputs"] % 8 == 0 and lengths["targets"] % 8 == 0
        assert gin.query_parameter("%VOCAB_SIZE") % 128 == 0
        for macro in ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "VOCAB_SIZE",
                      "TRAIN_STEPS", "EVAL_PERIOD"):
            assert said.count(f"derived {macro} = ") == 1, said
        # The quickstart derives the same values for the stages after training.
        settings = quickstart._settings(str(out), QUICKSTART_GIN, ["TRAIN_EPOCHS=2"])
        assert settings["TASK_FEATURE_LENGTHS"] == lengths
        assert settings["RANK_EVAL_TASK"] == "viewers_seqrec_seqidx"
        gin.clear_config()
        # A T5X user's own values win, on the command line as in a gin file.
        train_cli.configure_gin([QUICKSTART_GIN], [
            "MODEL_DIR = '/tmp/x'", "TASK_FEATURE_LENGTHS = {'inputs': 99, 'targets': 41}",
            "MIXTURE_OR_TASK_NAME = 'viewers_seq_seqidx'", "TRAIN_STEPS = 12"])
        assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 99, "targets": 41}
        assert gin.query_parameter("%TRAIN_STEPS") == 12
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "viewers_seq_seqidx"
        assert gin.query_parameter("%EVAL_PERIOD") == 2  # 'auto': 8 validations of 12 steps
    finally:
        gin.clear_config()


def test_an_unprepared_data_dir_is_one_line_naming_the_macros(tmp_path, monkeypatch):
    from flanrec.train import cli as train_cli

    monkeypatch.setenv("FLANREC_DATA_DIR", str(tmp_path / "nowhere"))
    try:
        with pytest.raises(ConfigError, match=r"MIXTURE_OR_TASK_NAME, RANK_EVAL_TASK, "
                           r"TASK_FEATURE_LENGTHS.* are derived from the prepared data dir"):
            train_cli.configure_gin([QUICKSTART_GIN], ["MODEL_DIR = '/tmp/x'"])
    finally:
        gin.clear_config()


@pytest.mark.parametrize("shape, fmt", [("unicode", "csv")])
def test_quickstart_runs_untouched_on_a_log_unlike_ml100k(tmp_path, shape, fmt):
    """The README's main command on a CSV of unicode ids under another task prefix: no
    --gin for the task, lengths or vocabulary (only a tiny budget, for the test's time)."""
    raw = tmp_path / f"log.{fmt}"
    log_shapes.write(shape, str(raw), fmt, users=120, items=100)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("FLANREC_DATA_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.quickstart", "--dataset", fmt,
         "--data_dir", str(tmp_path / "prepared"), "--model_dir", str(tmp_path / "run"),
         "--baselines", "none", "--num_beams", "10",
         "--gin", "TRAIN_EPOCHS=0.5", "--gin", "NUM_EVALS=1",
         "--prepare_args", f"--raw_dir {raw} --train_vocab --vocab_size 600 "
                           "--task_prefix anything --families seq,seqrec"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "derived MIXTURE_OR_TASK_NAME = 'anything_seqrec_seqidx'" in proc.stdout
    assert "derived TRAIN_STEPS = " in proc.stdout
    metrics = json.loads((tmp_path / "run" / "eval_test" / "metrics.json").read_text())
    assert metrics["num_users"] == 120 and metrics["invalid"] == 0.0


def test_parquet_log_of_unicode_ids_derives_its_own_settings(tmp_path):
    raw = tmp_path / "log.parquet"
    log_shapes.write("unicode", str(raw), "parquet", users=100, items=90)
    doc = _prepare(raw, tmp_path / "out", "parquet", "uni")
    values = {"MIXTURE_OR_TASK_NAME": "{prefix}_seq_{indexing}",
              "TASK_FEATURE_LENGTHS": "auto", "VOCAB_SIZE": "auto"}
    out = {m: v for m, (v, _) in derived.derive(values, doc, str(tmp_path)).items()}
    assert out["MIXTURE_OR_TASK_NAME"] == f"{doc['task_prefix']}_seq_seqidx"
    seq = doc["stats"]["tasks"]["seq_seqidx"]
    assert out["TASK_FEATURE_LENGTHS"]["inputs"] >= max(s["inputs"]["max"] for s in seq.values())
    assert out["VOCAB_SIZE"] >= doc["stats"]["vocab"]["size"]
