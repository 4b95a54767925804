"""Predictions, shards and eval: nothing forged, edited or mixed in is scored.

One real `flanrec.prepare` output (24 users, 30 items, 5 candidates per direct query) is the
split every file here is checked against. Prediction files are written by hand, the way a
careless or hostile user would: candidate lists holding the target 5 times, seen items, the
target alone; shards edited after inference wrote them, a shard of another run dropped in, a
glob over two runs; binary records without p_yes, NaN scores. Each must end in one line
(exit 2) naming the file, line and user, or be scored correctly. Shards with manifests are
written by the inference job's own writer (`ChunkWriter`), so their manifests are the real
ones. The infer job itself (a tiny random checkpoint) recomputes a damaged shard on rerun,
and a disk that fills (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG) ends infer,
eval and ensemble in one line with nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flanrec.data import splits, types
from flanrec.eval import cli as eval_cli
from flanrec.eval import job as E
from flanrec.eval import report
from flanrec.infer.writer import ChunkWriter

REPO = Path(__file__).resolve().parents[1]
USERS, ITEMS, CANDS = 24, 30, 5
PREFIX = "tp2"
DIRECT, SEQ = f"{PREFIX}_direct_seqidx", f"{PREFIX}_seq_seqidx"
LENGTHS = {"inputs": 96, "targets": 8}
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A real prepare output: 24 users with 8 ratings each over 30 items."""
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("trust2_predictions")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=8, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(root / "data"),
                           raw_dir=str(root / "raw"), train_vocab=True, vocab_size=400,
                           num_candidates=CANDS, allow_download=False, task_prefix=PREFIX),
            log=lambda m: None)
    return root / "data"


@pytest.fixture(scope="module")
def split(data) -> types.Split:
    from flanrec.data import prepared

    return prepared.load_split(str(data))


def seen(u: types.UserSequence, stage: str = "test") -> set[str]:
    return set(splits.seen_items(u, stage))


def rec(task: str, mode: str, index: int, user: str, **fields) -> dict:
    return {"task": task, "split": "test", "mode": mode, "index": index, "user": user,
            **fields}


def direct_rows(split: types.Split, task: str = DIRECT) -> list[dict]:
    """Genuine candidate queries: the target and 4 items the user never interacted with,
    the target scored lowest (HR@1 = 0)."""
    rows = []
    for i, u in enumerate(split.users):
        touched = seen(u) | {u.test_item}
        negs = [x for x in split.all_items if x not in touched][:CANDS - 1]
        rows.append(rec(task, "score", i, u.user, candidates=[u.test_item, *negs],
                        scores=[-9.0, -1.0, -2.0, -3.0, -4.0]))
    return rows


def full_rows(split: types.Split, task: str = SEQ) -> list[dict]:
    """Genuine full-ranking scores: every catalogue item (seen ones are masked by eval)."""
    rng = np.random.default_rng(1)
    return [rec(task, "score", i, u.user, candidates=list(split.all_items),
                scores=[float(x) for x in rng.normal(size=len(split.all_items))])
            for i, u in enumerate(split.users)]


def predict_rows(split: types.Split, task: str = SEQ) -> list[dict]:
    rows = []
    for i, u in enumerate(split.users):
        items = [x for x in split.all_items if x not in seen(u)][:5]
        rows.append(rec(task, "predict", i, u.user, items=items,
                        scores=[-float(j) for j in range(len(items))]))
    return rows


def shard(d: Path, task: str, mode: str, rows: list[dict], i: int = 0, n: int = 1) -> Path:
    """A file written by hand (no manifest: what a baseline or a user writes)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{task}-{mode}.jsonl-{i:05d}-of-{n:05d}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def infer_shard(d: Path, task: str, mode: str, rows: list[dict], host: int = 0,
                hosts: int = 1, params: str = "aaaa") -> Path:
    """A shard and its manifest as the inference job writes them (two chunks)."""
    w = ChunkWriter(str(d), task, mode, host, hosts,
                    {"checkpoint_step": 10, "params_sha256": params, "mode": mode})
    w.open()
    half = len(rows) // 2
    w.write(0, rows[:half])
    w.write(1, rows[half:])
    return Path(w.finalize(2))


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_eval(capsys, data):
    """The eval job in-process (its `main`: what `python -m flanrec.eval` runs)."""
    def run(pred: Path | str, out: Path, *extra: str) -> Result:
        capsys.readouterr()
        rc = eval_cli.main(["--predictions", str(pred), "--data_dir", str(data), "--out", str(out),
                     "--no_plot", *extra])
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)
    return run


def refused(result: Result | subprocess.CompletedProcess, out: Path | None = None) -> str:
    """The one error line of a refused run (exit 2, no traceback, no metrics written)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [x for x in result.stderr.splitlines() if ": error: " in x]
    assert len(lines) == 1, result.stderr
    if out is not None:
        assert not (out / "metrics.json").exists()
    return lines[0]


# ------------------------------------------------------------------------------ candidates


FORGERIES = {
    # the target 5 times: every rank is the target (HR@1 = NDCG@10 = 1.0 if scored)
    "target_repeated": (lambda u, r: [u.test_item] * CANDS,
                        "appears 5 times (candidates must be distinct)"),
    # the target among items the user has already seen (masked: the target ranks first)
    "seen_items": (lambda u, r: [u.test_item, *sorted(seen(u))[:CANDS - 1]],
                   "is an item the user already has in the split's history"),
    "too_few": (lambda u, r: r["candidates"][:3],
                f"has 3 candidates, but prepare gave every {DIRECT} query {CANDS}"),
    "not_an_item": (lambda u, r: [*r["candidates"][:-1], "no_such_item"],
                    "candidate 'no_such_item' is not an item of the split's catalogue"),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_direct_candidate_lists_are_refused(split, tmp_path, run_eval, forgery):
    good = direct_rows(split)
    result = run_eval(shard(tmp_path / "good", DIRECT, "score", good), tmp_path / "e0")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "e0" / "metrics.json").read_text())
    assert m["hr@1"] == 0.0 and m["hr@5"] == 1.0  # the target scored last of 5

    make, message = FORGERIES[forgery]
    rows = [dict(r) for r in good]
    for r, u in zip(rows, split.users, strict=True):
        r["candidates"] = make(u, r)
        r["scores"] = [0.0 if c == u.test_item else -1.0 for c in r["candidates"]]
    path = shard(tmp_path / "forged", DIRECT, "score", rows)
    err = refused(run_eval(path.parent, tmp_path / "e1"), tmp_path / "e1")
    assert f"{path.name}:1: user {split.users[0].user!r}: " in err and message in err, err
    assert f"{len(rows)} record(s) disagree with the split" in err


def test_a_repeated_target_is_not_a_seen_candidate(tmp_path):
    """On data with repeat interactions the held-out item can be in the history too: the
    direct query's candidate list holds it as the target, which is no forgery."""
    from flanrec.eval import truth as eval_truth
    from flanrec.files.predictions import Record

    users = [types.UserSequence(user="1", train_items=["1", "2"], valid_item="3",
                                test_item="1")]
    truth = eval_truth.SplitTruth(types.Split(users=users, all_items=list("123456")),
                                  str(tmp_path), {"options": {"num_candidates": 3}})
    row = rec("x_direct", "score", 0, "1", candidates=["4", "1", "5"], scores=[0, 0, 0])
    cov = eval_truth.check_records([Record(row, "f:1")], "x_direct", "score", truth)
    assert cov.layout == "candidates" and not cov.partial
    row = rec("x_direct", "score", 0, "1", candidates=["2", "1", "5"], scores=[0, 0, 0])
    with pytest.raises(eval_truth.TruthError, match="candidate '2' is an item the user"):
        eval_truth.check_records([Record(row, "f:1")], "x_direct", "score", truth)


def test_forged_full_ranking_lists_are_refused(split, tmp_path, run_eval):
    # Genuine: every catalogue item, or every unseen one; eval masks the seen ones.
    assert run_eval(shard(tmp_path / "full", SEQ, "score", full_rows(split)),
                    tmp_path / "e0").returncode == 0
    unseen_only = [dict(r, candidates=[c for c in r["candidates"] if c not in seen(u)])
                   for r, u in zip(full_rows(split), split.users, strict=True)]
    for r, full in zip(unseen_only, full_rows(split), strict=True):
        r["scores"] = [s for c, s in zip(full["candidates"], full["scores"], strict=True)
                       if c in r["candidates"]]
    assert run_eval(shard(tmp_path / "unseen", SEQ, "score", unseen_only),
                    tmp_path / "e1").returncode == 0
    e0, e1 = (json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("e0", "e1"))
    assert e0.pop("masked") == sum(len(seen(u)) for u in split.users) and e1.pop("masked") == 0
    assert e0 == e1

    # The seq-family file whose only candidate is the target (HR@1 = 1.0 if scored).
    only = [rec(SEQ, "score", i, u.user, candidates=[u.test_item], scores=[0.0])
            for i, u in enumerate(split.users)]
    path = shard(tmp_path / "only", SEQ, "score", only)
    err = refused(run_eval(path.parent, tmp_path / "e2"), tmp_path / "e2")
    u = split.users[0]
    unseen = ITEMS - len(seen(u))
    assert f"{path.name}:1: user {u.user!r}: ranks 1 of the {unseen} catalogue items the " \
           "user has not seen (a full-ranking task ranks them all" in err, err
    # The same file under a name the prepared dir does not know: held to the candidate
    # count, it cannot choose its own size either.
    renamed = [dict(r, task="mymodel") for r in only]
    path = shard(tmp_path / "renamed", "mymodel", "score", renamed)
    err = refused(run_eval(path.parent, tmp_path / "e3"), tmp_path / "e3")
    assert f"has 1 candidates: neither prepare's {CANDS} per candidate query nor the " \
           f"{unseen} unseen catalogue items of a full ranking" in err, err
    # A baseline over the prepared candidates (an unknown name, genuine lists) is scored.
    base = direct_rows(split, "popularity_direct")
    assert run_eval(shard(tmp_path / "base", "popularity_direct", "score", base),
                    tmp_path / "e4").returncode == 0


def test_optimistic_ties_say_how_often_they_decided(split, tmp_path, run_eval):
    """Constant scores rank every target first under --ties optimistic: allowed (the user
    asked for it), but never silent."""
    rows = [dict(r, scores=[0.0] * len(r["scores"])) for r in full_rows(split)]
    path = shard(tmp_path / "flat", SEQ, "score", rows)
    result = run_eval(path.parent, tmp_path / "e0", "--ties", "optimistic")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e0" / "metrics.json").read_text())["hr@1"] == 1.0
    assert f"the target ties with another candidate for {USERS} of {USERS} users; --ties " \
           "optimistic decides their rank" in result.stderr
    result = run_eval(path.parent, tmp_path / "e1")  # the protocol's: every target last
    assert result.returncode == 0 and "ties" not in result.stderr
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["hr@10"] == 0.0


# ------------------------------------------------------------------------------ manifests


def test_edited_truncated_or_unrecorded_shards_are_refused(split, tmp_path, run_eval):
    path = infer_shard(tmp_path / "infer", SEQ, "predict", predict_rows(split))
    manifest = path.parent / f"{SEQ}-predict-manifest-00000-of-00001.json"
    assert json.loads(manifest.read_text())["records"] == USERS
    assert run_eval(path.parent, tmp_path / "e0").returncode == 0
    original = path.read_text()

    lines = original.splitlines(keepends=True)
    row = json.loads(lines[2])
    row["items"] = [split.users[2].test_item, *row["items"][1:]]  # the target moved to top
    path.write_text("".join(lines[:2]) + json.dumps(row) + "\n" + "".join(lines[3:]))
    err = refused(run_eval(path.parent, tmp_path / "e1"), tmp_path / "e1")
    assert str(path) in err and "differs from the" in err and "same record count: " \
        "edited after inference wrote it" in err, err

    path.write_text("".join(lines[:-1]))
    err = refused(run_eval(path.parent, tmp_path / "e2"), tmp_path / "e2")
    assert f"{USERS - 1} records, the manifest says {USERS}: truncated or edited" in err, err

    path.write_text(original)
    manifest.write_text(manifest.read_text()[:40])
    err = refused(run_eval(path.parent, tmp_path / "e3"), tmp_path / "e3")
    assert f"its manifest {manifest.name} is not valid JSON" in err, err


def test_a_shard_of_another_run_is_refused(split, tmp_path, run_eval):
    rows = predict_rows(split)
    d = tmp_path / "infer"
    infer_shard(d, SEQ, "predict", rows[0::2], 0, 2, params="aaaa")
    other = infer_shard(d, SEQ, "predict", rows[1::2], 1, 2, params="bbbb")
    err = refused(run_eval(d, tmp_path / "e0"), tmp_path / "e0")
    assert f"{other}: written by another run than" in err and \
        "params_sha256: 'aaaa' vs 'bbbb'" in err, err
    # The same shard, copied in without its manifest.
    (d / f"{SEQ}-predict-manifest-00001-of-00002.json").unlink()
    err = refused(run_eval(d, tmp_path / "e1"), tmp_path / "e1")
    assert f"{other}: has no manifest, but" in err, err


def test_a_glob_over_two_runs_is_refused(split, tmp_path, run_eval):
    a = infer_shard(tmp_path / "runs" / "a", SEQ, "predict", predict_rows(split))
    b = infer_shard(tmp_path / "runs" / "b", SEQ, "predict",  # another seed's lists
                    [dict(r, items=r["items"][::-1]) for r in predict_rows(split)],
                    params="bbbb")
    pattern = str(tmp_path / "runs" / "*" / f"{SEQ}-predict.jsonl-*")
    err = refused(run_eval(pattern, tmp_path / "e0"), tmp_path / "e0")
    assert str(a) in err and str(b) in err and "matches two shards named" in err, err
    # Averaging two runs is asked for with commas, and works.
    result = run_eval(f"{a.parent},{b.parent}", tmp_path / "e1")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["num_runs"] == 2

    # The same run twice, or a copy of it, is not two runs.
    shutil.copytree(a.parent, tmp_path / "copy")
    for runs in (f"{a.parent},{a.parent}", f"{a.parent},{tmp_path / 'copy'}"):
        err = refused(run_eval(runs, tmp_path / "e2"), tmp_path / "e2")
        assert "holds the same files, byte for byte, as" in err, err

    from flanrec.ensemble.__main__ import main as ensemble_main

    assert ensemble_main(["fuse", "--predictions", pattern, str(a.parent),
                          "--out", str(tmp_path / "ens")]) == 2
    assert not (tmp_path / "ens").exists()


def test_ensemble_refuses_edited_shards_and_nan_scores(split, tmp_path, capsys):
    from flanrec.ensemble.__main__ import main as ensemble_main

    a = infer_shard(tmp_path / "a", SEQ, "predict", predict_rows(split))
    b = infer_shard(tmp_path / "b", SEQ, "predict", predict_rows(split))
    argv = ["fuse", "--predictions", str(a.parent), str(b.parent)]
    capsys.readouterr()
    assert ensemble_main([*argv, "--out", str(tmp_path / "ok")]) == 0
    lines = b.read_text().splitlines()
    row = json.loads(lines[0])
    row["scores"][0] = math.nan
    b.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert ensemble_main([*argv, "--out", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert f"{b}: sha256" in err and "differs from the" in err, err
    (tmp_path / "b" / f"{SEQ}-predict-manifest-00000-of-00001.json").unlink()
    assert ensemble_main([*argv, "--method", "mean", "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert f"{b}:1: not a predict record (field 'scores' holds nan at position 0" in err, err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


# ------------------------------------------------------------------------------ records


def _binary_rows(split: types.Split) -> list[dict]:
    return [rec(f"{PREFIX}_binary", "score", i, u.user, candidates=["no", "yes"],
                scores=[-1.0, -0.5], p_yes=0.6, label=int(u.test_rating >= 4))
            for i, u in enumerate(split.users)]


def _rating_rows(split: types.Split) -> list[dict]:
    return [rec(f"{PREFIX}_rating", "rating", i, u.user, expected_rating=3.0)
            for i, u in enumerate(split.users)]


def _drop(row: dict, *fields: str) -> dict:
    return {k: v for k, v in row.items() if k not in fields}


BROKEN = {  # name: (task, mode, rows -> broken rows, line, message)
    "binary_without_label_and_p_yes": (
        f"{PREFIX}_binary", "score", lambda s: [_drop(r, "label", "p_yes") if i == 3 else r
                                                for i, r in enumerate(_binary_rows(s))],
        4, "a ranking record among binary records (it has neither 'label' nor 'p_yes'"),
    "binary_without_p_yes": (
        f"{PREFIX}_binary", "score", lambda s: [_drop(r, "p_yes") if i == 2 else r
                                                for i, r in enumerate(_binary_rows(s))],
        3, "field 'p_yes' missing (a binary record, with 'label', needs p_yes"),
    "nan_p_yes": (
        f"{PREFIX}_binary", "score", lambda s: [dict(r, p_yes=math.nan) if i == 5 else r
                                                for i, r in enumerate(_binary_rows(s))],
        6, "field 'p_yes' is nan (expected a probability, finite)"),
    "nan_score": (
        SEQ, "score", lambda s: [dict(r, scores=[math.nan, *r["scores"][1:]]) if i == 1 else r
                                 for i, r in enumerate(full_rows(s))],
        2, "field 'scores' holds nan at position 0 (expected finite numbers)"),
    "infinite_score": (
        DIRECT, "score", lambda s: [dict(r, scores=[math.inf, *r["scores"][1:]]) if i == 0
                                    else r for i, r in enumerate(direct_rows(s))],
        1, "field 'scores' holds inf at position 0"),
    "infinite_expected_rating": (
        f"{PREFIX}_rating", "rating", lambda s: [dict(r, expected_rating=-math.inf) if i == 7
                                                 else r for i, r in enumerate(_rating_rows(s))],
        8, "field 'expected_rating' is -inf (expected a rating, or NaN for an answer"),
    # an item task's candidates dressed as a binary task (p_yes and label)
    "direct_as_binary": (
        DIRECT, "score", lambda s: [dict(r, p_yes=0.9, label=1) for r in direct_rows(s)],
        1, f"{DIRECT}'s targets are items (its info.json in"),
    # a rating task in score mode: its answers "1".."5" are not items to rank
    "rating_task_scored": (
        f"{PREFIX}_rating", "score", lambda s: [
            rec(f"{PREFIX}_rating", "score", i, u.user, candidates=list("12345"),
                scores=[-5.0, -4.0, -3.0, -2.0, -1.0]) for i, u in enumerate(s.users)],
        1, "holds ranking records; tp2_rating is scored as rating records (MODE=rating)"),
    "predict_scores_short": (
        SEQ, "predict", lambda s: [dict(r, scores=r["scores"][:2]) if i == 4 else r
                                   for i, r in enumerate(predict_rows(s))],
        5, "5 items but 2 scores"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_records_fail_in_one_line(split, tmp_path, run_eval, case):
    task, mode, make, line, message = BROKEN[case]
    path = shard(tmp_path / "p", task, mode, make(split))  # json.dumps writes NaN, Infinity
    err = refused(run_eval(path.parent, tmp_path / "e"), tmp_path / "e")
    assert f"{path.name}:{line}" in err and message in err, err


def test_a_nan_rating_counts_as_the_worst_error(split, tmp_path, run_eval):
    """NaN is the contract's "not a number" answer (`flanrec.metrics.rating_metrics`): it
    is scored as the worst error and shows in parse_rate, never dropped."""
    rows = [dict(r, expected_rating=math.nan) if i == 0 else r
            for i, r in enumerate(_rating_rows(split))]
    path = shard(tmp_path / "p", f"{PREFIX}_rating", "rating", rows)
    assert run_eval(path.parent, tmp_path / "e").returncode == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    errors = [4.0] + [abs(u.test_rating - 3.0) for u in split.users[1:]]
    assert m["parse_rate"] == pytest.approx(1 - 1 / USERS)
    assert m["mae"] == pytest.approx(np.mean(errors))


def test_garbage_and_empty_shards_fail_in_one_line(split, tmp_path, run_eval):
    path = shard(tmp_path / "bin", SEQ, "predict", predict_rows(split))
    path.write_bytes(path.read_bytes()[:100] + b"\xff\xfe\x00garbage\n")
    err = refused(run_eval(path.parent, tmp_path / "e0"), tmp_path / "e0")
    assert f"{path}:1: not UTF-8 text" in err, err
    empty = shard(tmp_path / "empty", SEQ, "predict", [])
    err = refused(run_eval(empty.parent, tmp_path / "e1"), tmp_path / "e1")
    assert "hold no records" in err and empty.name in err, err
    # One empty host shard beside a full one: the split's users are missing, said so.
    rows = predict_rows(split)
    shard(tmp_path / "half", SEQ, "predict", rows[:12], 0, 2)
    shard(tmp_path / "half", SEQ, "predict", [], 1, 2)
    err = refused(run_eval(tmp_path / "half", tmp_path / "e2"), tmp_path / "e2")
    assert f"covers 12 of the {USERS} users of the test split" in err, err


MUTATION_VALUES = [None, "", "x", 0, -1, 1.5, math.nan, math.inf, True, [], ["1"], ["1", "1"],
                   {}, "1", 10 ** 30, ["zz"], [1.0], [math.nan], [[1]]]


def _mutated(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    """`rows` with 1-3 careless edits: a field dropped or set to a wrong value, a record
    repeated or removed."""
    rows = [dict(r) for r in rows]
    for _ in range(int(rng.integers(1, 4))):
        r = rows[int(rng.integers(len(rows)))]
        op, key = rng.random(), sorted(r)[int(rng.integers(len(r)))]
        if op < 0.3:
            del r[key]
        elif op < 0.8:
            r[key] = MUTATION_VALUES[int(rng.integers(len(MUTATION_VALUES)))]
        elif op < 0.9:
            rows.append(dict(r))
        elif len(rows) > 1:
            rows.remove(r)
    return rows


def _one_line_or_scored(call, argv: list[str], capsys) -> None:
    capsys.readouterr()
    rc = call(argv)  # a traceback (an exception out of `main`) fails the test here
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 0 or (rc == 2 and len(err) == 1), (argv, rc, err)


def test_careless_edits_are_scored_or_refused_in_one_line(split, data, tmp_path, capsys):
    """Random edits of genuine files of every kind: eval and the ensemble either score the
    result or refuse it in one line; never a traceback."""
    from flanrec.ensemble.__main__ import main as ensemble_main

    genuine = {(DIRECT, "score"): direct_rows(split), (SEQ, "score"): full_rows(split),
               (SEQ, "predict"): predict_rows(split),
               (f"{PREFIX}_binary", "score"): _binary_rows(split),
               (f"{PREFIX}_rating", "rating"): _rating_rows(split)}
    rng = np.random.default_rng(0)
    keys = sorted(genuine)
    for trial in range(100):
        task, mode = keys[trial % len(keys)]
        d = shard(tmp_path / f"p{trial}", task, mode, _mutated(genuine[task, mode], rng))
        _one_line_or_scored(eval_cli.main, ["--predictions", str(d.parent), "--data_dir", str(data),
                                     "--out", str(tmp_path / f"e{trial}"), "--no_plot"],
                            capsys)
    a = shard(tmp_path / "a", SEQ, "predict", predict_rows(split)).parent
    for trial, method in enumerate(["rrf", "mean", "vote", "weighted"] * 15):
        b = shard(tmp_path / f"b{trial}", SEQ, "predict",
                  _mutated(predict_rows(split), rng)).parent
        weights = ["--weights", "1,2"] if method == "weighted" else []
        _one_line_or_scored(ensemble_main, ["fuse", "--predictions", str(a), str(b),
                                            "--method", method, *weights,
                                            "--out", str(tmp_path / f"f{trial}")], capsys)


# ------------------------------------------------------------------------------ plot


def test_plot_keeps_candidate_tasks_off_the_full_ranking_axes(split, tmp_path, data, capsys):
    import matplotlib.image

    d = tmp_path / "infer"
    shard(d, SEQ, "predict", predict_rows(split))
    shard(d, DIRECT, "score", direct_rows(split))
    shard(tmp_path / "base", "popularity_direct", "score",
          direct_rows(split, "popularity_direct"))
    out = tmp_path / "eval"
    assert eval_cli.main(["--predictions", str(d), "--baselines", str(tmp_path / "base"),
                   "--data_dir", str(data), "--out", str(out)]) == 0
    catalogue = E.Catalogue.load(str(data))
    sections = E.evaluate_dir(str(d), catalogue=catalogue) + \
        E.evaluate_dir(str(tmp_path / "base"), catalogue=catalogue, baseline=True)
    assert {s.task: s.layout for s in sections} == {
        SEQ: "full", DIRECT: "candidates", "popularity_direct": "candidates"}
    groups = report.plot_groups([(s.task, s) for s in sections])
    assert [[n for n, _ in g] for _, g in groups] == [[SEQ], [DIRECT, "popularity_direct"]]
    # Two rows of axes (800 px high at 100 dpi); one row without candidate tasks.
    assert matplotlib.image.imread(str(out / E.PLOT_FILE)).shape[0] == 800
    shutil.rmtree(tmp_path / "base")
    (d / f"{DIRECT}-score.jsonl-00000-of-00001").unlink()
    assert eval_cli.main(["--predictions", str(d), "--data_dir", str(data), "--out",
                   str(tmp_path / "eval2")]) == 0
    assert matplotlib.image.imread(str(tmp_path / "eval2" / E.PLOT_FILE)).shape[0] == 400


# ------------------------------------------------------------------------------ writes


def _limited(argv: list[str], max_bytes: int, env: dict[str, str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a job with every file it writes limited to `max_bytes` (a disk that fills):
    SIGXFSZ ignored, so a write past the limit fails with EFBIG instead of killing it."""
    launch = ("import os, resource, signal, sys; "
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes})); "
              "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return subprocess.run([sys.executable, "-c", launch, *argv], cwd=REPO,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=FAST_COMPILE,
               PYTHONUNBUFFERED="1", **extra)
    return env


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name
                  or p.name.endswith(".staged"))


def test_disk_full_during_eval_and_ensemble_is_one_line(split, tmp_path, data):
    d = tmp_path / "infer"
    shard(d, SEQ, "predict", predict_rows(split))
    out = tmp_path / "eval"
    assert eval_cli.main(["--predictions", str(d), "--data_dir", str(data), "--out", str(out),
                   "--no_plot"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _limited(["-m", "flanrec.eval", "--predictions", str(d), "--data_dir", str(data),
                     "--out", str(out), "--no_plot"], 200)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"{out / E.METRICS_FILE}: cannot write it: File too large [EFBIG]" in proc.stderr
    assert "no half-written file was left" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # previous run intact
    assert _leftovers(tmp_path) == []

    other = tmp_path / "other"
    shard(other, SEQ, "predict", predict_rows(split))
    proc = _limited(["-m", "flanrec.ensemble", "fuse", "--predictions", str(d), str(other),
                     "--out", str(tmp_path / "ens")], 1000)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"{SEQ}-ens-predict.jsonl-00000-of-00001: cannot write it: File too large [EFBIG]" \
        in proc.stderr
    assert _leftovers(tmp_path) == [] and not list((tmp_path / "ens").glob("*.jsonl-*"))


# ------------------------------------------------------------------------------ infer


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """A real Orbax params checkpoint of a tiny random model, with the prepared tasks
    registered in this process."""
    from hf_fixtures import random_params

    import tasks
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.model.config import T5Config

    config = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                      num_encoder_layers=1, num_decoder_layers=1, name="tiny-trust2")
    ckpt = save_params_checkpoint(config, random_params(config, 0),
                                  tmp_path_factory.mktemp("trust2_ckpt") / "ckpt")
    tasks.register_prepared(str(data))
    yield Path(str(ckpt))
    tasks.unregister_prepared(PREFIX)


def _opts(out: Path, **kw):
    from flanrec.infer.run import InferenceOptions

    settings = {"mode": "predict", "num_beams": 5, "batch_size": 8, "chunk_size": 8, **kw}
    return InferenceOptions(output_dir=str(out), task_feature_lengths=LENGTHS,
                            progress_every=1000.0, **settings)


def test_infer_recomputes_a_damaged_shard_and_survives_a_full_disk(data, checkpoint,
                                                                   tmp_path, caplog):
    from flanrec.infer.run import run_inference

    out = tmp_path / "infer"
    [first] = run_inference(str(checkpoint), SEQ, _opts(out), [str(data)])
    path = Path(first["path"])
    manifest = out / f"{SEQ}-predict-manifest-00000-of-00001.json"
    original, record = path.read_bytes(), manifest.read_bytes()
    [again] = run_inference(str(checkpoint), SEQ, _opts(out), [str(data)])
    assert again["computed"] == 0  # intact: skipped

    damages = {
        "edited": lambda: path.write_bytes(original.replace(b'"items": ["', b'"items": ["1', 1)),
        "truncated": lambda: path.write_bytes(original[: len(original) // 2]),
        "unreadable record": lambda: manifest.write_bytes(record[:30]),
        "no record": manifest.unlink,
    }
    for name, damage in damages.items():
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flanrec.infer"):
            [redo] = run_inference(str(checkpoint), SEQ, _opts(out), [str(data)])
        assert redo["computed"] == USERS, name
        warned = [r.getMessage() for r in caplog.records if "recomputing" in r.getMessage()]
        assert len(warned) == 1 and str(path) in warned[0] and "\n" not in warned[0], name
        assert path.read_bytes() == original, name
        assert json.loads(manifest.read_bytes())["sha256"] == json.loads(record)["sha256"]

    # A disk that fills while the shard is assembled: the chunks (8 users each) fit, the
    # shard (24) does not. One line; the edited shard and its record stay as they were,
    # nothing half-written is left, and a rerun with room finishes from the chunks.
    edited = original.replace(b'"items": ["', b'"items": ["1', 1)
    path.write_bytes(edited)
    record = manifest.read_bytes()
    limit = len(original) * 2 // 3
    argv = ["-m", "flanrec.infer", "--gin_file=gin/runs/infer.gin",
            f"--gin.CHECKPOINT_PATH={checkpoint}", f"--gin.MIXTURE_OR_TASK_NAME={SEQ}",
            f"--gin.INFER_OUTPUT_DIR={out}", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
            "--gin.NUM_BEAMS=5", "--gin.BATCH_SIZE=8", "--gin.CHUNK_SIZE=8"]
    proc = _limited(argv, limit, _env(FLANREC_DATA_DIR=str(data)))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if ": error: " in x]
    assert f"{path}: cannot write it: File too large [EFBIG]" in line, line
    assert "finished chunks are kept and a rerun resumes from them" in line
    assert path.read_bytes() == edited and manifest.read_bytes() == record
    assert _leftovers(out) == []
    chunks = out / f".{path.name}.chunks"
    assert len(list(chunks.glob("chunk-*.jsonl"))) == USERS // 8
    [done] = run_inference(str(checkpoint), SEQ, _opts(out), [str(data)])
    assert done["computed"] == 0 and not chunks.exists()
    # The chunks came from the other process (other XLA flags): the same items, scores
    # equal to float precision; the shard matches its new record.
    got = [json.loads(x) for x in path.read_text().splitlines()]
    want = [json.loads(x) for x in original.decode().splitlines()]
    assert [(r["index"], r["items"]) for r in got] == [(r["index"], r["items"]) for r in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-5)
    from flanrec.files.predictions import check_shards

    check_shards([str(path)])


def test_what_infer_and_the_baselines_write_passes_every_check(data, checkpoint, tmp_path):
    """The checks refuse forgeries, not real outputs: the infer job's predict and score
    files (full ranking and the direct family's candidates) and the families' baselines
    are all scored, and the plot puts the candidate tasks on their own axes."""
    from flanrec.baselines.__main__ import main as baselines_main
    from flanrec.infer.run import run_inference

    out = tmp_path / "infer"
    run_inference(str(checkpoint), SEQ, _opts(out), [str(data)])
    run_inference(str(checkpoint), SEQ, _opts(out, mode="score"), [str(data)])
    run_inference(str(checkpoint), DIRECT, _opts(out, mode="score"), [str(data)])
    base = tmp_path / "base"
    assert baselines_main(["--data_dir", str(data), "--model", "families", "--split", "test",
                           "--out", str(base)]) == 0
    assert eval_cli.main(["--predictions", str(out), "--baselines", str(base), "--data_dir",
                   str(data), "--out", str(tmp_path / "eval")]) == 0
    catalogue = E.Catalogue.load(str(data))
    layouts = {(s.task, s.mode): s.layout for s in
               E.evaluate_dir(str(out), catalogue=catalogue)
               + E.evaluate_dir(str(base), catalogue=catalogue, baseline=True)}
    assert layouts[(SEQ, "predict")] == layouts[(SEQ, "score")] == "full"
    assert layouts[(DIRECT, "score")] == layouts[("popularity_direct", "score")] == "candidates"
