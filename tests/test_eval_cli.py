"""`python -m flanrec.eval` end to end on JSONL files written here, values computed by hand."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flanrec.baselines.__main__ import main as baselines_main
from flanrec.data import types
from flanrec.eval import cli as E

REPO = Path(__file__).resolve().parents[1]
L2 = math.log2

# Catalogue "1".."8". Seen items for the test stage: u1 {1,2,3,4}, u2 {2,3,6}, u3 {7,8,1,2}.
# Test ratings 5, 2, 4: binary labels (rating >= 4) 1, 0, 1.
USERS = [
    types.UserSequence(user="1", train_items=["1", "2", "3"], valid_item="4", test_item="5",
                       train_ratings=[3.0, 4.0, 5.0], valid_rating=4.0, test_rating=5.0),
    types.UserSequence(user="2", train_items=["2", "3"], valid_item="6", test_item="1",
                       train_ratings=[1.0, 2.0], valid_rating=3.0, test_rating=2.0),
    types.UserSequence(user="3", train_items=["7", "8", "1"], valid_item="2", test_item="3",
                       train_ratings=[5.0, 5.0, 4.0], valid_rating=5.0, test_rating=4.0),
]


def write_prepared(root: Path) -> Path:
    """A minimal prepared dir: split/split.json in the layout flanrec.prepare writes."""
    doc = {"max_history": 50, "all_items": [str(i) for i in range(1, 9)],
           "users": [dataclasses.asdict(u) for u in USERS]}
    (root / "split").mkdir(parents=True)
    (root / "split" / "split.json").write_text(json.dumps(doc))
    return root


def rec(task: str, mode: str, index: int, user: str, **fields) -> dict:
    base = {"task": task, "split": "test", "mode": mode, "index": index, "user": user,
            "inputs": "history ...", "targets": "", "target_item": "", "template_idx": 0,
            "template_type": "seen"}
    base.update(fields)
    return base


def write_shards(d: Path, task: str, mode: str, shards: list[list[dict]]) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(shards):
        p = d / f"{task}-{mode}.jsonl-{i:05d}-of-{len(shards):05d}"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths


def predict_shards() -> list[list[dict]]:
    t = "ml_seq"
    return [
        [rec(t, "predict", 0, "1", target_item="5", items=["4", "5", "6"], invalid=0,
             duplicates=2),  # 4 is seen -> [5, 6]: rank 1
         rec(t, "predict", 1, "2", target_item="1", items=["3", "7", "1"])],  # -> [7, 1]: rank 2
        [rec(t, "predict", 2, "3", target_item="3", items=["9"], invalid=1)],  # 9 invalid: miss
    ]


def test_single_task_flat_keys_table_and_png(tmp_path: Path):
    data = write_prepared(tmp_path / "data")
    write_shards(tmp_path / "infer", "ml_seq", "predict", predict_shards())
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.eval", "--predictions", str(tmp_path / "infer"),
         "--data_dir", str(data), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(3)) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2) / 3)
    assert m["precision@10"] == pytest.approx(2 / 3 / 10)
    assert m["coverage@10"] == pytest.approx(4 / 8)  # {5, 6, 7, 1}
    assert m["invalid"] == 2 and m["duplicates"] == 2 and m["masked"] == 2
    assert m["num_users"] == 3
    table = (out / "metrics.md").read_text()
    assert "| ml_seq |" in table and "NDCG@10" in table and "coverage@10" in table
    assert table in proc.stdout  # printed as well
    png = (out / "hr_ndcg_at_k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(out / "hr_ndcg_at_k.png")).shape[0] > 100
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_several_tasks_and_baselines_namespaced(tmp_path: Path):
    data = write_prepared(tmp_path / "data")
    infer = tmp_path / "infer"
    write_shards(infer, "ml_seq", "predict", predict_shards())
    d = "ml_direct"
    write_shards(infer, d, "score", [[
        # tie between 5 (target) and 6: pessimistic -> rank 2
        rec(d, "score", 0, "1", target_item="5", candidates=["5", "6", "7"],
            scores=[-1.0, -1.0, -3.0]),
        rec(d, "score", 1, "2", target_item="1", candidates=["1", "4", "5"],
            scores=[-0.5, -2.0, -1.0]),
        # 4 scores higher than the target: rank 2 (candidates are unseen items: a seen 8
        # among them would be refused, see tests/test_trust2_predictions.py)
        rec(d, "score", 2, "3", candidates=["3", "4", "6"], scores=[-2.0, -1.0, -3.0]),
    ]])
    b = "ml_binary"
    p_yes, labels = [0.9, 0.4, 0.3], [1, 0, 1]  # the labels the split's ratings give
    write_shards(infer, b, "score", [[
        rec(b, "score", i, str(i + 1), candidates=["no", "yes"],
            scores=[math.log(1 - p), math.log(p)], p_yes=p, label=y)
        for i, (p, y) in enumerate(zip(p_yes, labels, strict=True))]])
    write_shards(infer, "ml_rating", "rating", [[
        rec("ml_rating", "rating", 0, "1", expected_rating=4.0, target_rating=5,
            rating_probs={"1": 0, "2": 0, "3": 0.2, "4": 0.6, "5": 0.2}),
        rec("ml_rating", "rating", 1, "2", expected_rating=2.5, target_rating="2"),
        rec("ml_rating", "rating", 2, "3", expected_rating=4.0)]])  # target from the split
    base = tmp_path / "baselines"
    assert baselines_main(["--data_dir", str(data), "--model", "popularity",
                           "--out", str(base)]) == 0
    out = tmp_path / "eval"
    assert E.main(["--predictions", str(infer), "--baselines", str(base),
                   "--data_dir", str(data), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # the only predict task also gets flat keys
    assert m["hr@5"] == m["ml_seq/hr@5"] == pytest.approx(2 / 3)
    assert m["ml_direct/hr@1"] == pytest.approx(1 / 3)
    assert m["ml_direct/ndcg@5"] == pytest.approx((2 / L2(3) + 1) / 3)
    # binary: preds [1,0,0] vs labels [1,0,1] -> tp 1, fp 0, fn 1; AUC: 0.9 > 0.4, 0.3 < 0.4
    assert m["ml_binary/auc"] == pytest.approx(1 / 2)
    assert m["ml_binary/accuracy"] == pytest.approx(2 / 3)
    assert m["ml_binary/precision"] == pytest.approx(1.0)
    assert m["ml_binary/recall"] == pytest.approx(1 / 2)
    assert m["ml_binary/f1"] == pytest.approx(2 / 3)
    assert m["ml_rating/mae"] == pytest.approx(1.5 / 3)
    assert m["ml_rating/rmse"] == pytest.approx(math.sqrt((1 + 0.25 + 0) / 3))
    # popularity: counts 1,2,3 -> 2; 7,8 -> 1; order 1 2 3 7 8 4 5 6; test ranks 3, 1, 1
    assert m["popularity/hr@1"] == pytest.approx(2 / 3)
    assert m["popularity/ndcg@5"] == pytest.approx((1 / L2(4) + 2) / 3)
    table = (out / "metrics.md").read_text()
    assert "| popularity (baseline) |" in table and "| ml_direct |" in table
    assert "| ml_rating | rating |" in table and "| ml_binary | score |" in table


def test_gin_entry_point(tmp_path: Path):
    # A subprocess: `python -m` runs the module as __main__, and gin must find `evaluate`
    # registered exactly once there (a second registration fails once gin is locked).
    data = write_prepared(tmp_path / "data")
    write_shards(tmp_path / "infer", "ml_seq", "predict", predict_shards())
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.eval", "--gin_file=gin/runs/eval.gin",
         f"--gin.INFER_OUTPUT_DIR={tmp_path / 'infer'}",
         f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'eval'}", f"--gin.FLANREC_DATA_DIR={data}"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["hr@5"] == pytest.approx(2 / 3) and m["hr@1"] == pytest.approx(1 / 3)
    assert m["coverage@10"] == pytest.approx(4 / 8)
    assert (tmp_path / "eval" / "hr_ndcg_at_k.png").exists()


def test_without_a_prepared_dir_is_refused(tmp_path: Path, capsys, monkeypatch):
    # The targets must come from a split: there is no fallback to the file's own targets.
    monkeypatch.delenv("FLANREC_DATA_DIR", raising=False)
    write_shards(tmp_path / "infer", "ml_seq", "predict", predict_shards())
    rc = E.main(["--predictions", str(tmp_path / "infer"), "--out", str(tmp_path / "eval")])
    assert rc == 2
    assert "no prepared data dir" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------ bad input


def _error(tmp_path: Path, capsys, *extra: str) -> str:
    data = tmp_path / "data"
    if not data.exists():
        write_prepared(data)
    rc = E.main(["--predictions", str(tmp_path / "infer"), "--out", str(tmp_path / "eval"),
                 "--data_dir", str(data), "--no_plot", *extra])
    assert rc == 2
    return capsys.readouterr().err


def test_malformed_json_names_file_and_line(tmp_path: Path, capsys):
    (p0,) = write_shards(tmp_path / "infer", "ml_seq", "predict", [predict_shards()[0]])
    p0.write_text(p0.read_text() + '{"task": "ml_seq", oops\n')
    err = _error(tmp_path, capsys)
    assert f"{p0}:3" in err and "not valid JSON" in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("field,value,expect", [
    ("items", None, "field 'items' missing"),
    ("items", "5 6", "should be a list of strings"),
    ("index", "0", "should be an integer"),
    ("target_item", 5, "non-empty item id"),
])
def test_bad_field_names_file_line_and_field(tmp_path: Path, capsys, field, value, expect):
    rows = predict_shards()[0]
    if value is None:
        del rows[1][field]
    else:
        rows[1][field] = value
    (p0,) = write_shards(tmp_path / "infer", "ml_seq", "predict", [rows])
    err = _error(tmp_path, capsys)
    assert f"{p0}:2" in err and expect in err


def test_missing_shard_and_duplicate_index(tmp_path: Path, capsys):
    paths = write_shards(tmp_path / "infer", "ml_seq", "predict", predict_shards())
    paths[1].unlink()
    err = _error(tmp_path, capsys)
    assert "missing [1]" in err
    rows = predict_shards()[0]
    rows[1]["index"] = 0
    (p0,) = write_shards(tmp_path / "infer2", "ml_seq", "predict", [rows])
    rc = E.main(["--predictions", str(tmp_path / "infer2"), "--out", str(tmp_path / "e2"),
                 "--data_dir", str(tmp_path / "data")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{p0}:2" in err and f"already appeared at {p0}:1" in err


def test_baselines_on_another_split_refused(tmp_path: Path, capsys):
    data = write_prepared(tmp_path / "data")
    write_shards(tmp_path / "infer", "ml_seq", "predict", predict_shards())
    assert baselines_main(["--data_dir", str(data), "--model", "popularity", "--split",
                           "validation", "--out", str(tmp_path / "base")]) == 0
    err = _error(tmp_path, capsys, "--baselines", str(tmp_path / "base"))
    assert "'validation'" in err and "test" in err
