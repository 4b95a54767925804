"""`flanrec.eval` takes every target from the split, never from the predictions file (issue 13).

A prepared dir with a 943-user leave-one-out split is written here; the popularity baseline
(the real CLI) writes a genuine predictions file for it, which is then doctored the way the
issue found: targets copied from each list's first item (HR@10 = 1.0, exit 0 before this
fix), users repeated, users that do not exist, a file covering 256 of the 943 users.
Rating and binary records get their labels checked against the split's ratings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flanrec.baselines.__main__ import main as baselines_main
from flanrec.data import types
from flanrec.eval import cli as E

REPO = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 943, 120


def make_split(seed: int = 0) -> types.Split:
    rng = np.random.default_rng(seed)
    users = []
    for u in range(1, N_USERS + 1):
        n = int(rng.integers(4, 9))
        items = [str(i) for i in rng.choice(np.arange(1, N_ITEMS + 1), size=n, replace=False)]
        ratings = [float(r) for r in rng.integers(1, 6, size=n)]
        users.append(types.UserSequence(
            user=str(u), train_items=items[:-2], valid_item=items[-2], test_item=items[-1],
            train_ratings=ratings[:-2], valid_rating=ratings[-2], test_rating=ratings[-1]))
    return types.Split(users=users, all_items=[str(i) for i in range(1, N_ITEMS + 1)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, types.Split, Path]:
    """(prepared dir, split, popularity predictions dir on the test split)."""
    root = tmp_path_factory.mktemp("trust_eval")
    split = make_split()
    (root / "data" / "split").mkdir(parents=True)
    (root / "data" / "split" / "split.json").write_text(json.dumps({
        "max_history": 50, "all_items": split.all_items,
        "users": [dataclasses.asdict(u) for u in split.users]}))
    assert baselines_main(["--data_dir", str(root / "data"), "--model", "popularity",
                           "--split", "test", "--out", str(root / "pop")]) == 0
    return root / "data", split, root / "pop"


def read_rows(pred_dir: Path) -> list[dict]:
    (path,) = sorted(pred_dir.glob("popularity-predict.jsonl-*"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(d: Path, rows: list[dict], task: str = "popularity", mode: str = "predict"
               ) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{task}-{mode}.jsonl-00000-of-00001"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_eval(capsys):
    """The eval job in-process (its `main`, exactly what `python -m flanrec.eval` runs)."""
    def run(pred: Path, data: Path, out: Path, *extra: str) -> Result:
        capsys.readouterr()
        rc = E.main(["--predictions", str(pred), "--data_dir", str(data), "--out", str(out),
                     "--no_plot", *extra])
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)
    return run


def error_line(proc: Result | subprocess.CompletedProcess) -> str:
    # The job front end (flanrec.frontend.jobs) prefixes the job: "flanrec.eval: error: ...".
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith(("error:", "flanrec.eval: error:"))]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_doctored_targets_are_an_error_not_hr_1(prepared, tmp_path, run_eval):
    data, split, pop = prepared
    # The genuine file scores what its lists deserve against the split's targets.
    proc = run_eval(pop, data, tmp_path / "genuine")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "genuine" / "metrics.json").read_text())
    targets = {u.user: u.test_item for u in split.users}
    hits = [targets[r["user"]] in r["items"][:10] for r in read_rows(pop)]
    assert m["hr@10"] == pytest.approx(np.mean(hits)) and m["hr@10"] < 0.5
    assert m["num_users"] == N_USERS and "users_in_split" not in m
    assert "Partial" not in proc.stdout
    # The doctored file of the issue: every record's target is its list's first item
    # (before this fix: HR@1 = HR@10 = 1.0 and exit code 0).
    rows = read_rows(pop)
    for r in rows:
        r["target_item"] = r["items"][0]
    path = write_rows(tmp_path / "doctored", rows)
    proc = subprocess.run(  # the real command line: exit code 2 and one line on stderr
        [sys.executable, "-m", "flanrec.eval", "--predictions", str(tmp_path / "doctored"),
         "--data_dir", str(data), "--out", str(tmp_path / "eval"), "--no_plot"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stdout
    err = error_line(proc)
    first = next(r for r in rows if r["target_item"] != split.users[int(r["user"]) - 1].test_item)
    assert f"user {first['user']!r} has target_item {first['target_item']!r}" in err
    assert f"{path.name}:" in err and "split's test item" in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_file_without_targets_is_scored_from_the_split(prepared, tmp_path, run_eval):
    data, _, pop = prepared
    rows = read_rows(pop)
    for r in rows:
        del r["target_item"]
        del r["targets"]
    write_rows(tmp_path / "no_targets", rows)
    assert run_eval(tmp_path / "no_targets", data, tmp_path / "a").returncode == 0
    assert run_eval(pop, data, tmp_path / "b").returncode == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert a == json.loads((tmp_path / "b" / "metrics.json").read_text())


def test_duplicate_and_unknown_users_are_errors(prepared, tmp_path, run_eval):
    data, _, pop = prepared
    rows = read_rows(pop)
    dup = [dict(r) for r in rows]
    dup[5] = dict(dup[4], index=5)  # user of line 5 again on line 6 (index distinct)
    write_rows(tmp_path / "dup", dup)
    proc = run_eval(tmp_path / "dup", data, tmp_path / "e1")
    assert proc.returncode == 2
    assert f"user {rows[4]['user']!r} appears again at" in error_line(proc)
    assert ":6 (first at" in error_line(proc)
    ghost = [dict(r) for r in rows]
    ghost[7]["user"] = "no_such_user"
    write_rows(tmp_path / "ghost", ghost)
    proc = run_eval(tmp_path / "ghost", data, tmp_path / "e2")
    assert proc.returncode == 2
    assert "user 'no_such_user' does not exist in the split" in error_line(proc)


def test_partial_file_needs_allow_partial_and_then_says_so(prepared, tmp_path, run_eval):
    data, _, pop = prepared
    write_rows(tmp_path / "part", read_rows(pop)[:256])
    proc = run_eval(tmp_path / "part", data, tmp_path / "e")
    assert proc.returncode == 2
    err = error_line(proc)
    assert f"covers 256 of the {N_USERS} users of the test split" in err
    assert "--allow_partial" in err
    proc = run_eval(tmp_path / "part", data, tmp_path / "e", "--allow_partial")
    assert proc.returncode == 0, proc.stderr
    note = f"scored 256 of {N_USERS} users"
    assert note in (tmp_path / "e" / "metrics.md").read_text() and note in proc.stdout
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["num_users"] == 256 and m["users_in_split"] == N_USERS


def test_baseline_dirs_get_the_same_checks(prepared, tmp_path, run_eval):
    data, _, pop = prepared
    rows = read_rows(pop)
    for r in rows:
        r["target_item"] = r["items"][0]
    write_rows(tmp_path / "doctored_base", rows)
    proc = run_eval(pop, data, tmp_path / "e", "--baselines", str(tmp_path / "doctored_base"))
    assert proc.returncode == 2 and "doctored_base" in error_line(proc)


def rating_rows(split: types.Split, stage: str = "test") -> list[dict]:
    rows = []
    for i, u in enumerate(split.users):
        rating = u.test_rating if stage == "test" else u.valid_rating
        rows.append({"task": "x_rating", "split": stage, "mode": "rating", "index": i,
                     "user": u.user, "target_item": u.test_item, "expected_rating": 3.0,
                     "target_rating": rating})
    return rows


def test_rating_targets_come_from_the_split(prepared, tmp_path, run_eval):
    data, split, _ = prepared
    rows = rating_rows(split)
    write_rows(tmp_path / "ok", rows, "x_rating", "rating")
    assert E.main(["--predictions", str(tmp_path / "ok"), "--data_dir", str(data), "--out",
                   str(tmp_path / "e"), "--no_plot"]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    truth = np.array([u.test_rating for u in split.users])
    assert m["mae"] == pytest.approx(np.mean(np.abs(truth - 3.0)))
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((truth - 3.0) ** 2)))
    rows[3]["target_rating"] = 3.0 if split.users[3].test_rating != 3.0 else 4.0
    write_rows(tmp_path / "bad", rows, "x_rating", "rating")
    proc = run_eval(tmp_path / "bad", data, tmp_path / "e2")
    assert proc.returncode == 2
    assert f"user '4' has target_rating {rows[3]['target_rating']!r}, but the split's test " \
           f"rating is {split.users[3].test_rating:g}" in error_line(proc)


def test_binary_labels_come_from_the_split(prepared, tmp_path, run_eval):
    data, split, _ = prepared
    rows = []
    for i, u in enumerate(split.users):
        rows.append({"task": "x_binary", "split": "validation", "mode": "score", "index": i,
                     "user": u.user, "target_item": u.valid_item, "candidates": ["no", "yes"],
                     "scores": [-1.0, -0.5], "p_yes": 0.6,
                     "label": int(u.valid_rating >= 4)})
    write_rows(tmp_path / "ok", rows, "x_binary", "score")
    assert run_eval(tmp_path / "ok", data, tmp_path / "e").returncode == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    positives = np.mean([u.valid_rating >= 4 for u in split.users])
    assert m["accuracy"] == pytest.approx(positives)  # p_yes 0.6 everywhere: all "yes"
    flipped = [dict(r, label=1 - r["label"]) if k == 10 else r for k, r in enumerate(rows)]
    write_rows(tmp_path / "bad", flipped, "x_binary", "score")
    proc = run_eval(tmp_path / "bad", data, tmp_path / "e2")
    assert proc.returncode == 2 and "user '11' has label" in error_line(proc)
    assert "(like = rating >= 4)" in error_line(proc)


def test_scored_candidates_must_hold_the_split_target(prepared, tmp_path, run_eval):
    data, split, _ = prepared
    rows = []
    for i, u in enumerate(split.users):
        cands = [u.test_item] + [c for c in split.all_items[:5] if c != u.test_item][:4]
        rows.append({"task": "x_direct", "split": "test", "mode": "score", "index": i,
                     "user": u.user, "candidates": cands, "scores": [0.0] * len(cands)})
    rows[2]["candidates"] = [c for c in rows[2]["candidates"] if c != split.users[2].test_item]
    rows[2]["scores"] = rows[2]["scores"][: len(rows[2]["candidates"])]
    write_rows(tmp_path / "bad", rows, "x_direct", "score")
    proc = run_eval(tmp_path / "bad", data, tmp_path / "e")
    assert proc.returncode == 2
    assert f"user '3': the split's test item {split.users[2].test_item!r} is not among the " \
           "record's candidates" in error_line(proc)
