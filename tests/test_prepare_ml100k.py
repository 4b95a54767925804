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


def _records(paths):
    """TFRecord payloads read with plain Python (an independent check of TF's writer)."""
    import struct

    for path in paths:
        with open(path, "rb") as f:
            while header := f.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                payload = f.read(length)
                assert len(payload) == length and len(f.read(4)) == 4, path
                yield payload


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


def test_every_split_is_sharded_and_counted_exactly(prepared_ml100k):
    tasks = sorted(p.name for p in (prepared_ml100k / "tasks").iterdir())
    assert tasks == ["binary", "direct_seqidx", "grounding_seqidx", "profile", "rating",
                     "seq_seqidx", "seqrec_seqidx"]
    for task in tasks:
        info = _info(prepared_ml100k, task)
        assert {"inputs", "targets", "_task_name", "_template_idx",
                "_template_type"} <= set(info["features"])
        for split, s in info["splits"].items():
            files = [prepared_ml100k / "tasks" / task / f for f in s["files"]]
            assert len(files) >= 2, (task, split)
            assert all(f.stat().st_size > 0 for f in files), (task, split)
    # Count every record of the seq task and of a small one: info.json must not lie.
    for task in ("seq_seqidx", "grounding_seqidx", "seqrec_seqidx"):
        info = _info(prepared_ml100k, task)
        for split, s in info["splits"].items():
            paths = [prepared_ml100k / "tasks" / task / f for f in s["files"]]
            assert sum(1 for _ in _records(paths)) == s["num_input_examples"], (task, split)
    assert _info(prepared_ml100k, "seq_seqidx")["splits"]["train"]["num_input_examples"] \
        == 97_171
    assert _info(prepared_ml100k, "direct_seqidx")["features"]["candidates"] == "string_list"
    # seqrec: windows of <= 40 targets, two tilings, every train item but the first a target.
    assert _info(prepared_ml100k, "seqrec_seqidx")["splits"]["train"]["num_input_examples"] \
        == 6_242


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
    from tensorflow.core.example import example_pb2

    info = _info(prepared_ml100k, "seq_seqidx")
    paths = [prepared_ml100k / "tasks" / "seq_seqidx" / f
             for f in info["splits"]["train"]["files"]]
    pairs: set[tuple[str, str]] = set()
    for raw in _records(paths):
        feats = example_pb2.Example.FromString(raw).features.feature
        pairs.add((feats["user"].bytes_list.value[0].decode(),
                   feats["target_item"].bytes_list.value[0].decode()))
    assert len(pairs) > 90_000
    assert not pairs & held_out


def test_bad_options_fail_before_writing(tmp_path):
    from flanrec.prepare import PrepareOptions, prepare

    with pytest.raises(UserError, match="num_shards"):
        prepare(PrepareOptions(dataset="ml-100k", out=str(tmp_path / "o"), num_shards=1))
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
