"""Issue 14, "gs:// for every path": every job on a non-local file system that runs here.

TensorFlow's `ram://` file system (through `tf.io.gfile`) stands in for a bucket: like GCS it
has implicit directories and no atomic directory rename. Today's code turned such paths into
local ones (`os.path.abspath("ram://b/x")` is `$PWD/ram:/b/x`) and reported success; here
prepare, the SeqIO tasks, training (INITIAL_CHECKPOINT_PATH on ram://), inference (an
interrupted run resumed on ram://), baselines, eval, ensembles, convert and `flanrec.load`
read and write ram:// for real. `ram://` lives in this process only, so every job runs
in-process (a SIGKILL cannot be tested on it: the interruption is an exception after the
second chunk, which leaves the same state on disk as a kill between chunks).

Orbax cannot write to ram:// (etils.epath has no ram:// and TensorStore no driver for it):
MODEL_DIR stays local, and MODEL_DIR=ram://... is refused by name before anything compiles.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import random_params

from flanrec.files import outputs, storage
from flanrec.model.config import T5Config
from flanrec.model.params import flatten

REPO = Path(__file__).resolve().parents[1]
USERS, ITEMS = 24, 30
LENGTHS = {"inputs": 96, "targets": 8}
CFG = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
               num_encoder_layers=2, num_decoder_layers=2, name="tiny-ram-test")


def _no_local_copies(cwd: Path) -> None:
    """The bug this replaces: URL paths written as local `ram:` / `gs:` directories."""
    assert not [p for p in os.listdir(cwd) if p.startswith(("ram:", "gs:"))], os.listdir(cwd)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A ram:// "bucket" with a prepared dataset, an HF export and a flanrec checkpoint, all
    written by the jobs themselves; the prepared tasks are registered."""
    import tasks
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.convert.cli import main as convert_main
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("ram")
    cwd = os.getcwd()
    os.chdir(root)  # anything written "locally" by mistake would land here
    try:
        rng = np.random.default_rng(0)
        rows = ["userId,movieId,rating,timestamp"]
        for u in range(1, USERS + 1):
            for t, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=8,
                                                replace=False)):
                rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
        (root / "raw").mkdir()
        (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
        url = f"ram://flanrec-{uuid.uuid4().hex[:8]}"
        data = f"{url}/prepared/ml-toy"
        prepare(PrepareOptions(dataset="ml-latest-small", out=data, raw_dir=str(root / "raw"),
                               train_vocab=True, vocab_size=400, num_candidates=5,
                               families=("seq", "direct"), allow_download=False,
                               task_prefix="ramtoy"), log=lambda m: None)
        params = random_params(CFG, 0)
        local = save_params_checkpoint(CFG, params, root / "ckpt")
        for to, out in (("hf", f"{url}/hf"), ("flanrec", f"{url}/ckpt")):
            assert convert_main(["--from", "flanrec", "--src", str(local), "--to", to,
                                 "--out", out]) == 0
        _no_local_copies(root)
    finally:
        os.chdir(cwd)
    tasks.register_prepared(data)
    yield {"url": url, "data": data, "hf": f"{url}/hf", "ckpt": f"{url}/ckpt",
           "params": params, "root": root}
    tasks.unregister_prepared("ramtoy")


def test_prepare_publishes_to_ram_and_tasks_read_it(bucket):
    import seqio

    from flanrec.data import prepared
    from flanrec.data.prepared import item_trie

    data = bucket["data"]
    marker = outputs.read_marker(data)
    assert marker["job"] == "prepare" and marker["complete"]
    assert {"prepare.json", "split", "index", "tasks", "vocab"} <= set(storage.listdir(data))
    assert len(prepared.load_split(data).users) == USERS
    trie, items = item_trie(data)
    assert len(items) == ITEMS and trie.num_nodes > ITEMS
    ds = seqio.get_mixture_or_task("ramtoy_seq_seqidx").get_dataset(
        LENGTHS, split="train", shuffle=False, num_epochs=1)
    ex = next(ds.as_numpy_iterator())
    assert ex["inputs"].size and ex["targets"].size
    # Exported checkpoints are whole directories with their marker (uploaded last).
    assert outputs.read_marker(bucket["hf"])["job"] == "convert"
    assert storage.isfile(storage.join(bucket["hf"], "model.safetensors"))


def test_checkpoints_on_ram_load_and_gs_urls_keep_their_scheme(bucket, tmp_path,
                                                               monkeypatch):
    import flanrec

    want = flatten(bucket["params"])
    for path in (bucket["hf"], bucket["ckpt"]):
        got = flatten(flanrec.load(path).params)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=f"{path} {k}")
    monkeypatch.chdir(tmp_path)
    url = "gs://flanrec-test-no-such-bucket-7f3a/ckpt"
    with pytest.raises(Exception) as e:  # no network here: unreachable, named in full
        flanrec.load(url)
    assert url in str(e.value) and "gs:/flanrec" not in str(e.value)
    _no_local_copies(tmp_path)


@pytest.mark.slow
def test_training_reads_ram_data_and_initial_checkpoint(bucket, tmp_path):
    import gin

    from flanrec.train import cli as train

    def args(model_dir: str) -> list[str]:
        return ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/finetune.gin",
                "--gin.T5Config.vocab_size=512", f"--gin.MODEL_DIR={model_dir}",
                "--gin.MIXTURE_OR_TASK_NAME=ramtoy_seq_seqidx", f"--gin.TASK_FEATURE_LENGTHS="
                f"{LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
                f"--gin.INITIAL_CHECKPOINT_PATH={bucket['hf']}", "--gin.EVAL_PERIOD=0",
                "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.PACK=False"]

    try:
        with pytest.raises(storage.StorageError, match="local disk or gs:// only, not ram://"):
            train.cli(args(f"{bucket['url']}/run"))
    finally:
        gin.clear_config()
    assert not storage.exists(f"{bucket['url']}/run")
    try:
        assert train.main(args(str(tmp_path / "run"))) == 0
    finally:
        gin.clear_config()
    from flanrec.checkpoints import latest_complete_step

    assert latest_complete_step(tmp_path / "run") == 2
    assert outputs.read_marker(str(tmp_path / "run"))["job"] == "train"


@pytest.mark.slow
def test_interrupted_inference_resumes_on_ram(bucket, tmp_path, monkeypatch):
    from flanrec.infer.run import InferenceOptions, run_inference
    from flanrec.infer.writer import ChunkWriter, read_jsonl

    class Interrupted(Exception):
        pass

    task = "ramtoy_direct_seqidx"
    out = f"{bucket['url']}/infer"
    opts = InferenceOptions(output_dir=out, task_feature_lengths=LENGTHS, mode="score",
                            batch_size=4, chunk_size=4, progress_every=1000.0)
    real_write = ChunkWriter.write
    written = []

    def write_then_die(self, chunk, records):  # the process dies after its second chunk
        real_write(self, chunk, records)
        written.append(chunk)
        if len(written) == 2:
            raise Interrupted

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ChunkWriter, "write", write_then_die)
    with pytest.raises(Interrupted):
        run_inference(bucket["ckpt"], task, opts, [bucket["data"]])
    chunk_dir = f"{out}/.{task}-score.jsonl-00000-of-00001.chunks"
    done = {n: storage.read_text(f"{chunk_dir}/{n}") for n in storage.listdir(chunk_dir)
            if n.startswith("chunk-")}
    assert sorted(done) == ["chunk-000000.jsonl", "chunk-000001.jsonl"]
    storage.write_atomic(f"{chunk_dir}/chunk-000002.jsonl.tmp-1-x", "half a chunk")
    assert not storage.exists(f"{out}/{task}-score.jsonl-00000-of-00001")

    monkeypatch.setattr(ChunkWriter, "write", real_write)
    [summary] = run_inference(bucket["ckpt"], task, opts, [bucket["data"]])
    assert summary["examples"] == USERS and summary["computed"] == USERS - 8
    shard = f"{out}/{task}-score.jsonl-00000-of-00001"
    recs = read_jsonl([shard])
    assert sorted(r["index"] for r in recs) == list(range(USERS))  # none lost, none twice
    final = storage.read_text(shard)
    for text in done.values():
        assert text in final  # the finished chunks were kept, not recomputed
    assert not storage.exists(chunk_dir)
    record = storage.read_json(f"{out}/{task}-score-manifest-00000-of-00001.json")
    assert record["records"] == USERS and record["checkpoint"]["checkpoint"] == bucket["ckpt"]
    assert outputs.read_marker(out)["job"] == "infer"
    _no_local_copies(tmp_path)

    # A rerun finds the shard complete (same checkpoint, same settings): nothing computed.
    [again] = run_inference(bucket["ckpt"], task, opts, [bucket["data"]])
    assert again["computed"] == 0


def _quiet(fn, *args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = fn(*args)
    return rc, err.getvalue()


def test_baselines_eval_and_ensembles_write_to_ram(bucket, tmp_path, monkeypatch):
    from flanrec.baselines.__main__ import main as baselines_main
    from flanrec.ensemble.__main__ import main as ensemble_main
    from flanrec.eval.cli import main as eval_main

    monkeypatch.chdir(tmp_path)
    url, data = bucket["url"], bucket["data"]
    assert _quiet(baselines_main, ["--data_dir", data, "--model", "popularity", "--out",
                                   f"{url}/baselines", "--k", "5"])[0] == 0
    assert storage.exists(f"{url}/baselines/popularity-predict.jsonl-00000-of-00001")
    rc, err = _quiet(eval_main, ["--predictions", f"{url}/baselines", "--data_dir", data,
                                 "--out", f"{url}/eval"])
    assert rc == 0, err
    metrics = storage.read_json(f"{url}/eval/metrics.json")
    assert 0.0 <= metrics["hr@5"] <= 1.0 and metrics["num_users"] == USERS
    assert storage.read_bytes(f"{url}/eval/hr_ndcg_at_k.png")[:4] == b"\x89PNG"
    rc, err = _quiet(ensemble_main, ["fuse", "--predictions", f"{url}/baselines",
                                     f"{url}/baselines", "--out", f"{url}/ens"])
    assert rc == 0, err
    fused = storage.read_text(f"{url}/ens/popularity-ens-predict.jsonl-00000-of-00001")
    assert len(fused.splitlines()) == USERS
    assert json.loads(fused.splitlines()[0])["ensemble"]["members"] == 2
    _no_local_copies(tmp_path)


def test_infer_to_an_unreachable_bucket_fails_without_writing_locally(bucket, tmp_path,
                                                                      monkeypatch):
    """Today: INFER_OUTPUT_DIR=gs://bucket/x wrote ./gs:/bucket/x and reported success."""
    import gin

    from flanrec.infer import cli as infer

    monkeypatch.chdir(tmp_path)
    url = "gs://flanrec-test-no-such-bucket-7f3a/infer"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = infer.main([f"--gin_file={REPO}/gin/runs/infer.gin",
                             f"--gin.CHECKPOINT_PATH={bucket['ckpt']}",
                             "--gin.MIXTURE_OR_TASK_NAME=ramtoy_seq_seqidx",
                             f"--gin.INFER_OUTPUT_DIR={url}",
                             f"--gin.DATA_DIR={bucket['data']}",
                             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"])
    finally:
        gin.clear_config()
    assert rc == 2 and url in err.getvalue(), err.getvalue()
    _no_local_copies(tmp_path)
