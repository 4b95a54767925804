"""flanrec.data.writer: TFRecord shards + info.json, checked against seqio's own encoder."""

from __future__ import annotations

import json
import math

import pytest
import seqio
import tensorflow as tf
from google.protobuf import json_format

from flanrec.data import writer  # noqa: E402

EXAMPLE = {"inputs": "User 1 watched 5, 7. Next?", "targets": "9", "_task_name": "ml100k_seq",
           "_template_idx": 3, "_template_type": "seen", "flag": True, "score": 2.5,
           "candidates": ["9", "12", "3"], "ids": [4, -1, 7]}


def test_bytes_match_seqio_dict_to_tfexample():
    from tensorflow.core.example import example_pb2

    schema = writer.infer_schema(EXAMPLE)
    assert schema["flag"] == "int64" and schema["candidates"] == "string_list"
    ours = example_pb2.Example.FromString(writer.to_tfexample_bytes(EXAMPLE, schema))
    as_int = dict(EXAMPLE, flag=1)  # protobuf 7 rejects bools in seqio's path: cast first
    theirs = seqio.dict_to_tfexample(as_int)
    assert ours == theirs


ODD = {"inputs": "", "targets": "Ünïcödé ✓ " * 40, "n": 0, "big": 2**63 - 1, "neg": -2**63,
       "x": -0.0, "names": [], "mixed": ["", "a" * 200, "é"], "zs": [0, 300, -5]}


def test_bytes_are_deterministic_across_processes(tmp_path):
    """Same example, same bytes in another process. protobuf's map order follows a
    per-process hash seed (upb), so without deterministic serialization every prepare run
    wrote different TFRecord bytes for identical examples."""
    import subprocess
    import sys

    examples = [EXAMPLE, ODD, dict(reversed(list(EXAMPLE.items())))]
    schemas = [writer.infer_schema(ex) for ex in examples]
    ours = [writer.to_tfexample_bytes(ex, sc).hex()
            for ex, sc in zip(examples, schemas, strict=True)]
    assert ours[2] == ours[0]  # insertion order does not matter either
    (tmp_path / "ex.json").write_text(json.dumps([examples, schemas]))
    code = ("import json, sys; from flanrec.data import writer; "
            "exs, schemas = json.load(open(sys.argv[1])); "
            "print(json.dumps([writer.to_tfexample_bytes(e, s).hex() "
            "for e, s in zip(exs, schemas)]))")
    # A fresh process: another address-space layout, hence another upb hash seed.
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ex.json")],
                         capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ours
    for example, hexed in zip(examples[:2], ours[:2], strict=True):
        theirs = seqio.dict_to_tfexample({k: int(v) if isinstance(v, bool) else v
                                          for k, v in example.items() if v != []})
        for key, value in example.items():  # seqio stores [] as a float list; ours by schema
            if value == []:
                theirs.features.feature[key].bytes_list.SetInParent()
        # Compared as dicts and as deterministic bytes. Not with `==` on the messages: for
        # messages holding a map, upb's equality depends on the map's internal order, so it
        # failed in some processes (the full suite) and passed in others.
        ours_msg = tf.train.Example.FromString(bytes.fromhex(hexed))
        assert json_format.MessageToDict(ours_msg) == json_format.MessageToDict(theirs)
        if example is EXAMPLE:
            assert bytes.fromhex(hexed) == theirs.SerializeToString(deterministic=True)
    # ODD's -0.0 keeps its sign in our bytes. seqio's path (tf.constant) turned it into +0.0
    # in some processes of the full suite, so ODD is compared with it as values, not bytes.
    x = tf.train.Example.FromString(bytes.fromhex(ours[1])).features.feature["x"]
    assert math.copysign(1.0, x.float_list.value[0]) == -1.0


def test_schema_violations_name_the_example_and_feature(tmp_path):
    bad = [EXAMPLE, dict(EXAMPLE, targets=5)]
    with pytest.raises(writer.ExampleSchemaError, match=r"example #1: feature 'targets'"):
        writer.write_split(str(tmp_path), "train", bad)
    with pytest.raises(writer.ExampleSchemaError, match="not in the schema"):
        writer.to_tfexample_bytes(dict(EXAMPLE, extra="x"), writer.infer_schema(EXAMPLE))
    with pytest.raises(writer.ExampleSchemaError, match="missing"):
        writer.to_tfexample_bytes({"inputs": "x"}, writer.infer_schema(EXAMPLE))
    with pytest.raises(writer.ExampleSchemaError, match="expected str"):
        writer.infer_schema({"x": {"a": 1}})


def test_round_robin_shards_info_and_seqio_source(tmp_path):
    from flanrec.data.seqio_tasks import tfrecord_source

    rows = [dict(EXAMPLE, targets=str(i), _template_idx=i) for i in range(7)]
    info = writer.write_task(str(tmp_path), {"train": rows, "validation": [], "test": rows[:1]},
                             num_shards=3, metadata={"family": "seq"})
    assert info["splits"]["train"]["num_input_examples"] == 7
    assert "validation" not in info["splits"]  # an empty split is not advertised
    assert not list(tmp_path.glob("validation*"))
    assert writer.read_info(str(tmp_path)) == json.loads((tmp_path / "info.json").read_text())
    source = tfrecord_source(str(tmp_path))
    assert source.num_input_examples("train") == 7
    shards = [[int(ex["_template_idx"]) for ex in source.get_dataset(
        "train", shuffle=False, shard_info=seqio.ShardInfo(i, 3)).as_numpy_iterator()]
        for i in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    ex = next(iter(source.get_dataset("test", shuffle=False).as_numpy_iterator()))
    assert ex["candidates"].tolist() == [b"9", b"12", b"3"] and ex["ids"].tolist() == [4, -1, 7]
    assert ex["score"] == pytest.approx(2.5) and ex["flag"] == 1


def test_read_info_rejects_damaged_files(tmp_path):
    (tmp_path / "info.json").write_text("{not json")
    with pytest.raises(ValueError, match="info.json: line 1"):
        writer.read_info(str(tmp_path))
    (tmp_path / "info.json").write_text(json.dumps({
        "format": writer.INFO_FORMAT, "features": {"x": "complex"}, "splits": {}}))
    with pytest.raises(ValueError, match="kind 'complex'"):
        writer.read_info(str(tmp_path))
