"""`python -m flanrec.infer` end to end on a tiny prepared dataset and a random checkpoint:
the JSONL contract, the modes against each other, kill-and-resume, and bad input.

The dataset is a real `flanrec.prepare` output (MovieLens CSV layout, 24 users, 30 items,
ratings, all task families) and the checkpoint a real Orbax params checkpoint of a tiny
random model, so the job runs exactly as a user's would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import random_params

from flanrec.model.config import T5Config

REPO = Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
LENGTHS = {"inputs": 96, "targets": 8}
USERS, ITEMS = 24, 30
TOY_CONFIG = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                      num_encoder_layers=1, num_decoder_layers=1, name="tiny-infer-test")
CONTRACT = {"task", "split", "mode", "index", "user", "inputs", "targets", "target_item",
            "template_idx", "template_type",
            "prediction", "aux"}  # T5X's infer.py fields, next to flanrec's


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(prepared data dir, checkpoint dir) shared by the tests of this module."""
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("infer")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=8, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    data = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(data), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, num_candidates=5,
                           allow_download=False, task_prefix="toyinf"), log=lambda m: None)
    ckpt = save_params_checkpoint(TOY_CONFIG, random_params(TOY_CONFIG, 0), root / "ckpt")
    return data, Path(str(ckpt))


@pytest.fixture(scope="module")
def registered(toy):
    import tasks

    tasks.register_prepared(str(toy[0]))
    yield toy
    tasks.unregister_prepared("toyinf")


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               FLANREC_DATA_DIR=str(data), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=FAST_COMPILE, PYTHONUNBUFFERED="1", **extra)
    return env


def _args(ckpt: Path, out: Path, task: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flanrec.infer", "--gin_file=gin/runs/infer.gin",
            f"--gin.CHECKPOINT_PATH={ckpt}", f"--gin.MIXTURE_OR_TASK_NAME={task}",
            f"--gin.INFER_OUTPUT_DIR={out}", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", *extra]


def _records(out: Path, task: str, mode: str) -> list[dict]:
    from flanrec.infer.writer import read_jsonl

    files = sorted(out.glob(f"{task}-{mode}.jsonl-*-of-*"))
    assert [f.name for f in files] == [f"{task}-{mode}.jsonl-00000-of-00001"]
    return read_jsonl(files)


def _seen(data: Path, stage: str) -> dict[str, set[str]]:
    from flanrec.data import prepared, splits

    return {s.user: set(splits.seen_items(s, stage)) for s in prepared.load_split(str(data)).users}


def _opts(out: Path, mode: str, **kw):
    from flanrec.infer.run import InferenceOptions

    return InferenceOptions(output_dir=str(out), task_feature_lengths=LENGTHS, mode=mode,
                            progress_every=1000.0, **kw)


# ------------------------------------------------------------------------------ end to end


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_predict_two_hosts_writes_the_contract(toy, tmp_path):
    """Two real processes (jax.distributed on localhost) each write their own shard; together
    they hold every test user exactly once, in the JSONL contract."""
    from flanrec.data.indexing import ItemIndex
    from flanrec.infer.writer import read_jsonl

    data, ckpt = toy
    out = tmp_path / "out"
    task = "toyinf_seq_seqidx"
    port = _free_port()
    procs = [subprocess.Popen(
        _args(ckpt, out, task, "--gin.NUM_BEAMS=5", "--gin.BATCH_SIZE=8", "--gin.CHUNK_SIZE=5",
              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              f"--process_id={i}"),
        cwd=REPO, env=_env(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "users/s" in stdout + err and "ETA" in stdout + err  # progress lines
    files = sorted(out.glob(f"{task}-predict.jsonl-*"))
    assert [f.name for f in files] == [f"{task}-predict.jsonl-0000{i}-of-00002" for i in (0, 1)]
    shards = [read_jsonl([f]) for f in files]
    # Host h holds indices h, h+2, ...: 12 each (chunks of 5, 5, 2; batches of 8, padded).
    assert [[r["index"] for r in s] for s in shards] == [list(range(h, USERS, 2))
                                                        for h in (0, 1)]
    recs = shards[0] + shards[1]
    assert sorted(r["user"] for r in recs) == sorted(str(u) for u in range(1, USERS + 1))
    seen = _seen(data, "test")
    index = ItemIndex.load(data / "index" / "sequential")
    for r in recs:
        assert CONTRACT | {"items", "ids", "scores", "invalid", "duplicates"} == set(r)
        assert (r["task"], r["split"], r["mode"]) == (task, "test", "predict")
        assert len(r["items"]) == 5 == len(set(r["items"])) == len(r["scores"])
        assert not set(r["items"]) & seen[r["user"]], "a seen item was recommended"
        assert r["ids"] == [index.id_of(i) for i in r["items"]]
        assert r["scores"] == sorted(r["scores"], reverse=True)
        assert r["invalid"] == 0 and r["duplicates"] == 0
        assert r["target_item"] and index.id_of(r["target_item"]) == r["targets"]
        # What T5X-style post-processing reads: pretokenized inputs, the decoded top
        # prediction and its score.
        assert set(r["inputs"]) == {"inputs_pretokenized", "targets_pretokenized"}
        assert f"user {r['user']}" in r["inputs"]["inputs_pretokenized"].lower()
        assert r["inputs"]["targets_pretokenized"] == r["targets"]
        assert r["prediction"] == r["ids"][0] and r["aux"] == {"scores": r["scores"][0]}
    assert not [p for p in out.iterdir() if p.name.endswith(".chunks")], "chunk dir left behind"


def test_modes_agree_with_each_other(registered, tmp_path):
    """predict's scores are the score mode's log-likelihoods of the same items; the top
    predicted item is the best unseen item when beams cover the catalogue; rating and
    binary probabilities are proper distributions."""
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    out = tmp_path / "out"
    kw = dict(batch_size=8, chunk_size=16)
    run_inference(str(ckpt), "toyinf_seq_seqidx", _opts(out, "predict", num_beams=ITEMS, **kw),
                  [str(data)])
    run_inference(str(ckpt), "toyinf_seq_seqidx", _opts(out, "score", **kw), [str(data)])
    pred = {r["index"]: r for r in _records(out, "toyinf_seq_seqidx", "predict")}
    score = {r["index"]: r for r in _records(out, "toyinf_seq_seqidx", "score")}
    assert set(pred) == set(score) == set(range(USERS))
    seen = _seen(data, "test")
    for i, p in pred.items():
        s = dict(zip(score[i]["candidates"], score[i]["scores"], strict=True))
        # T5X's score mode field: the log-likelihood of the example's own target.
        assert score[i]["score"] == s[p["target_item"]]
        assert len(s) == ITEMS
        unseen = sorted((v, k) for k, v in s.items() if k not in seen[p["user"]])
        # Beams (30) >= catalogue: the exact ranking of every unseen item.
        assert p["items"] == [k for _, k in reversed(unseen)]
        np.testing.assert_allclose(p["scores"], [s[k] for k in p["items"]], atol=1e-4)

    run_inference(str(ckpt), "toyinf_rating", _opts(out, "rating", **kw), [str(data)])
    run_inference(str(ckpt), "toyinf_binary", _opts(out, "score", **kw), [str(data)])
    for r in _records(out, "toyinf_rating", "rating"):
        assert CONTRACT | {"expected_rating", "rating_probs", "target_rating"} == set(r)
        probs = r["rating_probs"]
        assert list(probs) == ["1", "2", "3", "4", "5"] and abs(sum(probs.values()) - 1) < 1e-9
        assert abs(r["expected_rating"] - sum(int(k) * v for k, v in probs.items())) < 1e-9
        assert r["target_rating"] == float(r["targets"])
        assert r["prediction"] == max(probs, key=probs.get)
    for r in _records(out, "toyinf_binary", "score"):
        assert r["candidates"] == ["no", "yes"] and 0 < r["p_yes"] < 1
        a, b = r["scores"]
        assert abs(r["p_yes"] - 1 / (1 + np.exp(a - b))) < 1e-9
        assert r["label"] == int(r["targets"] == "yes")
        assert r["score"] == r["scores"][r["label"]]
        assert r["prediction"] == ("yes" if b > a else "no") and r["aux"]["scores"] == max(a, b)


# ------------------------------------------------------------------------------ resume


def test_killed_run_resumes_without_duplicates_or_gaps(registered, tmp_path):
    from flanrec.infer.run import SLEEP_ENV, run_inference

    data, ckpt = registered
    out = tmp_path / "out"
    task = "toyinf_direct_seqidx"
    chunk_dir = out / f".{task}-score.jsonl-00000-of-00001.chunks"
    proc = subprocess.Popen(_args(ckpt, out, task, "--gin.MODE=score", "--gin.BATCH_SIZE=4",
                                  "--gin.CHUNK_SIZE=4"),
                            cwd=REPO, env=_env(data, **{SLEEP_ENV: "3"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while len(list(chunk_dir.glob("chunk-*.jsonl"))) < 2:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no chunks written in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = {p.name: p.read_text() for p in chunk_dir.glob("chunk-*.jsonl")}
    assert 2 <= len(done) < USERS // 4, "killed too late to test resuming"
    assert not list(out.glob(f"{task}-score.jsonl-*")), "no final shard before the end"

    [summary] = run_inference(str(ckpt), task, _opts(out, "score", batch_size=4, chunk_size=4),
                              [str(data)])
    assert summary["examples"] == USERS and summary["computed"] == USERS - 4 * len(done)
    recs = _records(out, task, "score")
    assert sorted(r["index"] for r in recs) == list(range(USERS))  # none dropped, none twice
    final = (out / f"{task}-score.jsonl-00000-of-00001").read_text()
    for text in done.values():
        assert text in final  # finished chunks were kept, not recomputed
    assert not chunk_dir.exists()
    for r in recs:
        assert len(r["candidates"]) == 5 and r["target_item"] in r["candidates"]

    # A rerun finds the shard complete and computes nothing.
    [again] = run_inference(str(ckpt), task, _opts(out, "score", batch_size=4, chunk_size=4),
                            [str(data)])
    assert again["computed"] == 0
    # Resuming chunks with other settings is refused, naming the setting.
    from flanrec.infer.writer import ChunkWriter, ResumeMismatchError

    w = ChunkWriter(str(tmp_path / "o2"), task, "score", 0, 1, {"num_beams": 20})
    w.open()
    w2 = ChunkWriter(str(tmp_path / "o2"), task, "score", 0, 1, {"num_beams": 10})
    with pytest.raises(ResumeMismatchError, match="num_beams: 20 -> 10"):
        w2.open()


def _save_step(model_dir: Path, step: int, seed: int) -> dict:
    """A real training checkpoint (Orbax, committed) of the toy model at `step`."""
    from flanrec.checkpoints import TrainCheckpointer

    params = random_params(TOY_CONFIG, seed)
    with TrainCheckpointer(model_dir, async_save=False) as c:
        c.save(step, params, meta={"model_config": TOY_CONFIG.to_dict()})
    return params


@pytest.mark.slow
def test_resume_refuses_another_checkpoint_and_overwrite_recomputes(registered, tmp_path):
    """Issue 13: a kill, a new checkpoint in MODEL_DIR and a rerun used to give a file with
    some users from step 50 and the rest from step 60. Now the rerun is refused (naming both
    steps); OVERWRITE=True recomputes every record from the new step; the output keeps a
    record of the checkpoint, settings and gin config; a finished shard is guarded too."""
    from flanrec.infer.run import SLEEP_ENV, params_sha256, run_inference
    from flanrec.infer.writer import ResumeMismatchError

    data, _ = registered
    task = "toyinf_direct_seqidx"
    model_dir, out = tmp_path / "run", tmp_path / "out"
    _save_step(model_dir, 50, seed=1)
    flags = ("--gin.MODE=score", "--gin.BATCH_SIZE=4", "--gin.CHUNK_SIZE=4")
    chunk_dir = out / f".{task}-score.jsonl-00000-of-00001.chunks"
    proc = subprocess.Popen(_args(model_dir, out, task, *flags), cwd=REPO,
                            env=_env(data, **{SLEEP_ENV: "3"}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while len(list(chunk_dir.glob("chunk-*.jsonl"))) < 2:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no chunks written in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= len(list(chunk_dir.glob("chunk-*.jsonl"))) < USERS // 4
    from flanrec.infer.writer import read_jsonl

    step50 = {r["index"]: r for r in read_jsonl(sorted(chunk_dir.glob("chunk-*.jsonl")))}
    new_params = _save_step(model_dir, 60, seed=2)  # training went on meanwhile

    opts = _opts(out, "score", batch_size=4, chunk_size=4)
    with pytest.raises(ResumeMismatchError) as e:
        run_inference(str(model_dir), task, opts, [str(data)])
    msg = str(e.value)
    assert "\n" not in msg and "step 50" in msg and "step 60" in msg, msg
    assert "--gin.OVERWRITE=True" in msg and str(model_dir / "checkpoint_50") in msg, msg

    # OVERWRITE=True: everything from step 60, byte-identical to a clean run of step 60.
    p = subprocess.run(_args(model_dir, out, task, *flags, "--gin.OVERWRITE=True"),
                       cwd=REPO, env=_env(data), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    [clean] = run_inference(str(model_dir / "checkpoint_60"), task,
                            _opts(tmp_path / "clean", "score", batch_size=4, chunk_size=4),
                            [str(data)])
    got, want = _records(out, task, "score"), _records(tmp_path / "clean", task, "score")
    assert [r["index"] for r in got] == [r["index"] for r in want] == list(range(USERS))
    for g, w in zip(got, want, strict=True):  # same records (XLA flags differ: allclose)
        assert g["candidates"] == w["candidates"]
        np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-5)
        if g["index"] in step50:  # and none of the step-50 ones survived
            assert np.abs(np.subtract(g["scores"], step50[g["index"]]["scores"])).max() > 1e-3
    assert clean["computed"] == USERS and not chunk_dir.exists()
    record = json.loads((out / f"{task}-score-manifest-00000-of-00001.json").read_text())
    assert record["settings"]["checkpoint_step"] == 60
    assert record["settings"]["params_sha256"] == params_sha256(new_params)
    assert record["checkpoint"]["checkpoint_resolved"] == str(model_dir / "checkpoint_60")
    assert record["records"] == USERS and record["settings"]["num_beams"] == 20
    assert "infer.mode = %MODE" in record["gin_config"] and "OVERWRITE = True" in \
        record["gin_config"]

    # A finished shard is guarded as well: step 70 appears, the rerun is refused; pinning
    # the step the hint names keeps the shard and computes nothing.
    _save_step(model_dir, 70, seed=3)
    with pytest.raises(ResumeMismatchError, match="was written from step 60.*step 70"):
        run_inference(str(model_dir), task, opts, [str(data)])
    [kept] = run_inference(str(model_dir / "checkpoint_60"), task, opts, [str(data)])
    assert kept["computed"] == 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("extra,message", [
    (("--gin.MODE=predcit",), "MODE 'predcit' is not one of"),
    (("--gin.MIXTURE_OR_TASK_NAME=toyinf_no_such_task",), "'toyinf_no_such_task' is not "
                                                          "registered"),
    (("--gin.CHECKPOINT_PATH=/nonexistent/ckpt",), "CHECKPOINT_PATH /nonexistent/ckpt"),
    (("--gin.MODE=rating",), "rating mode needs a rating task"),
    (("--gin.SPLIT=tset",), "has no split 'tset'"),
    (("--gin.NUM_BEAM=3",), "NUM_BEAM is set on the command line but no gin file uses it"),
], ids=["mode", "task", "checkpoint", "mode-task", "split", "macro"])
def test_bad_input_fails_clearly(registered, tmp_path, capsys, extra, message):
    from flanrec.infer import cli as infer

    data, ckpt = registered
    argv = _args(ckpt, tmp_path / "out", "toyinf_seq_seqidx", f"--gin.DATA_DIR={data}")[3:]
    rc = infer.main([*argv, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_writer_is_atomic_and_progress_reports_rate(tmp_path):
    import io

    from flanrec.frontend.progress import Progress
    from flanrec.infer.writer import ChunkWriter

    w = ChunkWriter(str(tmp_path), "t", "predict", 0, 1, {"a": 1})
    w.open()
    (Path(w.chunk_dir) / "chunk-000001.jsonl.tmp-123").write_text("half")
    w.open()  # a stale temp file of a killed run is removed
    assert sorted(os.listdir(w.chunk_dir)) == ["manifest.json"]
    w.write(0, [{"index": 0}, {"index": 1}])
    w.write(1, [{"index": 2}])
    assert w.has(0) and w.has(1) and not w.complete()
    path = w.finalize(2)
    assert [json.loads(x)["index"] for x in Path(path).read_text().splitlines()] == [0, 1, 2]
    assert w.complete() and not os.path.exists(w.chunk_dir)

    now = [0.0]
    buf = io.StringIO()
    p = Progress("infer t", 100, every=5.0, stream=buf, clock=lambda: now[0])
    p.skip(20)
    p.update(10)  # first computed batch (compilation): not timed
    now[0] = 10.0
    p.update(20)  # 20 examples in 10 s
    assert "50/100 users (50%), 20 resumed | 2.0 users/s | ETA 25s" in buf.getvalue()


def test_host_shards_partition_the_split_by_index(registered):
    """Each host keeps every n-th example of the same deterministic order, so indices are
    global: the hosts' shards are disjoint, cover the split, and agree with one host's."""
    from flanrec.infer.run import task_examples

    one = {i: ex["inputs_pretokenized"] for i, ex in
           task_examples("toyinf_rating", "validation", LENGTHS, 0, 1)}
    assert sorted(one) == list(range(USERS))
    parts = [{i: ex["inputs_pretokenized"] for i, ex in
              task_examples("toyinf_rating", "validation", LENGTHS, h, 3)} for h in range(3)]
    assert [sorted(p) for p in parts] == [list(range(h, USERS, 3)) for h in range(3)]
    assert {k: v for p in parts for k, v in p.items()} == one


@pytest.mark.slow
def test_eval_takes_a_checkpoint_like_t5x_eval(registered, tmp_path):
    """`flanrec.eval --gin.CHECKPOINT_PATH=...`: infers with gin/runs/infer.gin's macros, then
    scores: the same predictions as `flanrec.infer` and the same metrics as the two-step infer
    + eval. The gin flags are train's and infer's (here a gin file found only through T5X's
    comma-separated --gin_search_paths)."""
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.eval", "--gin_file=runs/eval.gin",
         f"--gin_search_paths={tmp_path / 'nothing'},{REPO / 'gin'}",
         f"--gin.CHECKPOINT_PATH={ckpt}", "--gin.MIXTURE_OR_TASK_NAME=toyinf_seq_seqidx",
         f"--gin.EVAL_OUTPUT_DIR={out}", f"--gin.FLANREC_DATA_DIR={data}",
         f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.NUM_BEAMS=5"],
        cwd=tmp_path, env=_env(data), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr  # quiet: no TF/absl start-up lines
    via_checkpoint = json.loads((out / "metrics.json").read_text())
    records = _records(out / "infer", "toyinf_seq_seqidx", "predict")
    assert len(records) == USERS and all(len(r["items"]) == 5 for r in records)
    run_inference(str(ckpt), "toyinf_seq_seqidx", _opts(tmp_path / "plain", "predict",
                                                        num_beams=5), [str(data)])
    plain = _records(tmp_path / "plain", "toyinf_seq_seqidx", "predict")
    assert [(r["index"], r["items"]) for r in records] == [(r["index"], r["items"])
                                                           for r in plain]

    from flanrec.eval import cli as E

    assert E.main(["--predictions", str(out / "infer"), "--data_dir", str(data),
                   "--out", str(tmp_path / "two_step"), "--no_plot"]) == 0
    two_step = json.loads((tmp_path / "two_step" / "metrics.json").read_text())
    assert via_checkpoint == two_step and "hr@5" in two_step
