"""Any registered task through infer and eval: free decoding (MODE=decode, what MODE=predict
means on a text task), the task's own metric fns in eval, a family whose answer is another
item than the held-out one, a JSON-lines task with no prepared dir, and the unseen
templates beside test.

Data: a real `flanrec.prepare` output (MovieLens CSV layout with movies.csv, 24 users, 30
items); model: a real Orbax checkpoint of a tiny random T5. The metrics are checked against
values recomputed here from the prediction files, so they are the predictions' own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import seqio
from hf_fixtures import random_params

from flanrec.model.config import T5Config

REPO = Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
LENGTHS = {"inputs": 96, "targets": 16}
USERS, ITEMS = 24, 30
GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance"]
CONFIG = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                  num_encoder_layers=1, num_decoder_layers=1, name="tiny-any-task-test")


def write_raw(raw: Path) -> None:
    """ratings.csv + movies.csv (titles, genres) of USERS users over ITEMS movies."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, USERS + 1):
        for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=8, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (raw / "ratings.csv").write_text("\n".join(rows) + "\n")
    movies = ["movieId,title,genres"] + [
        f"{i},Movie {i} ({1990 + i % 10}),{GENRES[i % 5]}|{GENRES[(i * 3) % 5]}"
        for i in range(1, ITEMS + 1)]
    (raw / "movies.csv").write_text("\n".join(movies) + "\n")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("anytask")
    write_raw(root / "raw")
    data = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(data), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, num_candidates=5,
                           allow_download=False, task_prefix="toyany"), log=lambda m: None)
    ckpt = save_params_checkpoint(CONFIG, random_params(CONFIG, 0), root / "ckpt")
    return data, Path(str(ckpt))


@pytest.fixture(scope="module")
def registered(toy):
    """The toy dir's tasks plus the two user families of tasks/ over it."""
    import tasks
    from flanrec.data import families

    tasks.register_prepared(str(toy[0]), prefix="toyany")
    saved = dict(tasks.REGISTERED)
    tasks.REGISTERED.clear()
    tasks.REGISTERED["toyany"] = str(toy[0])
    for name in ("tasks.next_genre", "tasks.next_after"):
        sys.modules.pop(name, None)
    import tasks.next_after
    import tasks.next_genre  # noqa: F401
    tasks.REGISTERED.clear()
    tasks.REGISTERED.update(saved)
    tasks.REGISTERED["toyany"] = str(toy[0])
    yield toy
    for fam in ("next_genre", "next_after"):
        families.unregister(fam)
    for name in ("toyany_next_genre_seqidx", "toyany_next_after_seqidx"):
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
    tasks.unregister_prepared("toyany")


def _opts(out: Path, mode: str, **kw):
    from flanrec.infer.run import InferenceOptions

    return InferenceOptions(output_dir=str(out), task_feature_lengths=LENGTHS, mode=mode,
                            progress_every=1000.0, **kw)


def _records(out: Path, task: str, mode: str) -> list[dict]:
    from flanrec.infer.writer import read_jsonl

    files = sorted(out.glob(f"{task}-{mode}.jsonl-*-of-*"))
    assert [f.name for f in files] == [f"{task}-{mode}.jsonl-00000-of-00001"]
    return read_jsonl(files)


def _eval(*args: str) -> dict:
    from flanrec.eval import cli as E

    out = Path(args[args.index("--out") + 1])
    assert E.main([*args, "--no_plot"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _norm(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------ text targets


def test_modes_are_chosen_from_the_targets(registered):
    """predict: trie ranking on item tasks, free decoding on text tasks; decode on any task
    but a seqrec one; score/rating on a text task say what to use instead."""
    from flanrec.infer.run import InferenceConfigError, resolve_runs, resolve_tasks

    def modes(task: str, mode: str) -> list[str]:
        return [m for _, m in resolve_runs(task, "test", mode)]

    assert modes("toyany_seq_seqidx", "predict") == ["predict"]
    assert modes("toyany_next_after_seqidx", "predict") == ["predict"]
    assert modes("toyany_next_genre_seqidx", "predict") == ["decode"]
    assert modes("toyany_seq_seqidx", "decode") == ["decode"]
    assert modes("toyany_rating", "decode") == ["decode"]
    (info,) = resolve_tasks("toyany_next_after_seqidx", "test", "predict")
    assert info.held_out_target is False and info.target_kind == "item"
    with pytest.raises(InferenceConfigError, match="MODE='decode'"):
        resolve_runs("toyany_next_genre_seqidx", "test", "score")
    with pytest.raises(InferenceConfigError, match="seqrec task"):
        resolve_runs("toyany_seqrec_seqidx", "test", "decode")
    with pytest.raises(InferenceConfigError, match="targets are text"):
        resolve_tasks("toyany_next_genre_seqidx", "test", "predict")  # the rank validation's


def test_predict_on_a_text_family_decodes_and_eval_runs_its_metric_fns(registered, tmp_path,
                                                                       capsys):
    """MODE=predict on tasks/next_genre.py's task decodes freely (no trie); eval reads the
    targets from the task and runs its postprocess_fn + metric fns (exact match) on them."""
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    task = "toyany_next_genre_seqidx"
    (summary,) = run_inference(str(ckpt), task, _opts(tmp_path / "inf", "predict",
                                                       num_beams=1), [str(data)])
    assert summary["mode"] == "decode"
    recs = _records(tmp_path / "inf", task, "decode")
    n = seqio.get_mixture_or_task(task).num_input_examples("test")
    assert len(recs) == n and sorted(r["index"] for r in recs) == list(range(n))
    for r in recs:
        assert r["prediction"] == r["beams"][0] and len(r["beams"]) == 1
        assert r["targets"] and r["aux"]["scores"] == r["scores"][0]
    # A beam search keeps every beam, best first.
    run_inference(str(ckpt), task, _opts(tmp_path / "beam", "decode", num_beams=3),
                  [str(data)])
    beams = {r["index"]: r for r in _records(tmp_path / "beam", task, "decode")}
    for r in recs:
        b = beams[r["index"]]
        assert 1 <= len(b["beams"]) <= 3 and b["scores"] == sorted(b["scores"], reverse=True)
        assert b["prediction"] == b["beams"][0]

    # The random model's answers are not the targets: make a third of them right, so the
    # metric has something to count (eval must take the targets from the task, not the file).
    staged = tmp_path / "staged"
    staged.mkdir()
    for r in recs[::3]:
        r["prediction"] = r["targets"]
    (staged / f"{task}-decode.jsonl-00000-of-00001").write_text(
        "".join(json.dumps(r) + "\n" for r in recs))
    metrics = _eval("--predictions", str(staged), "--out", str(tmp_path / "ev"),
                    "--data_dir", str(data), "--task_module", "tasks.next_genre")
    want = sum(_norm(r["prediction"]) == _norm(r["targets"]) for r in recs) / len(recs)
    assert metrics["exact_match"] == pytest.approx(want) and want >= 1 / 3
    assert metrics["num_examples"] == len(recs)
    table = (tmp_path / "ev" / "metrics.md").read_text()
    assert "Decoded tasks" in table and "exact_match" in table

    # Doctored targets (the file claims its prediction was the target) are refused.
    recs[1]["targets"] = recs[1]["prediction"] + " x"
    (staged / f"{task}-decode.jsonl-00000-of-00001").write_text(
        "".join(json.dumps(r) + "\n" for r in recs))
    from flanrec.eval import cli as E

    capsys.readouterr()
    assert E.main(["--predictions", str(staged), "--out", str(tmp_path / "ev2"),
                   "--data_dir", str(data), "--task_module", "tasks.next_genre",
                   "--no_plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert "disagree with the task's own examples" in err and "example 1 has targets" in err
    assert len(err.splitlines()) == 1


def test_a_jsonl_task_with_no_prepared_dir_runs_end_to_end(registered, tmp_path):
    """README "Add your own instruction task": a JSON-lines task decodes (MODE=predict) and is
    scored by its metric fn (exact match) with no prepared dir."""
    from flanrec.data.seqio_tasks import register_jsonl_task
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    vocab = seqio.get_mixture_or_task("toyany_seq_seqidx").output_features["targets"].vocabulary
    rows = [{"inputs": f"Repeat: movie {i}", "targets": f"movie {i}"} for i in range(10)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    register_jsonl_task("toyany_mine", {"test": str(tmp_path / "mine.jsonl")}, vocab)
    try:
        run_inference(str(ckpt), "toyany_mine", _opts(tmp_path / "inf", "predict",
                                                       num_beams=1))
        recs = _records(tmp_path / "inf", "toyany_mine", "decode")
        assert [r["targets"] for r in sorted(recs, key=lambda r: r["index"])] == \
            [r["targets"] for r in rows]
        env_dir = os.environ.pop("FLANREC_DATA_DIR", None)
        try:
            metrics = _eval("--predictions", str(tmp_path / "inf"), "--out",
                            str(tmp_path / "ev"))
        finally:
            if env_dir is not None:
                os.environ["FLANREC_DATA_DIR"] = env_dir
        want = sum(_norm(r["prediction"]) == r["targets"] for r in recs) / len(recs)
        assert metrics["exact_match"] == pytest.approx(want)
    finally:
        seqio.TaskRegistry.remove("toyany_mine")


# ------------------------------------------------------------------------------ item targets


def test_a_family_whose_answer_is_another_item_is_scored_on_its_own_targets(registered,
                                                                             tmp_path):
    """tasks/next_after.py: its answer is an item of the history, not the held-out one.
    Predict ranks with nothing masked; eval ranks each example against its own target_item
    (HR@K recomputed here), and decoding scores it with the task's HR@1 metric fn."""
    from flanrec.data import prepared
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    task = "toyany_next_after_seqidx"
    run_inference(str(ckpt), task, _opts(tmp_path / "inf", "predict", num_beams=10),
                  [str(data)])
    recs = _records(tmp_path / "inf", task, "predict")
    examples = list(seqio.get_mixture_or_task(task).get_dataset(
        None, split="test", shuffle=False).as_numpy_iterator())
    assert len(recs) == len(examples)
    held_out = {s.user: s.test_item for s in prepared.load_split(str(data)).users}
    own = {r["index"]: r["target_item"] for r in recs}
    assert any(own[i] != held_out[r["user"]] for i, r in enumerate(recs))
    for r in recs:
        assert r["target_item"] == examples[r["index"]]["target_item"].decode()
    metrics = _eval("--predictions", str(tmp_path / "inf"), "--out", str(tmp_path / "ev"),
                    "--data_dir", str(data), "--task_module", "tasks.next_after")
    hits = sum(r["target_item"] in r["items"][:10] for r in recs) / len(recs)
    assert metrics["hr@10"] == pytest.approx(hits)

    run_inference(str(ckpt), task, _opts(tmp_path / "dec", "decode", num_beams=1),
                  [str(data)])
    metrics = _eval("--predictions", str(tmp_path / "dec"), "--out", str(tmp_path / "ev2"),
                    "--data_dir", str(data), "--task_module", "tasks.next_after")
    assert "hr@1" in metrics and 0.0 <= metrics["hr@1"] <= 1.0


UNSEEN_RUNS = [("toyany_seq_seqidx", "predict"), ("toyany_seqrec_seqidx", "predict"),
               ("toyany_direct_seqidx", "score"), ("toyany_rating", "rating"),
               ("toyany_binary", "score"), ("toyany_next_genre_seqidx", "decode"),
               ("toyany_next_after_seqidx", "predict")]
"""Every family that has a test split, in its mode (grounding has a train split only)."""


def test_every_family_runs_on_unseen_templates_reported_beside_test(registered, tmp_path):
    """SPLIT=test_unseen (the test queries phrased with held-out templates) runs for every
    family, and eval reports each task's unseen numbers beside test with the relative
    difference (and a paired interval for ranking); the test numbers do not change."""
    from flanrec.infer.run import run_inference

    data, ckpt = registered
    for task, mode in UNSEEN_RUNS:
        for split, out in (("test", "seen"), ("test_unseen", "unseen")):
            run_inference(str(ckpt), task, _opts(tmp_path / out, mode, num_beams=5,
                                                 split=split), [str(data)])
        unseen = _records(tmp_path / "unseen", task, mode)
        assert {r["template_type"] for r in unseen} == {"unseen"}, task
    common = ("--data_dir", str(data), "--task_module", "tasks.next_genre,tasks.next_after")
    metrics = _eval("--predictions", str(tmp_path / "seen"), "--unseen_predictions",
                    str(tmp_path / "unseen"), "--out", str(tmp_path / "ev"), *common)
    seen_only = _eval("--predictions", str(tmp_path / "seen"), "--out", str(tmp_path / "ev0"),
                      *common)
    assert {k: v for k, v in metrics.items() if k in seen_only} == seen_only
    for task, _ in UNSEEN_RUNS:
        rows = [k for k in metrics if k.startswith(f"unseen_vs_seen/{task}/")]
        assert rows and any(k.startswith(f"test_unseen/{task}/") for k in metrics), task
    task = "toyany_seq_seqidx"
    a, b = metrics[f"{task}/ndcg@10"], metrics[f"test_unseen/{task}/ndcg@10"]
    if a:
        assert metrics[f"unseen_vs_seen/{task}/ndcg@10_rel"] == pytest.approx((b - a) / a)
    assert f"unseen_vs_seen/{task}/hr@10_lo" in metrics
    table = (tmp_path / "ev" / "metrics.md").read_text()
    assert "Seen vs unseen templates" in table and "toyany_rating" in table.split(
        "Seen vs unseen templates")[1]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_text_task_prepare_train_infer_eval(tmp_path):
    """The README's path for a text-target family, as commands: prepare a tiny dataset,
    train a few steps with tiny.gin on tasks/next_genre.py's task, infer (MODE=predict, which
    decodes), and eval with the task's metric fns."""
    from train_fixtures import FAST_COMPILE as FAST

    write_raw(tmp_path / "raw")
    data = tmp_path / "data"
    env = dict(os.environ, FLANREC_DATA_DIR=str(data), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    run("flanrec.prepare", "--dataset", "ml-latest-small", "--raw_dir", str(tmp_path / "raw"),
        "--out", str(data), "--train_vocab", "--vocab_size", "400", "--task_prefix", "tiny")
    lengths = f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"
    module = "--gin.MIXTURE_OR_TASK_MODULE='tasks.next_genre'"
    run("flanrec.train", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/finetune.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'", module,
        "--gin.MIXTURE_OR_TASK_NAME='tiny_next_genre_seqidx'",
        "--gin.INITIAL_CHECKPOINT_PATH=None", lengths, "--gin.TRAIN_STEPS=4",
        "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0", "--gin.T5Config.vocab_size=512")
    run("flanrec.infer", "--gin_file=gin/runs/infer.gin",
        f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'", module,
        "--gin.MIXTURE_OR_TASK_NAME='tiny_next_genre_seqidx'",
        f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'", lengths, "--gin.NUM_BEAMS=1")
    files = sorted((tmp_path / "infer").glob("tiny_next_genre_seqidx-decode.jsonl-*"))
    assert len(files) == 1
    recs = [json.loads(line) for line in files[0].read_text().splitlines()]
    run("flanrec.eval", "--predictions", str(tmp_path / "infer"), "--out",
        str(tmp_path / "eval"), "--no_plot")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    want = sum(_norm(r["prediction"]) == _norm(r["targets"]) for r in recs) / len(recs)
    assert metrics["exact_match"] == pytest.approx(want)
    assert metrics["num_examples"] == len(recs)
