"""Trie-constrained beam search: flanrec vs transformers `generate`, same weights, same lists.

    python bench/decode_throughput.py                 # 1682 items, 20 beams, batch 16, 128 in
    python bench/decode_throughput.py --smoke         # seconds; for the test

A random HF T5 (gated-GELU, untied, small so the HF side finishes) is saved and imported into
flanrec with `flanrec.interop.hf.import_hf`: both sides decode with the same weights. Items
are MovieLens-style sequential IDs "0001".."1682", one token per digit (4 tokens + EOS), and
the trie over them constrains both sides: flanrec's jitted `beam_search` with
`flanrec.infer.constraints.TrieConstraint`, transformers' `generate(num_beams=20,
num_return_sequences=20, prefix_allowed_tokens_fn=...)` with a precomputed prefix -> allowed
tokens dict (the fastest honest HF callback). Every item is exactly 4 tokens + EOS, so all
hypotheses end at the same step and `length_penalty` (0.0 on both sides: plain summed
log-probabilities) and `early_stopping` cannot make the two searches differ; both mask
disallowed tokens after the log-softmax. The script checks that both return the same top-20
item lists per user (and reports the largest score difference), then times alternating calls.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common  # noqa: E402

DIGIT0 = 3  # token id of "0"; "1".."9" follow. 0 = pad, 1 = EOS, 2 = unk (T5 layout)


def item_tokens(num_items: int, width: int) -> list[list[int]]:
    """Token ids of the zero-padded sequential IDs 1..num_items, one token per digit."""
    return [[DIGIT0 + int(c) for c in f"{i:0{width}d}"] for i in range(1, num_items + 1)]


def _prefix_table(items: list[list[int]], eos: int) -> dict[tuple[int, ...], list[int]]:
    table: dict[tuple[int, ...], set[int]] = {}
    for seq in items:
        for j in range(len(seq) + 1):
            table.setdefault(tuple(seq[:j]), set()).add(seq[j] if j < len(seq) else eos)
    return {k: sorted(v) for k, v in table.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--enc_len", type=int, default=128)
    ap.add_argument("--d_model", type=int, default=64)
    ap.add_argument("--d_ff", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per side per round")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round: seconds")
    ap.add_argument("--no_record", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.items, args.beams, args.batch, args.enc_len = 60, 4, 2, 16
        args.rounds, args.repeats = 1, 1

    import jax
    import numpy as np
    import torch

    from flanrec.data.trie import build_trie, lookup
    from flanrec.infer.constraints import TrieConstraint
    from flanrec.interop import hf
    from flanrec.model.decoding import beam_search
    from tests.hf_fixtures import make_hf_t5, padded_batch

    width = len(str(args.items))
    if width < 2:
        raise ValueError("--items must be >= 10 (IDs need at least two digits)")
    items = item_tokens(args.items, width)
    if DIGIT0 + 10 > args.vocab:
        raise ValueError(f"--vocab {args.vocab} too small for digit tokens {DIGIT0}..{DIGIT0 + 9}")

    theirs = make_hf_t5(num_layers=args.layers, vocab_size=args.vocab, d_model=args.d_model,
                        d_ff=args.d_ff, num_heads=4, d_kv=args.d_model // 4)
    with tempfile.TemporaryDirectory(prefix="flanrec-bench-") as tmp:
        theirs.save_pretrained(tmp)
        cfg, params = hf.import_hf(tmp)
    params = jax.tree.map(jax.numpy.asarray, params)
    trie = build_trie(items, eos_id=cfg.eos_token_id, vocab_size=cfg.vocab_size,
                      pad_id=cfg.pad_token_id)
    max_len = trie.max_length
    constraint = TrieConstraint.create(trie, cfg.vocab_size, beams=args.beams)
    enc = padded_batch(np.random.default_rng(0), args.batch, args.enc_len, args.vocab,
                       min_len=args.enc_len // 2)
    enc_t = torch.tensor(enc, dtype=torch.long)
    mask_t = torch.tensor(enc > 0, dtype=torch.long)
    table = _prefix_table(items, cfg.eos_token_id)
    pad = [cfg.pad_token_id]

    def allowed_fn(batch_id: int, sent: torch.Tensor) -> list[int]:
        return table.get(tuple(sent.tolist()[1:]), pad)  # [1:]: drop the start token

    def ours() -> tuple[np.ndarray, np.ndarray]:
        seqs, scores = beam_search(cfg, params, enc, max_len, args.beams, 0.0, constraint)
        return np.asarray(seqs), np.asarray(scores)

    def hf_generate() -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = theirs.generate(
                input_ids=enc_t, attention_mask=mask_t, num_beams=args.beams,
                num_return_sequences=args.beams, max_new_tokens=max_len, do_sample=False,
                length_penalty=0.0, early_stopping=True, prefix_allowed_tokens_fn=allowed_fn,
                decoder_start_token_id=cfg.decoder_start_token_id,
                eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                output_scores=True, return_dict_in_generate=True)
        seqs = out.sequences[:, 1:].numpy().reshape(args.batch, args.beams, -1)
        return seqs, out.sequences_scores.numpy().reshape(args.batch, args.beams)

    def to_items(seqs: np.ndarray) -> list[list[int]]:
        return [[lookup(trie, [t for t in s if t != cfg.pad_token_id]) for s in row]
                for row in seqs]

    (s_ours, sc_ours), (s_hf, sc_hf) = ours(), hf_generate()  # warm-up + the parity check
    it_ours, it_hf = to_items(s_ours), to_items(s_hf)
    invalid = sum(i < 0 for row in it_ours + it_hf for i in row)
    same_users = sum(a == b for a, b in zip(it_ours, it_hf, strict=True))
    same_sets = sum(set(a) == set(b) for a, b in zip(it_ours, it_hf, strict=True))
    max_score_diff = float(np.max(np.abs(sc_ours - sc_hf)))

    times = _common.alternate(
        {"flanrec": lambda n: _common.time_calls(ours, n),
         "transformers": lambda n: _common.time_calls(hf_generate, n)},
        args.rounds, args.repeats)
    t_ours, t_hf = _common.median(times["flanrec"]), _common.median(times["transformers"])
    ratio = t_hf / t_ours
    rows = [["flanrec beam_search + TrieConstraint", t_ours * 1e3,
             _common.spread(times["flanrec"]), args.batch / t_ours],
            ["transformers generate + prefix_allowed_tokens_fn", t_hf * 1e3,
             _common.spread(times["transformers"]), args.batch / t_hf]]
    title = (f"constrained beam search, {args.items} items x {width} tokens, {args.beams} beams, "
             f"batch {args.batch} x {args.enc_len} in, d_model {cfg.d_model}, "
             f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, vocab {cfg.vocab_size}")
    _common.print_table(title, ["implementation", "call ms (median)", "min-max ms", "users/s"],
                        rows)
    print(f"\nflanrec / transformers users/s: {ratio:.2f}x   identical top-{args.beams} lists: "
          f"{same_users}/{args.batch} users (same sets: {same_sets}/{args.batch}), "
          f"invalid items: {invalid}, max |score difference|: {max_score_diff:.2e}", flush=True)
    record = {"bench": "decode_throughput", "items": args.items, "beams": args.beams,
              "batch": args.batch, "enc_len": args.enc_len, "model": cfg.to_dict(),
              "smoke": args.smoke, "ratio_users_per_s": ratio,
              "flanrec_s": times["flanrec"], "transformers_s": times["transformers"],
              "identical_users": same_users, "same_set_users": same_sets,
              "invalid_items": invalid, "max_score_diff": max_score_diff,
              "versions": {"jax": jax.__version__, "torch": torch.__version__}}
    if not args.no_record:
        print(f"appended to {_common.append_result(record)}")
    return record


if __name__ == "__main__":
    main()
