"""The inference path seqrec uses (one token per item) against one full-softmax forward pass.

    python bench/seqrec_inference.py                  # ml100k_seqrec's shape: 1682 items
    python bench/seqrec_inference.py --smoke          # seconds; for the test

A seqrec model reads the user's recent items in its decoder and names the next item as one
token, so its top-k over the catalogue is one step of the softmax. flanrec's infer job gets
it two ways: `beam_search` with a decoder prefix and the item trie (`TriePredictor`, seen
items masked through the trie; RANKER='beam_search'), and `NextItemRanker` (what
RANKER='auto' picks for such tasks), which runs the model once (encoder + decoder over the
prefix, the vocabulary projection only at the prefix's last position), takes the
log-softmax, keeps the item columns, masks seen items and calls `top_k`. The script checks
both return the same
top-k items per user (same scores up to float error), then times alternating calls and
reports users/s for each: the price of the general path over the one-shot scorer.

Random weights with the experiment's shapes (d_model 64, d_ff 128, 4 heads, 2+2 layers,
vocab 4224, 56 input tokens, a 10-item decoder prefix): the cost does not depend on what
the weights learned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common  # noqa: E402

FIRST_ITEM_TOKEN = 100  # item tokens sit above the control and text pieces, as in --train_vocab


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--vocab", type=int, default=4224)
    ap.add_argument("--beams", type=int, default=20, help="top-k (NUM_BEAMS)")
    ap.add_argument("--batch", type=int, default=64, help="users per call")
    ap.add_argument("--enc_len", type=int, default=56)
    ap.add_argument("--prefix", type=int, default=10, help="recent items the decoder reads")
    ap.add_argument("--history", type=int, default=50, help="seen items masked per user")
    ap.add_argument("--d_model", type=int, default=64)
    ap.add_argument("--d_ff", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side per round")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round: seconds")
    ap.add_argument("--no_record", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.items, args.vocab, args.beams, args.batch = 60, 256, 5, 4
        args.enc_len, args.prefix, args.history, args.rounds, args.repeats = 16, 3, 5, 1, 1
    if FIRST_ITEM_TOKEN + args.items > args.vocab:
        raise SystemExit(f"--vocab {args.vocab} cannot hold {args.items} item tokens from id "
                         f"{FIRST_ITEM_TOKEN}")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from flanrec.data.trie import build_trie
    from flanrec.infer.modes import NextItemRanker, TriePredictor, allowed_from_seen
    from flanrec.model import get_preset
    from flanrec.model.params import param_specs, unflatten

    cfg = get_preset("tiny", vocab_size=args.vocab, d_model=args.d_model, d_ff=args.d_ff,
                     num_heads=4, d_kv=args.d_model // 4, num_encoder_layers=args.layers,
                     num_decoder_layers=args.layers, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    flat = {name: rng.normal(0.0, 1.0 if name.endswith(("scale", "embedding"))
                             else 1.0 / np.sqrt(shape[0]), shape).astype(np.float32)
            for name, (shape, _) in param_specs(cfg).items()}
    params = jax.tree.map(jnp.asarray, unflatten(flat))
    item_tok = FIRST_ITEM_TOKEN + np.arange(args.items)
    trie = build_trie([[int(t)] for t in item_tok], eos_id=cfg.eos_token_id,
                      vocab_size=cfg.vocab_size, pad_id=cfg.pad_token_id, end_with_eos=False)
    predictor = TriePredictor(cfg, trie)

    enc = rng.integers(3, FIRST_ITEM_TOKEN, (args.batch, args.enc_len)).astype(np.int32)
    seen = [rng.choice(args.items, args.history, replace=False) for _ in range(args.batch)]
    prefix_items = np.stack([s[-args.prefix:] for s in seen])
    prefix = item_tok[prefix_items].astype(np.int32)  # full rows: no padding to mask
    allowed = allowed_from_seen(args.items, [s.tolist() for s in seen])
    k = args.beams

    def general() -> tuple[np.ndarray, np.ndarray]:
        seqs, scores = predictor(params, enc, k, allowed, decoder_prefix=prefix)
        return seqs[:, :, 0] - FIRST_ITEM_TOKEN, scores

    ranker = NextItemRanker(cfg, item_tok.astype(np.int32))  # what RANKER='auto' runs

    def one_shot() -> tuple[np.ndarray, np.ndarray]:
        return ranker(params, enc, k, allowed, prefix)

    (i_gen, s_gen), (i_one, s_one) = general(), one_shot()  # warm-up + the parity check
    same_users = sum(a.tolist() == b.tolist() for a, b in zip(i_gen, i_one, strict=True))
    max_score_diff = float(np.max(np.abs(s_gen - s_one)))
    seen_returned = sum(bool(set(row.tolist()) & set(s.tolist()))
                        for row, s in zip(i_gen, seen, strict=True))

    times = _common.alternate(
        {"beam_search": lambda n: _common.time_calls(general, n),
         "one_shot": lambda n: _common.time_calls(one_shot, n)},
        args.rounds, args.repeats)
    t_gen, t_one = _common.median(times["beam_search"]), _common.median(times["one_shot"])
    rows = [["TriePredictor: beam_search + decoder prefix + trie", t_gen * 1e3,
             _common.spread(times["beam_search"]), args.batch / t_gen],
            ["NextItemRanker: one forward pass, full softmax, top_k", t_one * 1e3,
             _common.spread(times["one_shot"]), args.batch / t_one]]
    title = (f"seqrec top-{k} over {args.items} one-token items, batch {args.batch} x "
             f"{args.enc_len} in, {args.prefix}-item decoder prefix, d_model {cfg.d_model}, "
             f"{args.layers}+{args.layers} layers, vocab {cfg.vocab_size}")
    _common.print_table(title, ["path", "call ms (median)", "min-max ms", "users/s"], rows)
    print(f"\none-shot / beam_search users/s: {t_gen / t_one:.2f}x   identical top-{k} lists: "
          f"{same_users}/{args.batch} users, seen items returned: {seen_returned}, "
          f"max |score difference|: {max_score_diff:.2e}", flush=True)
    record = {"bench": "seqrec_inference", "items": args.items, "beams": k,
              "batch": args.batch, "enc_len": args.enc_len, "prefix": args.prefix,
              "model": cfg.to_dict(), "smoke": args.smoke,
              "beam_search_s": times["beam_search"], "one_shot_s": times["one_shot"],
              "users_per_s": {"beam_search": args.batch / t_gen, "one_shot": args.batch / t_one},
              "identical_users": same_users, "seen_returned": seen_returned,
              "max_score_diff": max_score_diff, "versions": {"jax": jax.__version__}}
    if not args.no_record:
        print(f"appended to {_common.append_result(record)}")
    return record


if __name__ == "__main__":
    main()
