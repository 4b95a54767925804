"""Put new ID tokens (``<c17>``, ``<a3>``) on embedding rows Flan-T5 already has.

Flan-T5's vocabulary has 32128 rows: 32000 SentencePiece pieces, the 100 sentinels
``<extra_id_0>`` (id 32099) … ``<extra_id_99>`` (id 32000), and 28 rows (32100..32127) no
piece maps to. Reusing those rows adds tokens without resizing the embedding and logits
matrices, so converted checkpoints keep their shapes. Slots are handed out from id
``sp_size`` upwards: ``<extra_id_99>`` first, ``<extra_id_0>`` (the sentinel span corruption
uses most) last, then the padding rows. Sentinels still needed, e.g. for mixing in span
corruption, go in ``reserved_extra_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flanrec.data import layout
from flanrec.data.errors import DataError
from flanrec.files import storage

NUM_EXTRA_IDS = 100


def extra_id(k: int, sp_size: int = 32000, num_extra_ids: int = NUM_EXTRA_IDS) -> int:
    """Token id of ``<extra_id_k>`` (T5 numbers sentinels downwards from the top)."""
    if not 0 <= k < num_extra_ids:
        raise ValueError(f"extra id {k} out of range 0..{num_extra_ids - 1}")
    return sp_size + num_extra_ids - 1 - k


def free_slots(vocab_size: int = 32128, sp_size: int = 32000,
               reserved_extra_ids: Iterable[int] = (),
               num_extra_ids: int = NUM_EXTRA_IDS) -> list[int]:
    """The ids new tokens may take, in the order they are handed out."""
    if sp_size + num_extra_ids > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < sp_size {sp_size} + {num_extra_ids} "
                         "extra ids")
    reserved = {extra_id(k, sp_size, num_extra_ids) for k in reserved_extra_ids}
    return [i for i in range(sp_size, vocab_size) if i not in reserved]


def token_slot_map(new_tokens: Sequence[str], vocab_size: int = 32128, sp_size: int = 32000,
                   reserved_extra_ids: Iterable[int] = (),
                   num_extra_ids: int = NUM_EXTRA_IDS) -> dict[str, int]:
    """Assign each new token a free vocabulary row, in order; a plain dict token -> id.

    Raises ValueError saying how many tokens were asked for and how many slots exist when
    they do not fit (then use a smaller codebook, fewer clusters, or fewer reserved sentinels).
    """
    reserved = sorted(set(reserved_extra_ids))
    slots = free_slots(vocab_size, sp_size, reserved, num_extra_ids)
    tokens = list(new_tokens)
    seen: set[str] = set()
    for t in tokens:
        if t in seen:
            raise ValueError(f"new token {t!r} listed twice")
        seen.add(t)
    if len(tokens) > len(slots):
        raise ValueError(
            f"{len(tokens)} new tokens need vocabulary slots but only {len(slots)} are free "
            f"(vocab_size {vocab_size} - sp_size {sp_size} - {len(reserved)} reserved extra "
            f"ids); {len(tokens) - len(slots)} too many: use fewer codebook entries / clusters, "
            "reserve fewer sentinels, or enlarge the vocabulary"
        )
    return dict(zip(tokens, slots, strict=False))


def slot_map_json(slot_map: Mapping[str, int], vocab_size: int = 32128, sp_size: int = 32000,
                  reserved_extra_ids: Iterable[int] = (),
                  num_extra_ids: int = NUM_EXTRA_IDS) -> dict[str, Any]:
    """The JSON object stored as ``token_slots.json`` beside the index."""
    return {
        "vocab_size": vocab_size,
        "sp_size": sp_size,
        "num_extra_ids": num_extra_ids,
        "reserved_extra_ids": sorted(set(reserved_extra_ids)),
        "tokens": dict(slot_map),
    }


def load_slot_map(directory: str) -> dict[str, int]:
    """Read ``token_slots.json`` saved by ``ItemIndex.save``; {} if the index has no new tokens."""
    import os

    path = storage.join(os.fspath(directory), layout.TOKEN_SLOTS_FILE)
    return read_slot_map(path) if storage.exists(path) else {}


def read_slot_map(path: str) -> dict[str, int]:
    """token -> id of a ``token_slots.json`` file: the one parser of the format.

    The vocabulary (a prepared dir's ``index/token_slots.json``) and the indexer (one
    ``index/{method}/``) both read slot maps; one parser next to its writer
    (``slot_map_json``) means they can never disagree about a file. Raises DataError (a
    ValueError) naming the file when it is not JSON or ``tokens`` is not token -> int.
    """
    import json

    try:
        data = storage.read_json(path)
    except json.JSONDecodeError as e:
        raise DataError(path, "valid JSON", line=e.lineno, hint=e.msg) from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in tokens.items()):
        raise DataError(path, "an object of token -> integer id", field="tokens", got=tokens)
    return dict(tokens)
