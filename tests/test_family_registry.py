"""Task families are one registration each, rendered on read; a user's family trains as is.

`tasks/next_genre.py` is the README's "Add a task family" example: the README block must be
that file, the family must render from a prepared dir without preparing again, and the train
job must train on it by naming the module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import seqio

REPO = Path(__file__).resolve().parents[1]
SECTION = "### Add a task family"


def test_builtin_families_are_the_registry():
    from flanrec.data import families
    from flanrec.prepare import job as prepare

    assert families.names()[:7] == list(prepare.FAMILIES)
    assert prepare.INDEXED_FAMILIES == ("seq", "seqrec", "direct", "grounding")
    assert prepare.SEQUENCE_FAMILIES == ("seqrec",)
    seqrec = families.get("seqrec")
    assert (seqrec.targets_eos, seqrec.target_layout, seqrec.mixture_cap) == (
        False, "item_sequence", None)
    with pytest.raises(ValueError, match="registered already"):
        families.register(seqrec)
    with pytest.raises(ValueError, match="no templates named"):
        families.register(families.Family(name="nope", target_kind="text",
                                          examples=seqrec.examples,
                                          template_families=("no_such_templates",)))


def test_register_templates_checks_like_the_builtins():
    from flanrec.data import templates

    with pytest.raises(ValueError, match="need >= 3 patterns"):
        templates.register_templates("t_few", {"a"}, [("{a}?", "{a}")])
    with pytest.raises(ValueError, match="unknown fields"):
        templates.register_templates("t_bad", {"a"}, [(f"{i} {{a}} {{b}}", "{a}")
                                                      for i in range(3)])
    with pytest.raises(ValueError, match="answer"):
        templates.register_templates("t_leak", {"a", "target"},
                                     [(f"{i} {{target}}", "{target}") for i in range(3)])
    assert "t_few" not in templates.PATTERNS


def _module_body() -> str:
    """tasks/next_genre.py without its docstring (what the README shows)."""
    src = (REPO / "tasks" / "next_genre.py").read_text()
    return src[src.index("from __future__"):]


def test_readme_block_is_the_module():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index(SECTION):], re.S)
    assert block is not None and block.group(1) == _module_body()


@pytest.fixture
def next_genre(prepared_ml100k, monkeypatch):
    """tasks.next_genre imported over the prepared ml-100k dir (a fresh import)."""
    import tasks

    tasks.register_prepared(str(prepared_ml100k))
    monkeypatch.setitem(tasks.REGISTERED, "ml100k", str(prepared_ml100k))
    sys.modules.pop("tasks.next_genre", None)
    import tasks.next_genre as module

    yield module
    from flanrec.data import families

    families.unregister("next_genre")
    for name in module.NAMES:
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
    sys.modules.pop("tasks.next_genre", None)


def test_user_family_renders_from_the_prepared_split(next_genre, prepared_ml100k):
    from flanrec.infer.taskinfo import find_task_info

    assert next_genre.NAMES == ["ml100k_next_genre_seqidx"]
    task = seqio.get_mixture_or_task("ml100k_next_genre_seqidx")
    # Nothing was written to the prepared dir for it: the task is the registration alone.
    assert not (prepared_ml100k / "tasks" / "next_genre_seqidx").exists()
    n = task.num_input_examples("validation")
    assert 900 < n <= 943
    ds = task.get_dataset({"inputs": 256, "targets": 32}, split="validation", shuffle=False)
    rows = list(ds.as_numpy_iterator())
    assert len(rows) == n
    first = rows[0]
    assert first["_task_name"] == b"ml100k_next_genre"
    assert b"Which genres" in first["inputs_pretokenized"] or first["_template_idx"] > 0
    assert first["targets_pretokenized"] and first["_template_type"] == b"seen"
    unseen = next(task.get_dataset({"inputs": 256, "targets": 32}, split="test_unseen",
                                   shuffle=False).as_numpy_iterator())
    assert unseen["_template_type"] == b"unseen"
    info = find_task_info("ml100k_next_genre_seqidx")
    assert info is not None and (info.family, info.target_kind) == ("next_genre", "text")


def test_later_epochs_are_phrased_again_deterministically(next_genre, prepared_ml100k):
    """With rephrase_epochs on, epoch 0 is the builder's phrasing and epoch 1 re-picks a seen
    template per example from (seed, epoch, key); two fresh pipelines agree (what exact
    resume relies on). Off (the default), every epoch is epoch 0's."""
    import gin

    from flanrec.data.prepared_tasks import register_family_task

    task = seqio.get_mixture_or_task("ml100k_next_genre_seqidx")
    n = task.num_input_examples("train")
    plain = task.get_dataset({"inputs": 256, "targets": 32}, split="train", shuffle=False,
                             num_epochs=2, try_in_mem_cache=False)
    texts = [r["inputs_pretokenized"] for r in plain.as_numpy_iterator()]
    assert texts[:n] == texts[n:]
    with gin.unlock_config():
        gin.bind_parameter("rephrase_epochs.enabled", True)
    try:
        register_family_task(str(prepared_ml100k), "next_genre")
    finally:
        with gin.unlock_config():
            gin.bind_parameter("rephrase_epochs.enabled", False)
    task = seqio.get_mixture_or_task("ml100k_next_genre_seqidx")

    def two_epochs() -> list[tuple[bytes, int, str]]:
        ds = task.get_dataset({"inputs": 256, "targets": 32}, split="train", shuffle=False,
                              num_epochs=2, try_in_mem_cache=False)
        return [(r["inputs_pretokenized"], int(r["_template_idx"]), r["_template_type"])
                for r in ds.as_numpy_iterator()]

    a = two_epochs()
    assert len(a) == 2 * n and a == two_epochs()
    first, second = a[:n], a[n:]
    assert {t for _, _, t in a} == {b"seen"}
    changed = sum(x[1] != y[1] for x, y in zip(first, second, strict=True))
    assert n // 4 < changed < 3 * n // 4  # two seen templates: about half keep theirs
    assert all(x[0] != y[0] for x, y in zip(first, second, strict=True) if x[1] != y[1])


@pytest.mark.slow
def test_train_job_trains_on_the_user_family(prepared_ml100k, tmp_path):
    from train_fixtures import FAST_COMPILE

    env = dict(os.environ, FLANREC_DATA_DIR=str(prepared_ml100k), PYTHONPATH=str(REPO),
               JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.train", "--gin_file=gin/models/tiny.gin",
         "--gin_file=gin/runs/finetune.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}",
         "--gin.MIXTURE_OR_TASK_NAME=ml100k_next_genre_seqidx",
         "--gin.MIXTURE_OR_TASK_MODULE=tasks.next_genre",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 32}",
         "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.INITIAL_CHECKPOINT_PATH=None",
         "--gin.EVAL_PERIOD=0", "--gin.LOG_PERIOD=1", "--gin.T5Config.vocab_size=4200"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 2/2" in proc.stdout
    assert (tmp_path / "run" / "checkpoint_2").exists()
