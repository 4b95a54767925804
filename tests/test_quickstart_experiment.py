"""The quickstart reads its pipeline's settings from the experiment's gin files."""

from __future__ import annotations

import ast
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


def test_shipped_quickstart_experiment_gives_inference_the_trained_lengths():
    """The README's main command: inference must see the seqrec window the model trained on
    (a default 16-target length cuts every user's targets and the job refuses)."""
    experiment = str(REPO / quickstart.DEFAULT_EXPERIMENT)
    lengths = ast.literal_eval(quickstart._gin_value(experiment, "TASK_FEATURE_LENGTHS"))
    assert lengths == {"inputs": 56, "targets": 40}
    assert ast.literal_eval(quickstart._gin_value(experiment, "RANK_EVAL_TASK")) == \
        "ml100k_seqrec_seqidx"


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
