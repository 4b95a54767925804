"""Restore a flanrec `--to t5x` export with T5X's own code, as T5X's stock fine-tuning does.

Not a test module: tests/test_convert_t5x_state.py runs it in a subprocess when T5X's source
is available (`FLANREC_T5X_PATH`), since T5X is no dependency of flanrec and is never
installed into its environment:

    PYTHONPATH=T5X_SRC:STUBS:DEPS python tests/t5x_restore_check.py \
        T5X_CKPT_DIR FLANREC_CHECKPOINT [--min_dim N]

(STUBS: empty `jestimator` and `airio` packages, which T5X imports but its Adafactor path
never uses; DEPS: `cached_property`.) It
1. builds T5X's `EncoderDecoderModel` (t5x/examples/t5/network.py Transformer, T5 v1.1
   shapes read from the export) with `t5x.adafactor.Adafactor` configured as in
   t5x/examples/t5/t5_1_1/base.gin (decay_rate 0.8, step_offset 0, standard logical factor
   rules) and a `PjitPartitioner`, exactly the objects `t5x/train.py` gets from finetune.gin;
2. restores with `utils.TrainStateInitializer.from_checkpoint_or_scratch(
   [utils.RestoreCheckpointConfig(path=..., mode='specific', dtype='float32')])` — the call
   `t5x/train.py` makes for INITIAL_CHECKPOINT_PATH / resume;
3. checks params, step and every Adafactor moment equal flanrec's checkpoint;
4. applies one and the same gradient with T5X's Adafactor and with flanrec's optax Adafactor
   from the two states, and compares the updated parameters (continuing training in T5X
   takes the step flanrec would have taken).
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

# Import t5x submodules without t5x/__init__.py (which pulls in every T5X binary).
_pkg = types.ModuleType("t5x")
_pkg.__path__ = [f"{p}/t5x" for p in sys.path
                  if p and os.path.isfile(f"{p}/t5x/checkpoints.py")][:1]
sys.modules["t5x"] = _pkg

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
from t5x import adafactor, models, partitioning, utils  # noqa: E402
from t5x.examples.t5 import network  # noqa: E402

from flanrec.checkpoints import load_optimizer_state, load_params  # noqa: E402
from flanrec.interop.t5x import import_t5x  # noqa: E402
from flanrec.interop.t5x_adafactor import optax_moments  # noqa: E402
from flanrec.model.params import flatten  # noqa: E402
from flanrec.train import optimizers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("t5x_ckpt")
    ap.add_argument("flanrec_ckpt", help="the flanrec checkpoint the export was made from")
    ap.add_argument("--min_dim", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()

    cfg, _ = import_t5x(args.t5x_ckpt)
    t5x_cfg = network.T5Config(
        vocab_size=cfg.vocab_size, dtype="float32", emb_dim=cfg.d_model,
        num_heads=cfg.num_heads, num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers, head_dim=cfg.d_kv, mlp_dim=cfg.d_ff,
        mlp_activations=("gelu", "linear"), dropout_rate=0.0, logits_via_embedding=False)
    vocab = seqio.PassThroughVocabulary(size=cfg.vocab_size)
    opt = adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                              logical_factor_rules=adafactor.standard_logical_factor_rules(),
                              min_dim_size_to_factor=args.min_dim)
    model = models.EncoderDecoderModel(network.Transformer(t5x_cfg), input_vocabulary=vocab,
                                       output_vocabulary=vocab, optimizer_def=opt)
    partitioner = partitioning.PjitPartitioner(
        num_partitions=1, logical_axis_rules=partitioning.standard_logical_axis_rules())
    shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 4),
              "decoder_target_tokens": (2, 4)}
    init = utils.TrainStateInitializer(optimizer_def=model.optimizer_def,
                                       init_fn=model.get_initial_variables,
                                       input_shapes=shapes, partitioner=partitioner)
    restore = utils.RestoreCheckpointConfig(path=args.t5x_ckpt, mode="specific",
                                            dtype="float32")
    state = init.from_checkpoint_or_scratch([restore], init_rng=jax.random.PRNGKey(0))
    print(f"T5X restored step {int(state.step)} with mode='specific'")

    # 3. params, step, moments equal flanrec's checkpoint.
    _, fr_params = load_params(args.flanrec_ckpt)
    fr_step, fr_opt = load_optimizer_state(args.flanrec_ckpt)
    fr_flat = flatten(fr_params)
    t5x_params = {k: np.asarray(v) for k, v in flatten(dict(state.params)).items()}
    assert set(t5x_params) == set(fr_flat), set(t5x_params) ^ set(fr_flat)
    for k, v in fr_flat.items():
        np.testing.assert_array_equal(t5x_params[k], v, err_msg=k)
    t5x_states = flatten(state.state_dict()["state"]["param_states"])
    factored = sum(np.asarray(t5x_states[f"{n}/v_row"]).shape != (1,) for n in fr_flat)
    if fr_opt is None:  # params-only source: T5X starts from zero moments, as its init does
        assert all(not np.any(np.asarray(v)) for v in t5x_states.values())
        print(f"params ({len(fr_flat)}) equal, {len(t5x_states)} optimizer slots zero; "
              f"{factored} parameters factored (v_row/v_col)")
        print("OK")
        return 0
    assert int(state.step) == int(fr_step), (int(state.step), fr_step)
    moments = optax_moments(fr_opt)
    compared = 0
    for name, slots in moments.items():
        for slot, value in slots.items():
            got = np.asarray(t5x_states[f"{name}/{slot}"])
            if got.shape == value.shape and got.shape != (1,):
                np.testing.assert_array_equal(got, value, err_msg=f"{name}/{slot}")
                compared += 1
    print(f"params ({len(fr_flat)}), step {fr_step} and {compared} trained moments equal "
          f"flanrec's; {factored} parameters factored (v_row/v_col)")
    assert compared >= len(fr_flat), "every parameter should carry its trained moment(s)"

    # 4. One more update, in T5X and in flanrec, from the same gradient.
    rng = np.random.default_rng(0)
    grads = {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
             for k, v in fr_flat.items()}
    from flanrec.model.params import unflatten

    new_state = state.apply_gradient(jax.tree.map(jnp.asarray, unflatten(grads)),
                                     learning_rate=args.lr)
    tx = optimizers.adafactor(optimizers.constant_schedule(args.lr),
                              min_dim_size_to_factor=args.min_dim)
    from flanrec.checkpoints import resolve_checkpoint
    from flanrec.checkpoints.store import _restore_items

    abstract = jax.eval_shape(tx.init, jax.tree.map(jnp.asarray, fr_params))
    _, opt_state, _ = _restore_items(resolve_checkpoint(args.flanrec_ckpt), None, abstract,
                                     restore_opt=True)
    params = jax.tree.map(jnp.asarray, fr_params)
    updates, _ = tx.update(jax.tree.map(jnp.asarray, unflatten(grads)), opt_state, params)
    import optax

    fr_new = flatten(jax.tree.map(np.asarray, optax.apply_updates(params, updates)))
    t5x_new = {k: np.asarray(v) for k, v in flatten(dict(new_state.params)).items()}
    worst = max(float(np.max(np.abs(t5x_new[k] - fr_new[k]))) for k in fr_new)
    moved = max(float(np.max(np.abs(fr_new[k] - fr_flat[k]))) for k in fr_new)
    print(f"one more step: max |T5X - flanrec| = {worst:.3g} (largest parameter change "
          f"{moved:.3g})")
    assert worst <= 1e-5 * max(moved, 1e-6) + 1e-7, worst
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
