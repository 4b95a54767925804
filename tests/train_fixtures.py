"""A real, tiny SeqIO task on disk and helpers to run `flanrec.train` in-process or as a
subprocess (imported by tests/test_train*.py; kept out of conftest.py, which the lead owns).

The task is a genuine `seqio.Task` over TSV files with a SentencePiece vocabulary trained here
(pad 0, eos 1, unk 2 — T5's layout, which seqio's PAD_ID=0 requires), registered by a small
module written next to the data so that MIXTURE_OR_TASK_MODULE imports it exactly as a user's
`tasks.movielens` would be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]


def make_task(root: Path, n_train: int = 16, n_val: int = 8, seed: int = 0,
              vocab_size: int = 64) -> dict[str, str]:
    """Write TSV data, a SentencePiece model and a task module; return names and paths."""
    import sentencepiece as spm

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def example(i: int) -> tuple[str, str]:
        history = " ".join(rng.choice(WORDS, size=4))
        target = " ".join(rng.choice(WORDS, size=2))
        return f"user {i} watched {history} next", target

    train = [example(i) for i in range(n_train)]
    val = [example(100 + i) for i in range(n_val)]
    for name, rows in (("train", train), ("validation", val)):
        (root / f"{name}.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{a} {b}" for a, b in train + val) + "\n"
                      + " ".join(WORDS) + " user watched next 0 1 2 3 4 5 6 7 8 9\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spm"), vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, model_type="unigram", minloglevel=2)
    tag = uuid.uuid4().hex[:8]
    task, module = f"flanrec_test_mem_{tag}", f"flanrec_test_tasks_{tag}"
    (root / f"{module}.py").write_text(f'''"""Test task (written by tests/train_fixtures.py)."""
import seqio
import tensorflow as tf

VOCAB = seqio.SentencePieceVocabulary({str(root / "spm.model")!r})


@seqio.map_over_dataset
def _parse(line):
    parts = tf.strings.split(line, "\\t")
    return {{"inputs": parts[0], "targets": parts[1]}}


seqio.TaskRegistry.add(
    {task!r},
    source=seqio.TextLineDataSource(
        {{"train": {str(root / "train.tsv")!r}, "validation": {str(root / "validation.tsv")!r}}},
        num_input_examples={{"train": {n_train}, "validation": {n_val}}}),
    preprocessors=[_parse, seqio.preprocessors.tokenize,
                   seqio.preprocessors.append_eos_after_trim],
    output_features={{"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}},
    metric_fns=[])
''')
    return {"task": task, "module": module, "dir": str(root), "spm": str(root / "spm.model")}


def train_args(task: dict[str, str], model_dir: Path, *, steps: int, batch: int = 8,
               extra: tuple[str, ...] = (), run: str = "finetune") -> list[str]:
    """Command-line arguments of a tiny run on `task` (gin files of the repo, T5X macros)."""
    return [
        "--gin_file=gin/models/tiny.gin", f"--gin_file=gin/runs/{run}.gin",
        f"--gin_search_paths={task['dir']}",
        f"--gin.MODEL_DIR={model_dir}",
        f"--gin.MIXTURE_OR_TASK_NAME={task['task']}",
        f"--gin.MIXTURE_OR_TASK_MODULE={task['module']}",
        # inputs 40: one of the 16 default examples is 36 tokens (EOS included), and the
        # job refuses lengths that truncate more than 5% of the inputs
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 8}",
        f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch}",
        "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.DROPOUT_RATE=0.1",
        "--gin.LEARNING_RATE=0.01", "--gin.EVAL_PERIOD=0", "--gin.LOG_PERIOD=1",
        "--gin.PACK=False", *extra]


# Tests check semantics, not speed: skip LLVM's expensive passes (halves XLA:CPU compile
# time) and share compiled programs between the identical runs of a test through JAX's
# persistent cache (both change nothing numerically between the runs being compared).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def subprocess_env(task: dict[str, str], devices: int = 1,
                   cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), task["dir"], env.get("PYTHONPATH", "")])
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def run_train(args: list[str], env: dict[str, str], timeout: float = 240,
              ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flanrec.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_scalars(logdir: Path, tag: str) -> dict[int, float]:
    """step → value of one scalar from the TensorBoard event files under `logdir`."""
    import tensorflow as tf

    out: dict[int, float] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField(
                        "tensor") else v.simple_value
    return out


def params_of(model_dir: Path) -> dict[str, np.ndarray]:
    """Flat float32 params of the latest complete checkpoint (real Orbax restore)."""
    from flanrec.checkpoints import load_params
    from flanrec.model.params import flatten

    return flatten(load_params(str(model_dir))[1])


def dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))
