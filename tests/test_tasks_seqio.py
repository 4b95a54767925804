"""The SeqIO registrations over a real prepared MovieLens-100K: plain seqio all the way.

Every task and the mixture go through `seqio.get_dataset` with a packing
`EncDecFeatureConverter`, as a T5X-style trainer would call them; the Flan bridge and the
`ml100k_rec_flan_mix` mixture are checked against a real (tiny) `flan2022_submix` mixture
registered here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import seqio

TASKS = ["ml100k_binary", "ml100k_direct_seqidx", "ml100k_grounding_seqidx", "ml100k_profile",
         "ml100k_rating", "ml100k_seq_seqidx", "ml100k_seqrec_seqidx"]
LENGTHS = {"inputs": 256, "targets": 32}


@pytest.fixture(scope="module")
def registered(prepared_ml100k) -> list[str]:
    import tasks

    return tasks.register_prepared(str(prepared_ml100k))


@pytest.fixture()
def clean_registry():
    """Remove what a test registers beyond the module's tasks (registries are global)."""
    before_t = set(seqio.TaskRegistry.names())
    before_m = set(seqio.MixtureRegistry.names())
    yield
    for name in set(seqio.MixtureRegistry.names()) - before_m:
        seqio.MixtureRegistry.remove(name)
    for name in set(seqio.TaskRegistry.names()) - before_t:
        seqio.TaskRegistry.remove(name)


def _batch(name: str, split: str = "train", **kwargs):
    ds = seqio.get_dataset(name, LENGTHS, seqio.EncDecFeatureConverter(pack=True),
                           dataset_split=split, shuffle=False, batch_size=4, num_epochs=1,
                           **kwargs)
    return next(iter(ds.as_numpy_iterator()))


def test_names(registered):
    assert registered == TASKS + ["ml100k_rec_mix"]
    assert "ml100k_rec_mix" in seqio.MixtureRegistry.names()


@pytest.mark.parametrize("name", TASKS + ["ml100k_rec_mix"])
def test_packed_batches_for_every_task_and_the_mixture(registered, name):
    vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    b = _batch(name)
    assert b["encoder_input_tokens"].shape == (4, 256)
    assert b["decoder_target_tokens"].shape == (4, 32)
    assert b["encoder_segment_ids"].max() >= 1 and b["decoder_loss_weights"].sum() > 0
    assert 0 <= b["encoder_input_tokens"].min() and b["encoder_input_tokens"].max() < \
        vocab.vocab_size
    # T5 convention: decoder inputs are targets shifted right, 0 starting each segment.
    assert (b["decoder_input_tokens"][:, 0] == 0).all()


def test_eval_splits_metadata_and_postprocessing(registered):
    task = seqio.get_mixture_or_task("ml100k_seq_seqidx")
    assert set(task.splits) == {"train", "validation", "test", "test_unseen"}
    vocab = task.output_features["targets"].vocabulary
    n = 0
    for ex in task.get_dataset(LENGTHS, split="test", shuffle=False).take(50).as_numpy_iterator():
        assert ex["_task_name"] == b"ml100k_seq" and ex["_template_type"] == b"seen"
        assert ex["_template_idx"].dtype.kind == "i"
        assert ex["targets"][-1] == vocab.eos_id
        text = vocab.decode(ex["targets"].tolist())
        assert text == ex["targets_pretokenized"].decode()
        assert task.postprocess_fn(text, example=ex, is_target=True) == \
            ex["target_item"].decode()
        n += 1
    assert n == 50
    assert task.postprocess_fn("not an item id") == ""
    unseen = next(iter(task.get_dataset(LENGTHS, split="test_unseen", shuffle=False)
                       .as_numpy_iterator()))
    assert unseen["_template_type"] == b"unseen"


def test_rating_and_binary_targets_parse(registered):
    for name, check in (("ml100k_rating", lambda v: 1.0 <= v <= 5.0),
                        ("ml100k_binary", lambda v: v in (0, 1))):
        task = seqio.get_mixture_or_task(name)
        for ex in task.get_dataset(LENGTHS, split="validation", shuffle=False).take(20) \
                .as_numpy_iterator():
            value = task.postprocess_fn(ex["targets_pretokenized"], is_target=True)
            assert check(value), (name, ex["targets_pretokenized"])


def test_hosts_shard_by_example(registered):
    """Shard i of n is every n-th example, for any n (rendered on read, not files)."""
    task = seqio.get_mixture_or_task("ml100k_seq_seqidx")
    assert task.num_input_examples("validation") == 943
    assert task.source.supports_arbitrary_sharding
    for n in (2, 3):
        users = [[ex["inputs_pretokenized"] for ex in task.get_dataset(
            LENGTHS, split="validation", shuffle=False,
            shard_info=seqio.ShardInfo(i, n)).as_numpy_iterator()] for i in range(n)]
        assert [len(u) for u in users] == [len(range(i, 943, n)) for i in range(n)]
        assert len(set().union(*map(set, users))) == 943  # disjoint and complete


def test_mixture_rates_follow_example_counts_with_family_caps(registered):
    mix = seqio.get_mixture_or_task("ml100k_rec_mix")
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == {
        "ml100k_seq_seqidx": 97_171.0,  # the evaluated task: uncapped
        "ml100k_seqrec_seqidx": 192_509.0,  # its target items (2 tilings, no window twice)
        "ml100k_direct_seqidx": 30_000.0,
        "ml100k_rating": 30_000.0,
        "ml100k_binary": 30_000.0,
        "ml100k_profile": 30_000.0,
        "ml100k_grounding_seqidx": 5_046.0,
    }


def test_mixture_passes_metadata_through(registered):
    mix = seqio.get_mixture_or_task("ml100k_rec_mix")
    from flanrec.data.seqio_tasks import METADATA_FEATURES

    ds = mix.get_dataset(LENGTHS, split="validation", shuffle=False, num_epochs=1,
                         passthrough_features=list(METADATA_FEATURES))
    names = {ex["_task_name"] for ex in ds.take(200).as_numpy_iterator()}
    assert len(names) >= 3 and all(n.startswith(b"ml100k_") for n in names)


def test_metric_fns():
    from flanrec.data import seqio_tasks as st

    assert st.rating_postprocessor("4") == 4.0 and st.rating_postprocessor("3.5 stars") == 3.5
    assert math.isnan(st.rating_postprocessor("great"))
    assert [st.binary_postprocessor(x) for x in ("yes", "No.", "maybe")] == [1, 0, -1]
    _, (hr,) = st.postprocess_and_metrics("item", "unused-index-path")
    got = hr(["1", "2", "3", "4"], ["1", "9", "3", ""])
    assert got["hr@1"] == 0.5 and got["invalid"] == 1
    _, (rating,) = st.postprocess_and_metrics("rating", None)
    err = rating([4.0, 2.0], [5.0, math.nan])
    assert err["mae"] == pytest.approx(2.5) and err["parse_rate"] == 0.5
    assert err["rmse"] == pytest.approx(math.sqrt((1 + 16) / 2))
    _, (binary,) = st.postprocess_and_metrics("binary", None)
    assert binary([1, 0, 1], [1, 1, -1])["accuracy"] == pytest.approx(1 / 3)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")


FLAN_ROWS = [
    {"inputs": f"Translate to German: good morning number {i}", "targets": f"guten Morgen {i}",
     "_task_name": "wmt16_translate_de_en", "_template_type": "zs_opt", "_template_idx": i % 3}
    for i in range(12)
]


def test_flan_bridge_and_rec_flan_mix(registered, tmp_path, clean_registry):
    from tasks import flan, mixtures

    rec_vocab = seqio.get_mixture_or_task("ml100k_seq_seqidx").output_features[
        "targets"].vocabulary
    data = tmp_path / "flan"
    data.mkdir()
    _write_jsonl(data / "train-00000-of-00002.jsonl", FLAN_ROWS[:6])
    _write_jsonl(data / "train-00001-of-00002.jsonl", FLAN_ROWS[6:])
    _write_jsonl(data / "validation.jsonl", FLAN_ROWS[:2])
    bridge = flan.register_flan_bridge(str(data))  # vocabulary: that of the rec tasks
    assert bridge.name == "flan2022_bridge"
    assert bridge.output_features["targets"].vocabulary == rec_vocab
    assert bridge.num_input_examples("train") == 12  # blank lines are not examples
    exs = list(bridge.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
    assert len(exs) == 12
    assert {e["_task_name"] for e in exs} == {b"wmt16_translate_de_en"}
    assert sorted(int(e["_template_idx"]) for e in exs)[:4] == [0, 0, 0, 0]
    assert rec_vocab.decode(exs[0]["targets"].tolist()) == exs[0]["targets_pretokenized"] \
        .decode()

    # A real seqio mixture named flan2022_submix, as FLAN would register it (tiny here).
    fake_dir = tmp_path / "fake_flan"
    fake_dir.mkdir()
    _write_jsonl(fake_dir / "cot.jsonl", [
        {"inputs": f"Q: what is {i} plus {i}? Think step by step.", "targets": f"{2 * i}"}
        for i in range(8)])
    from flanrec.data.seqio_tasks import register_jsonl_task

    register_jsonl_task("fake_flan_cot", {"train": str(fake_dir / "cot.jsonl")}, rec_vocab)
    seqio.MixtureRegistry.add("flan2022_submix", [("fake_flan_cot", 1.0)])

    name = mixtures.register_rec_flan_mix("ml100k", flan_fraction=0.2)
    assert name == "ml100k_rec_flan_mix"
    mix = seqio.get_mixture_or_task(name)
    task_names = {t.name for t in mix.tasks}
    assert {"fake_flan_cot", "flan2022_bridge", "ml100k_seq_seqidx"} <= task_names
    b = _batch(name)
    assert b["encoder_input_tokens"].shape == (4, 256)
    seen = {ex["_task_name"] for ex in mix.get_dataset(
        LENGTHS, split="train", shuffle=False, num_epochs=None,
        passthrough_features=["_task_name"]).take(200).as_numpy_iterator()}
    assert b"fake_flan_cot" in seen and b"ml100k_seq" in seen


def test_rec_flan_mix_refuses_another_vocabulary(registered, tmp_path, clean_registry):
    from flanrec.data import vocab as vocab_lib
    from flanrec.data.seqio_tasks import register_jsonl_task
    from tasks import mixtures

    other = vocab_lib.train_sentencepiece(
        [r["inputs"] for r in FLAN_ROWS] * 50, str(tmp_path / "other.model"), vocab_size=300)
    _write_jsonl(tmp_path / "x.jsonl", FLAN_ROWS)
    register_jsonl_task("fake_flan_other", {"train": str(tmp_path / "x.jsonl")},
                        seqio.SentencePieceVocabulary(other, extra_ids=100))
    seqio.MixtureRegistry.add("flan2022_submix", [("fake_flan_other", 1.0)])
    with pytest.raises(ValueError, match="vocabulary"):
        mixtures.register_rec_flan_mix("ml100k", flan_providers=("flan2022_submix",))


def test_bad_jsonl_line_names_the_problem(registered, tmp_path, clean_registry):
    from flanrec.data.seqio_tasks import register_jsonl_task

    vocab = seqio.get_mixture_or_task("ml100k_seq_seqidx").output_features["targets"].vocabulary
    (tmp_path / "bad.jsonl").write_text('{"inputs": "fine", "targets": "ok"}\n{"inputs": 3}\n')
    task = register_jsonl_task("bad_jsonl", {"train": str(tmp_path / "bad.jsonl")}, vocab)
    with pytest.raises(Exception, match="'inputs' and 'targets'"):
        list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())


def test_list_tasks_and_env_configured_data_dir(registered, prepared_ml100k, monkeypatch,
                                                capsys):
    import tasks.movielens
    from flanrec.prepare.cli import main

    monkeypatch.setenv("FLANREC_DATA_DIR", str(prepared_ml100k))
    # What `import tasks` runs in a fresh process (a reload would re-register gin configurables).
    assert tasks.movielens.register_from_config() == {"ml100k": str(prepared_ml100k)}
    monkeypatch.delenv("FLANREC_DATA_DIR")
    import gin

    gin.parse_config(f"FLANREC_DATA_DIR = '{prepared_ml100k}'")  # a run's gin file may say it
    try:
        assert tasks.movielens.register_from_config() == {"ml100k": str(prepared_ml100k)}
    finally:
        gin.clear_config()
    assert main(["--list_tasks", "--out", str(prepared_ml100k)]) == 0
    printed = capsys.readouterr().out.split()
    assert set(TASKS + ["ml100k_rec_mix"]) <= set(printed)


def test_register_prepared_refuses_unprepared_dir(tmp_path):
    import tasks

    with pytest.raises(FileNotFoundError, match="flanrec.prepare"):
        tasks.register_prepared(str(tmp_path), prefix="nothing")


def test_flan_bridge_reads_tfrecord_exports(registered, tmp_path, clean_registry):
    """Flan exports as TFRecords of tf.Examples (inputs, targets, metadata) work the same."""
    from flanrec.data import writer
    from tasks import flan

    writer.write_task(str(tmp_path), {"train": FLAN_ROWS, "validation": FLAN_ROWS[:3]},
                      num_shards=2)
    task = flan.register_flan_bridge(str(tmp_path), name="flan_tfrecord_bridge")
    assert task.num_input_examples("train") == 12 and len(task.source.list_shards("train")) == 2
    exs = list(task.get_dataset(LENGTHS, split="validation", shuffle=False)
               .as_numpy_iterator())
    assert len(exs) == 3
    assert {e["_template_type"] for e in exs} == {b"zs_opt"}
    assert {int(e["_template_idx"]) for e in exs} == {0, 1, 2}
    b = _batch("flan_tfrecord_bridge")
    assert b["encoder_input_tokens"].shape == (4, 256)
