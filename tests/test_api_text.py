"""Checkpoints carry their vocabulary: a training MODEL_DIR gets the task's SentencePiece model,
`flanrec.load(...)` then takes and returns text, and `convert --to hf` ships the run's
vocabulary so transformers tokenizes like the task."""

from __future__ import annotations

import sys

import gin
import numpy as np
import pytest
import seqio
import train_fixtures as tfx

import flanrec
from flanrec.convert import cli
from flanrec.interop.vocabulary import VocabularyMismatchError
from flanrec.train import cli as train


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("text") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


@pytest.fixture(scope="module")
def run_dir(task, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("text") / "run"
    try:
        assert train.main(tfx.train_args(task, model_dir, steps=2)) == 0
    finally:
        gin.clear_config()
    return model_dir


def _task_vocab(task) -> seqio.Vocabulary:
    return seqio.get_mixture_or_task(task["task"]).output_features["targets"].vocabulary


def test_training_run_carries_the_task_vocabulary(task, run_dir):
    assert (run_dir / "spiece.model").read_bytes() == open(task["spm"], "rb").read()
    for path in (run_dir, run_dir / "checkpoint_2"):
        model = flanrec.load(str(path))
        assert model.vocabulary is not None
        assert model.vocabulary.vocab_size == _task_vocab(task).vocab_size


def test_generate_text_and_score_text(task, run_dir):
    model = flanrec.load(str(run_dir))
    vocab = _task_vocab(task)
    texts = ["user 3 watched alpha bravo charlie delta next", "user 9 watched echo golf next"]
    # By hand, through the token-id API and the task's own vocabulary (the width `encode`
    # rounds to, a multiple of 8):
    width = -(-max(len(vocab.encode(t)) + 1 for t in texts) // 8) * 8
    enc = np.zeros((2, width), np.int32)
    for i, t in enumerate(texts):
        ids = list(vocab.encode(t)) + [1]
        enc[i, : len(ids)] = ids
    seqs = model.generate(enc, max_length=6)
    want = []
    for row in seqs:
        row = list(row)
        want.append(vocab.decode(row[: row.index(1)] if 1 in row else row))
    assert model.generate_text(texts, max_length=6) == want
    beams = model.generate_text(texts, max_length=6, num_beams=3, all_beams=True)
    assert len(beams) == 2 and all(len(b) == 3 for b in beams)
    targets = ["alpha bravo", "kilo lima"]
    dec = np.zeros((2, -(-max(len(vocab.encode(t)) + 1 for t in targets) // 8) * 8), np.int32)
    for i, t in enumerate(targets):
        ids = list(vocab.encode(t)) + [1]
        dec[i, : len(ids)] = ids
    np.testing.assert_allclose(model.score_text(texts, targets), model.score(enc, dec),
                               rtol=1e-5, atol=1e-5)
    assert model.decode(model.encode(["hotel india"]))[0] == "hotel india"


def test_hf_export_of_the_run_tokenizes_like_the_task(task, run_dir, tmp_path):
    import transformers

    out = tmp_path / "hf"
    assert cli.main(["--from", "flanrec", "--src", str(run_dir), "--to", "hf",
                     "--out", str(out)]) == 0
    assert (out / "spiece.model").read_bytes() == open(task["spm"], "rb").read()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    vocab = _task_vocab(task)
    for text in ("user 3 watched alpha bravo next", "kilo lima mike 7 8 9"):
        assert tok(text)["input_ids"] == list(vocab.encode(text)) + [1]
    text = ["user 5 watched india juliet kilo next"]
    assert flanrec.load(str(out)).generate_text(text, max_length=5) == \
        flanrec.load(str(run_dir)).generate_text(text, max_length=5)


def test_text_methods_without_a_vocabulary_say_how_to_get_one(tmp_path):
    from hf_fixtures import save_hf_t5

    model = flanrec.load(str(save_hf_t5(tmp_path / "hf")))  # no spiece.model
    assert model.vocabulary is None
    with pytest.raises(ValueError, match="carries no vocabulary.*vocabulary="):
        model.generate_text(["hello"])


def test_model_dir_of_another_vocabulary_is_refused(task, run_dir, tmp_path):
    other = tfx.make_task(tmp_path / "other", seed=5, vocab_size=60)
    sys.path.insert(0, other["dir"])
    try:
        with pytest.raises(VocabularyMismatchError, match="another vocabulary.*new MODEL_DIR"):
            train.main(tfx.train_args(other, run_dir, steps=3))
    finally:
        gin.clear_config()
        sys.path.remove(other["dir"])
