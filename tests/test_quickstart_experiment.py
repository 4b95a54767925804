"""The quickstart reads its pipeline's settings from the experiment's gin files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from flanrec.quickstart import job as quickstart

REPO = Path(__file__).resolve().parents[1]


def test_settings_follow_includes_and_later_bindings_win(tmp_path):
    base = tmp_path / "base.gin"
    base.write_text("TASK_FEATURE_LENGTHS = {'inputs': 56, 'targets': 40}\nTRAIN_STEPS = 8\n")
    child = tmp_path / "child.gin"
    child.write_text(f"include '{base}'\nTRAIN_STEPS = 3  # overrides the include\n")
    assert quickstart._gin_value(str(child), "TASK_FEATURE_LENGTHS") == \
        "{'inputs': 56, 'targets': 40}"
    assert quickstart._gin_value(str(child), "TRAIN_STEPS") == "3"
    assert quickstart._gin_value(str(child), "NOPE") is None


def test_shipped_quickstart_experiment_gives_inference_the_trained_lengths(tmp_path):
    """The README's main command: inference must see the seqrec window the model trained on
    (a default 16-target length cuts every user's targets and the job refuses). The
    experiment leaves the lengths and the task to the data; the quickstart derives them as
    the train job does (tests/test_data_settings.py runs both on prepared dirs)."""
    experiment = str(REPO / quickstart.DEFAULT_EXPERIMENT)
    assert ast.literal_eval(quickstart._gin_value(experiment, "TASK_FEATURE_LENGTHS")) == "auto"
    assert ast.literal_eval(quickstart._gin_value(experiment, "RANK_EVAL_TASK")) == \
        "{prefix}_seqrec_{indexing}"
    stats = {"inputs": {"p50": 50, "p99": 52, "max": 52},
             "targets": {"p50": 40, "p99": 40, "max": 40}}
    (tmp_path / "prepare.json").write_text(json.dumps({
        "task_prefix": "ml100k", "index_suffixes": ["seqidx"],
        "counts": {"tasks": {"seqrec_seqidx": {"train": 6242, "validation": 943}}},
        "stats": {"vocab": {"size": 4100},
                  "tasks": {"seqrec_seqidx": {"train": stats, "validation": stats}}}}))
    settings = quickstart._settings(str(tmp_path), experiment, [])
    assert settings["TASK_FEATURE_LENGTHS"] == {"inputs": 56, "targets": 40}
    assert settings["RANK_EVAL_TASK"] == "ml100k_seqrec_seqidx"
    assert settings["VOCAB_SIZE"] == 4224
    assert settings["TRAIN_STEPS"] == 7998  # 41 epochs of 6,242 windows at batch 32
    assert quickstart._settings(str(tmp_path), experiment, [
        "TASK_FEATURE_LENGTHS={'inputs': 60, 'targets': 40}"])["TASK_FEATURE_LENGTHS"] == \
        {"inputs": 60, "targets": 40}


def test_t5x_style_gin_file_parses_from_a_dir_that_has_runs(tmp_path, monkeypatch):
    """`--gin_file=runs/infer.gin` after a training run made ./runs: gin alone takes `runs`
    for a (namespace) Python package and crashes with a TypeError."""
    import gin

    import flanrec.configurables  # noqa: F401 - registers `infer`, which infer.gin binds
    from flanrec.train import cli as train

    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    try:
        train.configure_gin(["runs/infer.gin"], ["CHECKPOINT_PATH='ckpt'",
                                                 "MIXTURE_OR_TASK_NAME='t'",
                                                 "INFER_OUTPUT_DIR='out'"])
        assert gin.query_parameter("%MODE") == "predict"
    finally:
        gin.clear_config()
