"""Fusing several runs' prediction files: matching, contract, errors."""

import json
import os

import pytest

from flanrec.ensemble import files


def _write(d, name, recs):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def _rec(index, items, scores, target="t", user="u"):
    return {"task": "ml_seq", "split": "test", "mode": "predict", "index": index, "user": user,
            "inputs": "x", "targets": "y", "target_item": target, "template_idx": 0,
            "template_type": "seen", "items": items, "ids": items, "scores": scores,
            "invalid": 0, "duplicates": 1}


def test_fuse_two_runs_rrf_and_mean(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, "ml_seq-predict.jsonl-00000-of-00002", [_rec(0, ["1", "2"], [-1.0, -2.0])])
    _write(a, "ml_seq-predict.jsonl-00001-of-00002", [_rec(1, ["3", "4"], [-1.0, -3.0])])
    _write(b, "ml_seq-predict.jsonl-00000-of-00001",
           [_rec(0, ["2", "1"], [-0.5, -4.0]), _rec(1, ["4", "3"], [-1.0, -1.5])])
    out = str(tmp_path / "out")
    paths = files.fuse_prediction_dirs([a, b], out, method="rrf")
    assert [os.path.basename(p) for p in paths] == ["ml_seq-ens-predict.jsonl-00000-of-00001"]
    recs = [json.loads(x) for x in open(paths[0])]
    assert [r["index"] for r in recs] == [0, 1]
    # RRF ties (1/61 + 1/62 each): the item ranked first in member 0 wins.
    assert recs[0]["items"] == ["1", "2"] and recs[0]["duplicates"] == 2
    mean = files.fuse_runs([files.read_predictions(a), files.read_predictions(b)], "mean")
    assert mean[0]["items"] == ["2", "1"]  # (-2-0.5)/2 = -1.25 > (-1-4)/2 = -2.5
    assert mean[1]["scores"] == pytest.approx([-1.25, -2.0])


def test_members_must_match(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, "t-predict.jsonl-00000-of-00001", [_rec(0, ["1"], [0.0])])
    _write(b, "t-predict.jsonl-00000-of-00001", [_rec(1, ["1"], [0.0])])
    with pytest.raises(ValueError, match="different examples"):
        files.fuse_prediction_dirs([a, b], str(tmp_path / "o"))
    _write(b, "t-predict.jsonl-00000-of-00001", [_rec(0, ["1"], [0.0], target="other")])
    with pytest.raises(ValueError, match="disagree on the target"):
        files.fuse_prediction_dirs([a, b], str(tmp_path / "o"))


def test_malformed_line_names_file_and_line(tmp_path):
    a = str(tmp_path / "a")
    _write(a, "t-predict.jsonl-00000-of-00001", [_rec(0, ["1"], [0.0])])
    with open(os.path.join(a, "t-predict.jsonl-00000-of-00001"), "a") as f:
        f.write('{"task": "t", "split": "test"}\n')
    with pytest.raises(ValueError, match=r"t-predict.jsonl-00000-of-00001:2: not a predict"):
        files.read_predictions(a)
    with pytest.raises(FileNotFoundError, match="no '\\*-predict"):
        files.read_predictions(str(tmp_path / "empty"))


def test_single_task_members_with_different_names_are_matched_by_index(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ra, rb = _rec(0, ["1", "2"], [-1.0, -2.0]), _rec(0, ["2", "3"], [-1.0, -2.0])
    ra["task"], rb["task"] = "seq-t0", "seq-t1"
    _write(a, "seq-t0-predict.jsonl-00000-of-00001", [ra])
    _write(b, "seq-t1-predict.jsonl-00000-of-00001", [rb])
    (path,) = files.fuse_prediction_dirs([a, b], str(tmp_path / "o"), method="vote")
    (rec,) = [json.loads(x) for x in open(path)]
    assert rec["task"] == "seq-t0-ens" and rec["items"] == ["2", "1"]  # K = members' K
