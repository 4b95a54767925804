"""The README's "Add your own instruction task" example runs, verbatim, on prepared ml-100k.

EXAMPLE is the README's code block; when README.md carries the section, the test also checks
that the two are still identical, so the documented example cannot rot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import seqio

SECTION = "### Add your own instruction task"
EXAMPLE = '''import seqio

import tasks  # noqa: F401  (registers the ml100k_* tasks from $FLANREC_DATA_DIR)
from flanrec.data.seqio_tasks import register_jsonl_task

# The vocabulary the recommendation tasks tokenize with: tasks of one mixture must share it.
vocab = seqio.get_mixture_or_task("ml100k_rec_mix").output_features["targets"].vocabulary

# my_reviews.jsonl: {"inputs": "Summarize: ...", "targets": "..."} per line (a glob or a list
# of files also works; give several files so that hosts can shard by file).
register_jsonl_task("my_review_summaries", {"train": "my_reviews.jsonl"}, vocab)

seqio.MixtureRegistry.add("ml100k_rec_plus_mine", [
    ("ml100k_rec_mix", 0.9),       # rates are relative: 90% recommendation examples
    ("my_review_summaries", 0.1),  # and 10% yours
])

ds = seqio.get_dataset(
    "ml100k_rec_plus_mine", {"inputs": 512, "targets": 64},
    seqio.EncDecFeatureConverter(pack=True), shuffle=True, num_epochs=None, seed=0)
print(next(iter(ds.as_numpy_iterator()))["encoder_input_tokens"].shape)  # (512,): packed
'''


def test_readme_copy_matches():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if SECTION not in text:
        pytest.fail("README.md lost its 'Add your own instruction task' section")
    block = re.search(r"```python\n(.*?)```", text[text.index(SECTION):], re.S)
    assert block is not None and block.group(1) == EXAMPLE


def test_readme_example_runs(prepared_ml100k, tmp_path, monkeypatch, capsys):
    import tasks

    tasks.register_prepared(str(prepared_ml100k))
    rows = [{"inputs": f"Summarize: the movie number {i} was long but moving.",
             "targets": f"long, moving film {i}"} for i in range(20)]
    (tmp_path / "my_reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(EXAMPLE, "README example", "exec"), {})
        assert capsys.readouterr().out.strip() == "(512,)"
        mix = seqio.get_mixture_or_task("ml100k_rec_plus_mine")
        assert "my_review_summaries" in {t.name for t in mix.tasks}
    finally:
        for name in ("ml100k_rec_plus_mine",):
            if name in seqio.MixtureRegistry.names():
                seqio.MixtureRegistry.remove(name)
        if "my_review_summaries" in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove("my_review_summaries")
