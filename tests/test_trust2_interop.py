"""Trust, round 2, interop: the HF export's tokenizer gives the task vocabulary's ids on every
text (generated adversarial text, and every rendered example of a prepared data set); the
export-time check probes natural text and stays quiet when it matches."""

from __future__ import annotations

import json
import logging
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import seqio
import tokenizers
import transformers
from test_convert_hf_tokenizer import ITEM_TOKENS, _export, _vocabularies

from flanrec.interop import hf_tokenizer

# Characters and strings a careless or hostile user types: every ASCII punctuation mark,
# digits, whitespace of several kinds (tab, NBSP, ideographic space, zero-width space, a
# typed "▁"), accented Latin (precomposed and combining), CJK, Cyrillic, emoji (with skin
# tone, ZWJ family, flag), compatibility forms (fullwidth, ligatures, halfwidth katakana),
# item-ID tokens, extra ids and the names of pieces seqio never matches in text.
_POOLS: dict[str, list[str] | str] = {
    "ascii": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "digits": "0123456789",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "space": [" ", "  ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u200b",
              "\u2581", "\u1680", "\u2028", "\ufeff"],
    "latin": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿÀÉÎÕÜßœŒŁłŠšŽžĞğİıȘș",
    "combining": ["e\u0301", "a\u0308", "n\u0303", "\u0301", "o\u0302\u0323", "A\u030a"],
    "cjk": "東京物語千と尋の神隠しこんにちは한국어中文字",
    "cyrillic": "МоскваслезамневеритЖЁё",
    "other": ["🎬", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "ﬁ", "ＡＢＣ", "１２３", "①", "™", "½", "…",
              "—", "–", "“", "”", "‘", "’", "«", "»", "€", "\u00ad", "\ufffd", "ǅ", "Ⅻ", "㎏",
              "ｶﾞ", "\U0001d400"],
    "items": ITEM_TOKENS,
    "specials": ["<extra_id_0>", " <extra_id_3>", "<extra_id_99>", "</s>", "<pad>", "<unk>",
                 "<0x41>", "<0xC3>", "<s>", "<flanrec_unused_7>"],
    "words": ["Predict", "user", "7's", "rating", "of", "313", "(Titanic", "(1997))", "on", "a",
              "scale", "from", "1", "to", "5;", "don't", "movie", "watched", "Which", "next?",
              "Ünïcödé", "~", "[brackets]", "{braces}", "1682", "café", "naïve"],
}
ISSUE_TEXTS = [
    "Predict user 7's rating of 313 (Titanic (1997)) on a scale from 1 to 5; semicolons; don't.",
    "Ünïcödé ~ [brackets] {braces} 1682 <c17>",
    "", " ", "\u2581", "a\u2581", "\u2581a", "   leading and trailing   ",
]


def generated_texts(n: int, seed: int = 24) -> list[str]:
    """`n` texts of 1-14 random parts from `_POOLS`, half of them followed by a space."""
    rng = random.Random(seed)
    kinds = list(_POOLS)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 14)):
            pool = _POOLS[rng.choice(kinds)]
            if isinstance(pool, str):
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
            else:
                parts.append(rng.choice(pool))
            if rng.random() < 0.5:
                parts.append(" ")
        out.append("".join(parts))
    return out


def _has_marks(text: str) -> bool:
    """Combining marks (or the halfwidth voiced marks, which extend a grapheme cluster)."""
    return any(unicodedata.category(c).startswith("M") or c in "\uff9e\uff9f" for c in text)


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory) -> dict[str, str]:
    """The two models of test_convert_hf_tokenizer (with and without item symbols)."""
    from test_convert_hf_tokenizer import TITLES, _instructions

    from flanrec.data.vocab import train_sentencepiece

    root = tmp_path_factory.mktemp("spm")
    texts = _instructions(seed=0, n=400) + TITLES * 5
    return {
        "trained": train_sentencepiece(texts, str(root / "items.model"), vocab_size=600,
                                       user_defined_symbols=ITEM_TOKENS),
        "base": train_sentencepiece(texts, str(root / "base.model"), vocab_size=600),
    }


def _fast(out: Path) -> tokenizers.Tokenizer:
    """tokenizer.json as a serving stack reads it (special tokens in text are text)."""
    tok = tokenizers.Tokenizer.from_file(str(out / hf_tokenizer.TOKENIZER_FILE))
    tok.encode_special_tokens = True
    return tok


@pytest.mark.parametrize("kind", ["trained", "slots"])
def test_generated_texts_get_the_task_ids(spm_models, tmp_path, caplog, kind):
    vocab = _vocabularies(spm_models)[kind]
    with caplog.at_level(logging.WARNING, logger="flanrec.interop.hf_tokenizer"):
        out = _export(vocab, tmp_path / "export")
    # Natural probe texts: both files agree, nothing to warn about.
    assert not [r for r in caplog.records if r.name.startswith("flanrec.convert")]
    texts = ISSUE_TEXTS + generated_texts(1200)
    ours = [[int(i) for i in vocab.encode(t)] for t in texts]

    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == vocab.vocab_size
    theirs = tok(texts, add_special_tokens=False)["input_ids"]
    wrong = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not wrong, wrong[:3]
    # As seqio's tasks do: EOS (1) appended; pad 0; "</s>" typed in text is text.
    assert tok(texts[0])["input_ids"] == ours[0] + [1]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("</s>", add_special_tokens=False)["input_ids"] == list(vocab.encode("</s>"))
    short = [int(i) for i in vocab.encode("a")] + [1]
    padded = tok(["a", "User 7 watched Toy Story"], padding=True)["input_ids"]
    assert padded[0] == short + [0] * (len(padded[1]) - len(short))  # seqio pads with 0
    plain = "User 7 watched Toy Story (1995) <c3><c17>, then <c5>"
    assert tok.decode(tok(plain)["input_ids"], skip_special_tokens=True) == plain

    # tokenizer.json (the tokenizers library, as TGI and PreTrainedTokenizerFast read it):
    # the same ids except where the module doc says the library cannot follow SentencePiece,
    # and `differences` names exactly those texts with their cause.
    fast = [e.ids for e in _fast(out).encode_batch(texts, add_special_tokens=False)]
    differ = {t for t, a, b in zip(texts, ours, fast, strict=True) if a != b}
    found = dict(hf_tokenizer.differences(vocab, texts))
    assert set(found) == differ
    assert len(differ) < len(texts) // 5
    for text, why in found.items():
        if "normalizes" in why:
            assert _has_marks(text), text
        else:
            assert "equal score" in why, (text, why)
    clean = [t for t in texts if not _has_marks(t)]
    assert sum(t in differ for t in clean) <= len(clean) // 100  # ties only
    assert all(t not in differ for t in ISSUE_TEXTS)
    fast_hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    assert fast_hf(ISSUE_TEXTS[:2], add_special_tokens=False)["input_ids"] == ours[:2]
    assert fast_hf.decode(fast[0]) == texts[0]


def test_export_warns_when_natural_text_differs(spm_models, tmp_path, caplog):
    """The check encodes its probes with both tokenizers and names the first that differs."""
    vocab = _vocabularies(spm_models)["trained"]
    texts = hf_tokenizer.probe_texts(vocab) + ["decomposed accents: Vie\u0302\u0323t Nam"]
    with caplog.at_level(logging.WARNING, logger="flanrec.interop.hf_tokenizer"):
        messages = hf_tokenizer.warn_differences(vocab, texts, "HF export")
    assert len(messages) == 1 and f"1 of {len(texts)} probe texts" in messages[0]
    assert "Vie\u0302\u0323t" in caplog.text and "grapheme" in caplog.text
    # Probe texts are natural: item tokens appear as rendered text shows them, no "▁".
    assert not any("\u2581" in t for t in hf_tokenizer.probe_texts(vocab))


@pytest.fixture(scope="module")
def small_prepared(ml100k_dir: Path, tmp_path_factory) -> Path:
    """`prepare --train_vocab` on the first 8 users of MovieLens-100K (all items' titles)."""
    from flanrec.prepare import PrepareOptions, prepare

    raw = tmp_path_factory.mktemp("raw-small")
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    keep = [ln for ln in lines[1:] if int(ln.split("\t")[0]) <= 8]
    (raw / "ml-100k.inter").write_text("\n".join([lines[0], *keep]) + "\n")
    for suffix in ("item", "user"):
        (raw / f"ml-100k.{suffix}").write_bytes((ml100k_dir / f"ml-100k.{suffix}").read_bytes())
    out = tmp_path_factory.mktemp("prepared-small") / "ml-100k-small"
    prepare(PrepareOptions(dataset="ml-100k", out=str(out), raw_dir=str(raw), train_vocab=True,
                           vocab_size=1500, allow_download=False, num_shards=1),
            log=lambda msg: None)
    return out


@pytest.mark.slow  # ~25 seqio pipelines (7 tasks x their splits), about a second each
def test_every_rendered_example_of_a_prepared_dir(small_prepared, tmp_path, caplog):
    """Every example of every task and split, as the seqio task tokenized it for training,
    against the export's AutoTokenizer (and tokenizer.json) on the task's own text."""
    import tasks
    from flanrec.data import vocab as vocab_lib

    vocab = vocab_lib.vocabulary_for_prepared(str(small_prepared))
    with caplog.at_level(logging.WARNING, logger="flanrec.interop.hf_tokenizer"):
        out = _export(vocab, tmp_path / "export")
    assert not [r for r in caplog.records if r.name.startswith("flanrec.convert")]
    names = tasks.register_prepared(str(small_prepared), prefix="trust2_interop")
    try:
        texts, task_ids = [], []
        for name in names:
            task = seqio.get_mixture_or_task(name)
            if not isinstance(task, seqio.Task):
                continue
            for split in task.splits:
                ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
                for ex in ds.as_numpy_iterator():
                    for key in ("inputs", "targets"):
                        ids = [int(i) for i in ex[key]]
                        texts.append(ex[f"{key}_pretokenized"].decode())
                        task_ids.append(ids[:-1] if ids and ids[-1] == 1 else ids)
    finally:
        for name in names:
            seqio.MixtureRegistry.remove(name)
            seqio.TaskRegistry.remove(name)
    assert len(texts) > 1500
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    theirs = tok(texts, add_special_tokens=False)["input_ids"]
    python_sp = [[int(i) for i in vocab.encode(t)] for t in texts]
    # AutoTokenizer is SentencePiece on the task's proto: seqio's `encode`, every text.
    assert theirs == python_sp
    # The task's ids come from seqio's `encode_tf` (tensorflow-text's own SentencePiece
    # build); where that breaks an exact tie between two segmentations otherwise than the
    # sentencepiece package ("(555)": "5"+"55" or "55"+"5"), seqio disagrees with itself.
    # Anything else is a difference the export made.
    wrong = [(t, a, b) for t, a, b, c in zip(texts, task_ids, theirs, python_sp, strict=True)
             if a != b and a == c]
    assert not wrong, (len(wrong), wrong[:2])
    assert sum(a != b for a, b in zip(task_ids, theirs, strict=True)) <= len(texts) // 1000
    fast = [e.ids for e in _fast(out).encode_batch(texts, add_special_tokens=False)]
    differ = [t for t, a, b in zip(texts, python_sp, fast, strict=True) if a != b]
    assert len(differ) <= len(texts) // 1000, differ[:3]  # at most a float tie or two
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "SentencePieceBackend")
    assert np.array_equal(np.asarray(tok(texts[0])["input_ids"][-1]), 1)


# ------------------------------------------------------------------------ newcomer edges
def test_baselines_all_without_data_dir(small_prepared, tmp_path, monkeypatch, capsys):
    """`python -m flanrec.baselines --model all --out DIR` as the README writes it (no
    --data_dir): the data dir comes from $FLANREC_DATA_DIR for every baseline, the family
    ones included (they failed after SASRec had trained; SASRec is left out here to keep
    the test quick: it reads the split the popularity baseline reads)."""
    from flanrec.baselines.__main__ import cli

    monkeypatch.setenv("FLANREC_DATA_DIR", str(small_prepared))
    out = tmp_path / "baselines"
    for model in ("popularity", "families"):
        assert cli(["--model", model, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "families.json" in names and any(n.startswith("popularity-") for n in names)
    assert any(n.startswith("bias-rating") for n in names)


_JOB_SNIPPET = """
import logging
from flanrec.frontend import jobs
jobs.configure(False, tensorflow=False)
logging.getLogger("flanrec.checkpoints").warning("a warning")
logging.getLogger("flanrec.train").info("an info line")
import tensorflow as tf  # what seqio or tf.io.gfile does later in eval and convert
print("imported", tf.__name__, tf.config.get_visible_devices("GPU"))
"""


def test_job_warnings_go_to_stderr_and_tensorflow_stays_quiet(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    proc = subprocess.run([sys.executable, "-c", _JOB_SNIPPET], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "an info line" in proc.stdout and "a warning" not in proc.stdout
    assert "imported tensorflow []" in proc.stdout
    # stderr holds the warning and nothing of TensorFlow's start-up.
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.strip().endswith("W flanrec.checkpoints] a warning")


def test_using_checkpoint_is_said_once(tmp_path, caplog):
    from test_trust_checkpoints import write_run

    from flanrec.checkpoints import BEST_FILE, resolve_checkpoint

    write_run(tmp_path / "run", steps=(1, 2))
    (tmp_path / "run" / BEST_FILE).write_text(json.dumps({"step": 1}))
    with caplog.at_level(logging.INFO, logger="flanrec.checkpoints"):
        for _ in range(3):  # vocabulary, config, params: one job resolves it several times
            assert resolve_checkpoint(tmp_path / "run").name == "checkpoint_1"
    assert caplog.text.count("using checkpoint 1") == 1


def test_benchmarks_append_to_an_untracked_file(monkeypatch):
    import subprocess

    from bench import _common

    monkeypatch.delenv("FLANREC_BENCH_RESULTS", raising=False)
    path = _common.results_path()
    assert path == _common.REPO / "runs" / "bench" / "results.jsonl"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=_common.REPO)
    assert ignored.returncode == 0  # /runs/ is gitignored: a run never dirties the checkout


# ---------------------------------------------------------------------------------- claims
def test_mfu_is_never_above_100_percent(caplog):
    import time

    from flanrec.train import flops
    from flanrec.train import steps as trainer

    assert flops.utilisation(5.0, 10.0) == 0.5
    assert flops.utilisation(12.0, 10.0) != flops.utilisation(12.0, 10.0)  # NaN
    assert trainer.format_mfu(float("nan")) == "n/a" and trainer.format_mfu(0.4127) == "41.27%"

    def run(meter: trainer.Throughput, seconds: float = 1.0) -> dict[str, float]:
        meter.start(0)
        meter._t0 = time.perf_counter() - seconds  # one step that took `seconds`
        return meter.report(1)

    # A CPU peak probed under load (100 FLOP/s) below what training reaches (122): the peak
    # is raised to the achieved rate, once said; MFU 100%, then below as steps slow down.
    measured = trainer.Throughput(122.0, 100.0, global_batch=1, total_steps=10,
                                  peak_measured=True)
    with caplog.at_level(logging.INFO, logger="flanrec.train.steps"):
        first = run(measured)
        second = run(measured, seconds=2.0)
    assert 0.999 < first["mfu"] <= 1.0 and first["flops_per_sec"] > 120
    assert 0.49 < second["mfu"] < 0.52
    assert caplog.text.count("above the matmul peak measured at start-up") == 1
    # A datasheet / gin peak is never raised: MFU is not reported, with a warning.
    given = trainer.Throughput(122.0, 100.0, global_batch=1, total_steps=10)
    with caplog.at_level(logging.WARNING, logger="flanrec.train.steps"):
        rates = run(given)
    assert rates["mfu"] != rates["mfu"] and "the peak figure is wrong" in caplog.text
    from flanrec.train import scalars

    window = {"loss": 1.0, "z_loss": 0.0, "accuracy": 0.5, "learning_rate": 0.1,
              "grad_norm": 1.0, "param_norm": 1.0, "target_tokens": 8.0}
    tags = scalars.train_scalars(window, rates, batch_size=1, target_length=8, num_devices=1)
    assert "mfu" not in tags and tags["timing/flops_per_second"] > 120
