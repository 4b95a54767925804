"""Item text and the user's profile in the seqrec instruction (prepare's --seqrec_item_text,
--seqrec_profile).

Checked on the real MovieLens-100K split (the text of exactly the encoder's items, the right
user's profile, targets still bare IDs, the IDs-only default unchanged byte for byte), and
through real `flanrec.prepare` runs on small logs: a MovieLens-format one (the flags reach
the examples that inference and rank validation read) and an ID-only sequences file (the
flags degrade to IDs only with one note).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from flanrec.data import templates
from flanrec.data.families import FamilyData
from flanrec.data.families import seqrec as sr
from flanrec.data.indexing import fit_index

# sha256 of every seqrec example of ml-100k (train, validation, test, test_unseen: template
# index, inputs, targets, key, target item), rendered by the family before these options
# existed. The default must stay exactly this.
IDS_ONLY_SHA = "531578a6f410c07bdc872282ea0fd671554190995d483aabe499592acc528be9"
IDS_ONLY_COUNT = 8971
PLANS = (("train", ("seen",)), ("validation", ("seen",)), ("test", ("seen",)),
         ("test", ("unseen",)))


def _digest(examples) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    for e in examples:
        h.update(f"{e['_template_idx']}\x00{e['inputs']}\x00{e['targets']}\x00{e['_key']}"
                 f"\x00{e['target_item']}\n".encode())
        n += 1
    return n, h.hexdigest()


def _all(data: FamilyData):
    for name, types in PLANS:
        yield from sr.examples(data, name, types)


@pytest.fixture(scope="module")
def ml100k(ml100k_dataset, ml100k_split):
    index = fit_index("sequential", ml100k_split, ml100k_split.all_items)
    return ml100k_dataset, ml100k_split, index


def _data(ml100k, **options) -> FamilyData:
    dataset, split, index = ml100k
    return FamilyData(split=split, index=index, meta=dataset.items, users=dataset.users,
                      options={"max_history": 50, **options})


def test_ids_only_default_is_unchanged(ml100k):
    # A dir prepared before the options existed (no keys) and one prepared with them off.
    assert _digest(_all(_data(ml100k))) == (IDS_ONLY_COUNT, IDS_ONLY_SHA)
    assert _digest(_all(_data(ml100k, seqrec_item_text=0, seqrec_profile=False))) == (
        IDS_ONLY_COUNT, IDS_ONLY_SHA)


def _encoder_items(split, split_name: str):
    """(key -> encoder items) as the family cuts them."""
    return {key: enc for key, _, enc, _, _ in sr._seqrec_specs(
        split, split_name, sr.SEQREC_WINDOW, sr.SEQREC_ENCODER_ITEMS, sr.SEQREC_TILINGS, 50)}


@pytest.mark.parametrize("text,profile", [(64, False), (0, True), (64, True)])
def test_examples_carry_the_encoder_items_text_and_the_users_profile(ml100k, text, profile):
    dataset, split, index = ml100k
    meta, users = dataset.items, dataset.users
    ids = index.item_to_id
    item_of = {v: k for k, v in ids.items()}
    data = _data(ml100k, seqrec_item_text=text, seqrec_profile=profile)
    tfam = sr._template_family(bool(text), profile)
    assert sr.notes(data) == []
    for name, types in PLANS:
        enc_of = _encoder_items(split, name)
        base = {e["_key"]: e for e in sr.examples(_data(ml100k), name, types)}
        got = list(sr.examples(data, name, types))
        assert [e["_key"] for e in got] == list(base)
        for e in got[:400]:
            assert e["_template_family"] == tfam
            assert templates.template_type(tfam, e["_template_idx"]) == types[0]
            # The decoder side is untouched: bare IDs, one per item.
            plain = base[e["_key"]]
            assert e["targets"] == plain["targets"]
            assert e["target_item"] == plain["target_item"] and e["user"] == plain["user"]
            enc = enc_of[e["_key"]]
            history = e["_fields"]["history"]
            if text:
                described = [f"{ids[i]} ({sr.item_text(meta, i, text)})" for i in enc]
                assert history == "; ".join(described) and history in e["inputs"]
                assert all(meta.title[i][:8] in e["inputs"] for i in enc)
                # Exactly the encoder's items are described, in order; the rest of the
                # input is the template's words, the user ID and the profile.
                shown = re.findall(r"(?:^|; )(\S+) \(", history)
                assert [item_of[i] for i in shown] == enc
                rest = e["inputs"].replace(history, "", 1)
                assert not re.search(r"\d+ \([^)]*\d{4}", rest), rest
            else:
                assert history == ", ".join(ids[i] for i in enc)
            if profile:
                who = sr.describe_user(users.features[e["user"]])
                assert who and e["_fields"]["profile"] == who and who in e["inputs"]
            else:
                assert "profile" not in e["_fields"]


def test_the_profile_and_text_read_as_language(ml100k):
    dataset, split, index = ml100k
    # MovieLens-100K user 1: 24, M, technician; item 1: Toy Story (1995), three genres.
    assert sr.describe_user(dataset.users.features["1"]) == "a 24-year-old male technician"
    assert sr.item_text(dataset.items, "1", 64) == "Toy Story, 1995; Animation, Children's, Comedy"
    assert sr.item_text(dataset.items, "1", 20) == "Toy Story, 1995"
    assert sr.describe_user({"age": "18", "gender": "F", "occupation": "none"}) == (
        "an 18-year-old female with no occupation")
    assert sr.describe_user({"age": "56+", "gender": "M", "occupation": "other"}) == (
        "a male aged 56+")
    assert sr.describe_user({"zip_code": "12345"}) == ""
    for chars in (1, 5, 12, 30, 64):
        assert all(len(sr.item_text(dataset.items, i, chars)) <= chars
                   for i in split.all_items[:300])


# ------------------------------------------------------------------ real prepare runs


def _grouplens(root: Path, users: int = 30, per_user: int = 8, items: int = 40) -> Path:
    root.mkdir(parents=True)
    rows = [f"{u}\t{1 + (u * 7 + t * 5) % items}\t{1 + (u + t) % 5}\t{880000000 + 100 * t + u}"
            for u in range(1, users + 1) for t in range(per_user)]
    (root / "u.data").write_text("\n".join(rows) + "\n")

    def flags(i: int) -> str:  # Action for even items, Comedy for every third
        on = {1} if i % 2 == 0 else set()
        on |= {5} if i % 3 == 0 else set()
        return "|".join("1" if g in on else "0" for g in range(19))

    (root / "u.item").write_text("".join(
        f"{i}|Film {i} of the tests ({1990 + i % 10})|01-Jan-{1990 + i % 10}||http://x|"
        f"{flags(i)}\n" for i in range(1, items + 1)))
    (root / "u.user").write_text("".join(
        f"{u}|{20 + u}|{'MF'[u % 2]}|{'engineer' if u % 3 else 'artist'}|{10000 + u}\n"
        for u in range(1, users + 1)))
    return root


def _prepare(out: Path, dataset: str, raw: Path, **options):
    from flanrec.prepare import PrepareOptions, prepare

    return prepare(PrepareOptions(dataset=dataset, out=str(out), raw_dir=str(raw),
                                  families=("seqrec",), train_vocab=True, vocab_size=400,
                                  seqrec_window=4, seqrec_encoder_items=3,
                                  allow_download=False, task_prefix=out.name, **options),
                   log=lambda m: None, progress=lambda m: None)


def _source_examples(root: Path, split: str) -> list[dict]:
    from flanrec.data.prepared_tasks import prepared_source

    info = json.loads((root / "tasks" / "seqrec_seqidx" / "info.json").read_text())
    return list(prepared_source(str(root), str(root / "tasks" / "seqrec_seqidx"),
                                info).examples(split))


def test_prepare_flags_reach_what_inference_and_rank_validation_read(tmp_path, capsys):
    raw = _grouplens(tmp_path / "raw")
    plain = _prepare(tmp_path / "plainml", "ml-100k", raw)
    texty = _prepare(tmp_path / "textml", "ml-100k", raw, seqrec_item_text=40,
                     seqrec_profile=True)
    assert "seqrec" not in capsys.readouterr().err  # the data has both: nothing to note
    assert texty["options"]["seqrec_item_text"] == 40 and texty["options"]["seqrec_profile"]
    assert plain["counts"]["tasks"] == texty["counts"]["tasks"]
    info = json.loads((tmp_path / "textml" / "tasks" / "seqrec_seqidx" / "info.json")
                      .read_text())
    assert "notes" not in info
    # What seqio reads back (split/items.tsv, users.json) phrases them as prepare did.
    for split in ("train", "validation", "test", "test_unseen"):
        a, b = _source_examples(tmp_path / "plainml", split), _source_examples(
            tmp_path / "textml", split)
        assert [e["targets"] for e in a] == [e["targets"] for e in b]
        assert all(re.search(r"\d+ \(Film \d+ of the tests, 199\d", e["inputs"]) for e in b)
        for e in b:  # u.user: age 20 + u, M for even users, artist for every third
            u = int(e["user"])
            who = (f"a {20 + u}-year-old {'female' if u % 2 else 'male'} "
                   f"{'engineer' if u % 3 else 'artist'}")
            assert e["_fields"]["profile"] == who and who in e["inputs"]
        assert not any("Film" in e["inputs"] or "year-old" in e["inputs"] for e in a)
    # Inference and training's rank validation take their examples from the seqio task
    # (flanrec.infer.run.task_examples): the same text.
    import tasks
    from flanrec.infer.run import task_examples

    tasks.register_prepared(str(tmp_path / "textml"))
    try:
        got = [ex for _, ex in task_examples("textml_seqrec_seqidx", "validation",
                                             {"inputs": 512, "targets": 8}, 0, 1)]
    finally:
        tasks.unregister_prepared("textml")
    want = _source_examples(tmp_path / "textml", "validation")
    assert [ex["inputs_pretokenized"].decode() for ex in got] == [e["inputs"] for e in want]


def test_id_only_data_keeps_ids_with_one_note(tmp_path, capsys):
    raw = tmp_path / "seqs.txt"
    raw.write_text("".join(
        f"u{u} " + " ".join(f"i{1 + (u * 3 + t) % 25}" for t in range(8)) + "\n"
        for u in range(1, 21)))
    plain = _prepare(tmp_path / "plainseq", "sequences", raw)
    capsys.readouterr()
    flagged = _prepare(tmp_path / "flagseq", "sequences", raw, seqrec_item_text=64,
                       seqrec_profile=True)
    err = capsys.readouterr().err.strip().splitlines()
    mine = [line for line in err if "seqrec" in line]
    assert len(mine) == 2, err  # one line per option the data cannot honour, said once
    assert "--seqrec_item_text: the data has no item titles" in mine[0]
    assert "--seqrec_profile: the data has no user attributes" in mine[1]
    assert plain["counts"]["tasks"] == flagged["counts"]["tasks"]
    info = json.loads((tmp_path / "flagseq" / "tasks" / "seqrec_seqidx" / "info.json")
                      .read_text())
    assert len(info["notes"]) == 2
    for split in ("train", "validation", "test_unseen"):
        a = _source_examples(tmp_path / "plainseq", split)
        b = _source_examples(tmp_path / "flagseq", split)
        assert a and [(e["inputs"], e["targets"]) for e in a] == [
            (e["inputs"], e["targets"]) for e in b]


def test_the_cli_takes_the_flags_and_refuses_a_negative_length():
    from flanrec.prepare.cli import build_parser

    args = build_parser().parse_args(["--dataset", "ml-100k", "--seqrec_item_text", "64",
                                      "--seqrec_profile"])
    assert args.seqrec_item_text == 64 and args.seqrec_profile is True
    args = build_parser().parse_args(["--dataset", "ml-100k"])
    assert args.seqrec_item_text == 0 and args.seqrec_profile is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--dataset", "ml-100k", "--seqrec_item_text", "-1"])


def test_every_text_template_family_has_seen_and_unseen_phrasings():
    for tfam in sr.TEMPLATE_FAMILIES:
        assert len(templates.template_indices(tfam, ("seen",))) >= 8
        assert len(templates.template_indices(tfam, ("unseen",))) == templates.NUM_UNSEEN
    assert templates.PATTERNS["seqrec"] == sr.SEQREC_TEMPLATES
    templates.check_patterns(sr.TEMPLATE_FAMILIES)
