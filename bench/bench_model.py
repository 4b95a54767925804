"""Speed of our jitted Flax T5 vs transformers' PyTorch T5 on the same weights (CPU).

Not a test: prints a table of forward and forward+backward times and their ratio.

    python bench/bench_model.py --preset tiny
    python bench/bench_model.py --preset flan-t5-small --batch 8 --enc_len 128 --dec_len 16

Both sides get identical random weights (exported through `flanrec.interop.hf`), inputs and
loss (mean token cross-entropy over non-padding targets); the first (compiling) call is
excluded from the timings, then the median of `--repeats` runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flanrec.interop import hf  # noqa: E402
from flanrec.model import Transformer, get_preset  # noqa: E402
from flanrec.model.params import count_params, param_specs, unflatten  # noqa: E402


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_params(cfg, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, _) in param_specs(cfg).items():
        scale = 1.0 if name.endswith(("scale", "embedding")) else 1.0 / np.sqrt(shape[0])
        flat[name] = (rng.normal(0.0, scale, shape)).astype(np.float32)
    return unflatten(flat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--enc_len", type=int, default=64)
    ap.add_argument("--dec_len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset, dropout_rate=0.0)
    params = _random_params(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = hf.export_hf(cfg, params, Path(tmp) / "model")
        theirs = transformers.T5ForConditionalGeneration.from_pretrained(str(out))
    theirs.train()  # dropout is 0; train mode keeps autograd paths identical to fine-tuning

    rng = np.random.default_rng(0)
    enc = rng.integers(2, cfg.vocab_size, (args.batch, args.enc_len)).astype(np.int32)
    tgt = rng.integers(2, cfg.vocab_size, (args.batch, args.dec_len)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((args.batch, 1), np.int32), tgt[:, :-1]], axis=1)

    model = Transformer(cfg)
    jparams = jax.tree.map(jnp.asarray, params)

    def loss_fn(p, e, d, t):
        logits = model.apply({"params": p}, e, d, t)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * (t > 0)) / jnp.sum(t > 0)

    fwd = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    grad = jax.jit(jax.value_and_grad(loss_fn))

    def ours_fwd():
        fwd(jparams, enc, dec_in).block_until_ready()

    def ours_bwd():
        jax.block_until_ready(grad(jparams, enc, dec_in, tgt))

    t_enc, t_dec, t_tgt = (torch.tensor(x, dtype=torch.long) for x in (enc, dec_in, tgt))

    def torch_fwd():
        with torch.no_grad():
            theirs(input_ids=t_enc, decoder_input_ids=t_dec)

    def torch_bwd():
        theirs.zero_grad(set_to_none=True)
        theirs(input_ids=t_enc, decoder_input_ids=t_dec, labels=t_tgt).loss.backward()

    rows = [("forward", _median_time(ours_fwd, args.repeats),
             _median_time(torch_fwd, args.repeats)),
            ("forward+backward", _median_time(ours_bwd, args.repeats),
             _median_time(torch_bwd, args.repeats))]
    n_params = count_params(cfg)
    print(f"preset={cfg.name} params={n_params / 1e6:.1f}M batch={args.batch} "
          f"enc_len={args.enc_len} dec_len={args.dec_len} jax={jax.__version__} "
          f"torch={torch.__version__} torch_threads={torch.get_num_threads()}")
    print(f"{'step':<18}{'flanrec (ms)':>14}{'HF torch (ms)':>15}{'torch/ours':>12}")
    for name, ours_t, torch_t in rows:
        print(f"{name:<18}{ours_t * 1e3:>14.2f}{torch_t * 1e3:>15.2f}{torch_t / ours_t:>12.2f}")


if __name__ == "__main__":
    main()
