"""A prepared dir without ``stats`` (an older flanrec's): the 'auto' settings say, in one line,
which dir and which command; `prepare --add_stats DIR` measures exactly what prepare records
and replaces prepare.json atomically; the settings then derive as from a fresh prepare."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from flanrec.data import derived, prepared
from flanrec.errors import ConfigError
from flanrec.prepare import cli as prepare_cli

SETTINGS = {"MIXTURE_OR_TASK_NAME": "{prefix}_seqrec_{indexing}", "PACK": "auto",
            "TASK_FEATURE_LENGTHS": "auto", "EVAL_TASK_FEATURE_LENGTHS": "auto",
            "VOCAB_SIZE": "auto", "TRAIN_STEPS": "auto", "TRAIN_EPOCHS": 3, "BATCH_SIZE": 8,
            "EVAL_PERIOD": "auto", "CHECKPOINT_PERIOD": "auto"}


def write_log(path: Path, users: int = 40, items: int = 30, seed: int = 0) -> Path:
    """A small rated log (user_id,item_id,timestamp,rating), 5 to 14 items per user."""
    rng = random.Random(seed)
    lines = ["user_id,item_id,timestamp,rating"]
    for u in range(users):
        for t, i in enumerate(rng.sample(range(items), rng.randint(5, 14))):
            lines.append(f"u{u},i{i},{1000 + t},{rng.choice([1, 2, 3, 4, 4, 5, 5])}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("add_stats")
    log = write_log(root / "log.csv")
    out = root / "out"
    assert prepare_cli.main(["--dataset", "csv", "--raw_dir", str(log), "--rating_col",
                             "rating", "--train_vocab", "--vocab_size", "600", "--families",
                             "seqrec,binary", "--task_prefix", "tiny", "--out",
                             str(out)]) == 0
    return out


def _without_stats(src: Path, dst: Path) -> dict:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "prepare.json").read_text())
    del doc["stats"]
    (dst / "prepare.json").write_text(json.dumps(doc, indent=1))
    return doc


def test_add_stats_measures_what_prepare_records(prepared_dir, tmp_path, capsys):
    fresh = json.loads((prepared_dir / "prepare.json").read_text())
    old = tmp_path / "old"
    before = _without_stats(prepared_dir, old)
    with pytest.raises(ConfigError) as e:
        derived.derive(SETTINGS, before, str(old))
    message = str(e.value)
    assert "\n" not in message and str(old) in message
    assert f"python -m flanrec.prepare --add_stats {old}" in message
    assert prepare_cli.main(["--add_stats", str(old)]) == 0
    assert "stats added" in capsys.readouterr().out
    after = json.loads((old / "prepare.json").read_text())
    # Small splits are measured whole by both: the very same numbers, pairs included.
    assert after["stats"] == fresh["stats"]
    assert {k: v for k, v in after.items() if k != "stats"} == before  # nothing else changed
    assert not [p.name for p in old.iterdir() if p.name.startswith(".prepare.json.tmp")]
    assert derived.derive(SETTINGS, after, "/d") == derived.derive(SETTINGS, fresh, "/d")


def test_add_stats_on_a_dir_that_is_not_prepared_is_one_line(tmp_path, capsys):
    assert prepare_cli.main(["--add_stats", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "prepare.json: not found" in err


def test_a_dir_of_older_examples_is_told_apart_and_add_stats_keeps_its_revision(
        prepared_dir, tmp_path):
    """prepare records which examples it writes; a dir from before (no revision: ML-100K's
    6,242 windows) gets a one-line warning naming it, and --add_stats, which measures the old
    examples, does not pass them off as current."""
    fresh = json.loads((prepared_dir / "prepare.json").read_text())
    assert fresh["examples_revision"] == prepared.EXAMPLES_REVISION
    assert prepared.stale_examples_warning(fresh, str(prepared_dir)) is None
    old = tmp_path / "old"
    doc = _without_stats(prepared_dir, old)
    del doc["examples_revision"]
    (old / "prepare.json").write_text(json.dumps(doc, indent=1))
    line = prepared.stale_examples_warning(doc, str(old))
    assert line and "\n" not in line and str(old) in line
    assert f"examples revision 1; this one writes {prepared.EXAMPLES_REVISION}" in line
    assert prepare_cli.main(["--add_stats", str(old)]) == 0
    after = json.loads((old / "prepare.json").read_text())
    assert "examples_revision" not in after and "stats" in after
    assert prepared.stale_examples_warning(after, str(old)) == line


def test_the_quickstart_warns_on_a_dir_of_older_examples(prepared_dir, tmp_path, capsys):
    from flanrec.quickstart import job as quickstart

    old = tmp_path / "old"
    doc = json.loads((prepared_dir / "prepare.json").read_text())
    shutil.copytree(prepared_dir, old)
    del doc["examples_revision"]
    (old / "prepare.json").write_text(json.dumps(doc, indent=1))
    # TRAIN_EPOCHS=0 stops it at the settings, right after the prepare stage is skipped
    code = quickstart.main(["--dataset", "csv", "--data_dir", str(old), "--model_dir",
                            str(tmp_path / "run"), "--gin", "TRAIN_EPOCHS=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"quickstart: warning: {old} was prepared by an older flanrec" in err
    assert (old / "prepare.json").read_text() == json.dumps(doc, indent=1)  # left as it is


def test_every_job_that_registers_an_older_dirs_tasks_warns_once(prepared_dir, tmp_path,
                                                                  caplog):
    """train, infer and eval read a dir through task registration, so an older dir is named
    there too (once per process), not only by the quickstart; a current dir says nothing."""
    from flanrec.data import prepared_tasks

    def older_copy(name: str) -> tuple[Path, dict]:
        old = tmp_path / name
        shutil.copytree(prepared_dir, old)
        doc = json.loads((old / "prepare.json").read_text())
        del doc["examples_revision"]
        (old / "prepare.json").write_text(json.dumps(doc, indent=1))
        return old, doc

    def stale() -> list[str]:
        return [r.message for r in caplog.records if "older flanrec" in r.message]

    old, doc = older_copy("old_registered")
    old_family, doc_family = older_copy("old_family")
    with caplog.at_level("WARNING", logger="flanrec.tasks"):
        assert prepared_tasks.register_prepared(str(prepared_dir), prefix="current")
        assert stale() == []
        prepared_tasks.register_prepared(str(old), prefix="older")
        prepared_tasks.register_prepared(str(old), prefix="older_again")
        assert stale() == [prepared.stale_examples_warning(doc, str(old))]
        prepared_tasks.register_family_task(str(old_family), "seqrec", prefix="older_family")
    assert stale()[1:] == [prepared.stale_examples_warning(doc_family, str(old_family))]
