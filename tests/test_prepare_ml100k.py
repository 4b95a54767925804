"""`flanrec.prepare` end to end on the real MovieLens-100K (offline, once per session).

Checks the on-disk contract the seqio tasks and the trainer read: shard counts, exact
example counts (97,171 seq training windows, 943 eval queries), the ml100k-loo fingerprints,
the split and index files, the tries, and that failures leave nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flanrec.errors import UserError

ML100K_SEQUENCES_SHA = "148274ebc6f53f91a884ee9c1e87db45ffc42d4e1bbc53ad9a21242ba6c524e7"


def _info(root: Path, task: str) -> dict:
    return json.loads((root / "tasks" / task / "info.json").read_text())


def test_prepare_json_counts_and_fingerprints(prepared_ml100k):
    doc = json.loads((prepared_ml100k / "prepare.json").read_text())
    assert doc["dataset"] == "ml-100k" and doc["task_prefix"] == "ml100k"
    assert doc["fingerprints_match_ml100k_loo"] is True
    c = doc["counts"]
    assert (c["interactions"], c["users"], c["items"], c["train_windows"]) == (
        100_000, 943, 1682, 97_171)
    assert c["tasks"]["seq_seqidx"] == {"train": 97_171, "validation": 943, "test": 943,
                                        "test_unseen": 943}
    assert doc["index_suffixes"] == ["seqidx"]
    assert doc["options"]["train_vocab"] is True
    assert not Path(str(prepared_ml100k) + ".tmp").exists()


def _source(root: Path, task: str):
    from flanrec.data.prepared_tasks import prepared_source

    return prepared_source(str(root), str(root / "tasks" / task), _info(root, task))


def test_every_split_is_recorded_and_counted_exactly(prepared_ml100k):
    tasks = sorted(p.name for p in (prepared_ml100k / "tasks").iterdir())
    assert tasks == ["binary", "direct_seqidx", "grounding_seqidx", "profile", "rating",
                     "seq_seqidx", "seqrec_seqidx"]
    for task in tasks:
        info = _info(prepared_ml100k, task)
        assert info["source"] == "rendered" and info["family"]
        assert {"inputs", "targets", "_task_name", "_template_idx",
                "_template_type"} <= set(info["features"])
        assert sorted(p.name for p in (prepared_ml100k / "tasks" / task).iterdir()) == [
            "info.json"], task  # no rendered text is stored
    # Render every example of the seq task and of small ones: info.json must not lie.
    for task in ("seq_seqidx", "grounding_seqidx", "seqrec_seqidx"):
        info = _info(prepared_ml100k, task)
        source = _source(prepared_ml100k, task)
        for split, s in info["splits"].items():
            assert sum(1 for _ in source.examples(split)) == s["num_input_examples"], (
                task, split)
    assert _info(prepared_ml100k, "seq_seqidx")["splits"]["train"]["num_input_examples"] \
        == 97_171
    assert _info(prepared_ml100k, "direct_seqidx")["features"]["candidates"] == "string_list"
    # seqrec: windows of <= 40 targets, two tilings (a repeated window once).
    assert _info(prepared_ml100k, "seqrec_seqidx")["splits"]["train"]["num_input_examples"] \
        == 6_142


def test_prepared_bytes_grow_with_the_interactions(prepared_ml100k):
    """What is stored is the split, metadata, index, tries and vocabulary: a few MB for
    ml-100k, where rendered TFRecords of every family were ~120 MB."""
    total = sum(p.stat().st_size for p in prepared_ml100k.rglob("*") if p.is_file())
    assert total < 12_000_000, total


def test_split_files_reproduce_the_protocol(prepared_ml100k):
    seqs = (prepared_ml100k / "split" / "sequences.tsv").read_bytes()
    assert hashlib.sha256(seqs).hexdigest() == ML100K_SEQUENCES_SHA
    split = json.loads((prepared_ml100k / "split" / "split.json").read_text())
    assert len(split["users"]) == 943 and len(split["all_items"]) == 1682
    assert split["max_history"] == 50
    u = split["users"][0]
    assert u["user"] == "1" and len(u["train_items"]) == 270
    assert u["valid_item"] and u["test_item"]
    items = (prepared_ml100k / "split" / "items.tsv").read_text().splitlines()
    assert items[0] == "item\ttitle\tyear\tcategories" and len(items) == 1683
    assert items[1].startswith("1\tToy Story\t1995\t")


def test_index_and_trie(prepared_ml100k):
    from flanrec.data.indexing import ItemIndex
    from flanrec.data.prepared import load_trie
    from flanrec.data.trie import accepts
    from flanrec.data.vocab import vocabulary_for_prepared

    index = ItemIndex.load(prepared_ml100k / "index" / "sequential")
    assert index.method == "sequential" and len(index) == 1682
    trie, items = load_trie(str(prepared_ml100k / "index" / "sequential" / "trie.npz"))
    assert trie.num_items == 1682 and items[0] == "1"
    vocab = vocabulary_for_prepared(str(prepared_ml100k))
    assert trie.vocab_size == vocab.vocab_size and trie.eos_id == 1
    for item in ("1", "50", "1682"):
        assert accepts(trie, vocab.encode(index.id_of(item)) + [1])
    assert not accepts(trie, vocab.encode("99999") + [1])


def test_training_examples_never_target_held_out_items(prepared_ml100k):
    split = json.loads((prepared_ml100k / "split" / "split.json").read_text())
    held_out = {(u["user"], u["valid_item"]) for u in split["users"]} | {
        (u["user"], u["test_item"]) for u in split["users"]}
    pairs = {(e["user"], e["target_item"])
             for e in _source(prepared_ml100k, "seq_seqidx").examples("train")}
    assert len(pairs) > 90_000
    assert not pairs & held_out


def test_bad_options_fail_before_writing(tmp_path):
    from flanrec.prepare import PrepareOptions, prepare

    with pytest.raises(UserError, match="unknown families"):
        prepare(PrepareOptions(dataset="ml-100k", out=str(tmp_path / "o"),
                               families=("seq", "no_such_family")))
    with pytest.raises(UserError, match="unknown indexing"):
        prepare(PrepareOptions(dataset="ml-100k", out=str(tmp_path / "o"),
                               indexing=("alphabetical",)))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()


def test_summary_table_lists_every_task(prepared_ml100k):
    from flanrec.prepare import summary_table

    doc = json.loads((prepared_ml100k / "prepare.json").read_text())
    table = summary_table(doc, str(prepared_ml100k))
    for name in ("ml100k_seq_seqidx", "ml100k_direct_seqidx", "ml100k_rating",
                 "ml100k_binary", "ml100k_grounding_seqidx", "ml100k_profile"):
        assert name in table
    assert "97,171" in table and "fingerprints match: True" in table
