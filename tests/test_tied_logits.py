"""Tied output embeddings (`T5Config.logits_via_embedding`, T5X's option of that name).

The tied model scores the vocabulary with the token embedding table, divided by
sqrt(d_model), and has no `decoder/logits_dense/kernel`. Checked here: logits, loss and greedy
decoding against transformers' tied gated-GELU T5 (built by transformers itself, and loaded
from our export); exact HF and T5X round trips; the refusals that stay (T5 v1.0, an untied
scaled head); training with the real train step; the one-pass ranker against the full logits
and against beam search; sharded execution; old configs loading untied; gin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hf_fixtures import TINY, hf_logits, padded_batch, random_params, shift_right
from safetensors.numpy import load_file, save_file

from flanrec import api
from flanrec.interop import hf
from flanrec.interop.t5x import import_t5x, write_t5x_checkpoint
from flanrec.model import Transformer
from flanrec.model.config import T5Config
from flanrec.model.params import check_params, flatten, param_specs

TIED = T5Config(vocab_size=128, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                logits_via_embedding=True, name="tiny-tied")
LOGITS = "decoder/logits_dense/kernel"


def _hf_tied_model(seed: int = 0):
    """transformers' own tied gated-GELU T5 (random, eval mode), norms and relative position
    tables widened so every bucket and scale matters."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.T5Config(**dict(TINY, num_layers=2, num_decoder_layers=3),
                                feed_forward_proj="gated-gelu", tie_word_embeddings=True,
                                dropout_rate=0.0, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name or "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "layer_norm" in name else 0.0))
    assert model.config.scale_decoder_outputs
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    return model.eval()


def _hf_loss_sums(model, enc: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Per row: summed log-likelihood of the non-padding targets, from transformers' loss."""
    out = []
    for i in range(len(enc)):
        labels = torch.tensor(np.where(tgt[i:i + 1] > 0, tgt[i:i + 1], -100), dtype=torch.long)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor(enc[i:i + 1], dtype=torch.long),
                         attention_mask=torch.tensor(enc[i:i + 1] > 0, dtype=torch.long),
                         labels=labels).loss
        out.append(-float(loss) * int((tgt[i] > 0).sum()))
    return np.asarray(out)


def _hf_greedy(model, enc: np.ndarray, max_new: int) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                             attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                             do_sample=False, num_beams=1, max_new_tokens=max_new,
                             use_cache=False)
    ref = out.numpy()[:, 1:]  # without the decoder start token
    return np.pad(ref, ((0, 0), (0, max_new - ref.shape[1])))  # HF stops when all are done


def _check_parity(theirs, ours: api.FlanT5Model, greedy: bool) -> dict[str, float]:
    rng = np.random.default_rng(0)
    enc = padded_batch(rng, 4, 13)
    tgt = padded_batch(rng, 4, 9)
    ref = hf_logits(theirs, enc, shift_right(tgt))
    got = ours.logits(enc, shift_right(tgt))
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    want_ll, got_ll = _hf_loss_sums(theirs, enc, tgt), ours.score(enc, tgt)
    np.testing.assert_allclose(got_ll, want_ll, rtol=1e-4, atol=1e-4)
    if greedy:  # decoding through our KV cache against transformers' generate
        np.testing.assert_array_equal(ours.generate(enc, max_length=8),
                                      _hf_greedy(theirs, enc, 8))
    return {"logits": float(np.abs(got - ref).max()),
            "loglik": float(np.abs(got_ll - want_ll).max())}


@pytest.fixture(scope="module")
def hf_made(tmp_path_factory):
    """A tied checkpoint transformers wrote itself (save_pretrained)."""
    model = _hf_tied_model()
    path = tmp_path_factory.mktemp("hf_tied") / "model"
    model.save_pretrained(str(path))
    return model, path


def test_tied_checkpoint_saved_by_transformers_imports_and_matches(hf_made, capsys):
    theirs, path = hf_made
    cfg, params = hf.import_hf(path)
    assert cfg.logits_via_embedding and cfg.num_decoder_layers == 3
    flat = flatten(params)
    assert LOGITS not in flat and set(flat) == set(param_specs(cfg))
    np.testing.assert_array_equal(flat["token_embedder/embedding"],
                                  theirs.shared.weight.detach().numpy())
    diffs = _check_parity(theirs, api.load(path), greedy=True)
    with capsys.disabled():
        print(f"\ntied parity vs transformers (its own checkpoint): max |diff| {diffs}")


def test_our_export_loads_in_transformers_tied_and_matches(tmp_path, capsys):
    import transformers

    params = random_params(TIED, seed=5)
    out = hf.export_hf(TIED, params, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["tie_word_embeddings"] is True and written["scale_decoder_outputs"] is True
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    assert theirs.config.scale_decoder_outputs and theirs.config.feed_forward_proj == "gated-gelu"
    np.testing.assert_array_equal(theirs.lm_head.weight.detach().numpy(),
                                  params["token_embedder"]["embedding"])
    ours = api.FlanT5Model(TIED, jax.tree.map(jnp.asarray, params))
    diffs = _check_parity(theirs, ours, greedy=False)
    with capsys.disabled():
        print(f"\ntied parity vs transformers (our export): max |diff| {diffs}")


def test_hf_round_trip_is_exact(tmp_path):
    params = random_params(TIED, seed=1)
    out = hf.export_hf(TIED, params, tmp_path / "a")
    cfg, back = hf.import_hf(out)
    assert cfg.replace(name=TIED.name) == TIED
    got, want = flatten(back), flatten(params)
    assert set(got) == set(want) and LOGITS not in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # Exported again: the same tensors.
    again = hf.export_hf(cfg, back, tmp_path / "b")
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert set(a) == set(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _edit(path: Path, tensors_edit=None, **config) -> None:
    if tensors_edit is not None:
        tensors = load_file(str(path / "model.safetensors"))
        tensors_edit(tensors)
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if config:
        doc = json.loads((path / "config.json").read_text())
        doc.update(config)
        (path / "config.json").write_text(json.dumps(doc))


def test_hf_tied_variants_and_refusals(tmp_path):
    params = random_params(TIED, seed=2)
    table = params["token_embedder"]["embedding"]
    # A tied checkpoint that also stores lm_head.weight (equal to shared): loads tied.
    with_head = hf.export_hf(TIED, params, tmp_path / "with_head")
    _edit(with_head, lambda t: t.__setitem__("lm_head.weight", t["shared.weight"].copy()))
    cfg, back = hf.import_hf(with_head)
    assert cfg.logits_via_embedding and LOGITS not in flatten(back)
    # transformers-4 config: no scale_decoder_outputs, tie_word_embeddings true: tied.
    v4 = hf.export_hf(TIED, params, tmp_path / "v4")
    doc = json.loads((v4 / "config.json").read_text())
    del doc["scale_decoder_outputs"]
    (v4 / "config.json").write_text(json.dumps(doc))
    assert hf.import_hf(v4)[0].logits_via_embedding
    # Scaled logits but an lm_head of its own: neither Flan-T5 nor tied. One line.
    other = hf.export_hf(TIED, params, tmp_path / "other")
    _edit(other, lambda t: t.__setitem__("lm_head.weight", t["shared.weight"] * 2))
    with pytest.raises(hf.HFCheckpointError,
                       match="scale_decoder_outputs is true.*lm_head.weight differs") as err:
        hf.import_hf(other)
    assert "\n" not in str(err.value) and str(other) in str(err.value)
    # T5 v1.0 (ReLU) stays refused, tied or not.
    relu = hf.export_hf(TIED, params, tmp_path / "relu")
    _edit(relu, feed_forward_proj="relu")
    with pytest.raises(hf.HFCheckpointError, match="feed_forward_proj is 'relu'.*T5 v1.0") as err:
        hf.import_hf(relu)
    assert "\n" not in str(err.value)
    # Tied tensors but unscaled config: refused, naming what was expected.
    unscaled = hf.export_hf(TIED, params, tmp_path / "unscaled")
    _edit(unscaled, scale_decoder_outputs=False, tie_word_embeddings=False)
    with pytest.raises(hf.HFCheckpointError, match="no lm_head.weight.*scale_decoder_outputs"):
        hf.import_hf(unscaled)
    assert table.shape == (TIED.vocab_size, TIED.d_model)


def test_t5x_round_trip_and_preset_names(tmp_path):
    params = random_params(TIED, seed=3)
    ckpt = write_t5x_checkpoint(params, tmp_path / "model", step=7)
    assert not any(LOGITS.replace("/", ".") in p.name for p in ckpt.iterdir())
    cfg, back = import_t5x(ckpt)
    assert cfg.logits_via_embedding and cfg.name == "custom"
    assert cfg.replace(name=TIED.name, dropout_rate=0.0) == TIED  # T5X stores no dropout
    got, want = flatten(back), flatten(params)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The tiny preset's shapes, tied: not the (untied) tiny preset.
    from flanrec.model.config import get_preset

    tiny_tied = get_preset("tiny", logits_via_embedding=True)
    cfg, _ = import_t5x(write_t5x_checkpoint(random_params(tiny_tied), tmp_path / "t", step=1))
    assert cfg.logits_via_embedding and cfg.name == "custom"


def test_lora_and_prompt_on_a_tied_backbone():
    """Adapters leave the tied head alone: the init tree is the adapter table plus the tied
    backbone, and a fresh adapter (LoRA B = 0, zero 'add' prompt) is exactly the backbone."""
    from flax import linen as nn

    from flanrec.model.adapters import LoraConfig, PromptConfig, all_param_specs, with_adapters

    base = TIED.replace(num_encoder_layers=1, num_decoder_layers=1)
    cfg = with_adapters(base, PromptConfig(length=1, fusion="add", init="zeros"),
                        LoraConfig(rank=2, targets=("query", "wo")))
    assert cfg.logits_via_embedding
    rng = np.random.default_rng(4)
    enc, tgt = padded_batch(rng, 2, 6), padded_batch(rng, 2, 4)
    variables = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), enc, shift_right(tgt))
    params = nn.unbox(variables["params"])
    assert set(flatten(params)) == set(all_param_specs(cfg)) and LOGITS not in flatten(params)
    backbone = {k: v for k, v in params.items() if k not in ("lora", "prompt")}
    adapted = jax.jit(Transformer(cfg).apply)({"params": params}, enc, shift_right(tgt))
    plain = jax.jit(Transformer(base).apply)({"params": backbone}, enc, shift_right(tgt))
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(plain), atol=1e-6)


def test_convert_summary_says_tied():
    from flanrec.convert.job import summary

    assert "custom(d_model=32" in summary(TIED, "flanrec", "hf", "out")
    assert "with tied output embeddings" in summary(TIED, "flanrec", "hf", "out")
    assert "tied" not in summary(TIED.replace(logits_via_embedding=False), "hf", "t5x", "o")


def test_mismatched_tying_is_named_with_the_setting():
    untied = TIED.replace(logits_via_embedding=False)
    with pytest.raises(ValueError, match="missing parameters.*logits_dense.*set "
                                         "T5Config.logits_via_embedding = True"):
        check_params(flatten(random_params(TIED)), untied, "ckpt")
    with pytest.raises(ValueError, match="unexpected parameters.*logits_dense.*untied output "
                                         "projection"):
        check_params(flatten(random_params(untied)), TIED, "ckpt")


def test_old_config_json_loads_untied_and_the_flag_round_trips(tmp_path):
    old = T5Config().to_dict()
    del old["logits_via_embedding"]  # a checkpoint's config from before the field
    cfg = T5Config.from_dict(json.loads(json.dumps(old)))
    assert cfg.logits_via_embedding is False and LOGITS in param_specs(cfg)
    assert T5Config.from_dict(json.loads(TIED.to_json())) == TIED
    with pytest.raises(ValueError, match="logits_via_embedding must be True or False"):
        T5Config(logits_via_embedding="yes")
    # A flanrec checkpoint stores the flag in its metadata and gives it back.
    from flanrec.checkpoints.store import load_params, save_params_checkpoint

    params = random_params(TIED, seed=4)
    save_params_checkpoint(TIED, params, tmp_path / "ckpt")
    cfg, back = load_params(tmp_path / "ckpt")
    assert cfg == TIED and LOGITS not in flatten(back)


def test_gin_binds_the_flag():
    """`T5Config.logits_via_embedding = True` on top of a model gin, as a user writes it."""
    import gin

    import flanrec.configurables  # noqa: F401 - registers T5Config with gin
    from flanrec.model.config import get_preset

    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            ["gin/models/tiny.gin"],
            ["DROPOUT_RATE = 0.0", "ACTIVATION_DTYPE = 'float32'",
             "T5Config.logits_via_embedding = True"])
        cfg = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert cfg == get_preset("tiny", dropout_rate=0.0, logits_via_embedding=True)


def test_trains_with_the_train_step_and_one_pass_equals_full_logits():
    """A few real train steps (sharded state, Adam) lower the loss; then the one-pass ranker
    (`logit_positions`) gives the full logits' log-probabilities, and beam search over a
    one-token trie (the KV-cache decoding path) the same items and scores."""
    from flanrec import partitioning
    from flanrec.data.trie import build_trie
    from flanrec.infer import modes
    from flanrec.train import losses, optimizers
    from flanrec.train import steps as trainer

    # One layer each (compile time); dropout on: the train step's dropout path too.
    cfg = TIED.replace(dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1)
    model = Transformer(cfg)
    mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    sched = optimizers.constant_schedule(1e-2)
    tx = optax.adam(sched)
    sh = trainer.state_shardings(trainer.abstract_state(model, tx), cfg, mesh, rules)
    assert LOGITS not in flatten(sh.params)
    bsh = partitioning.batch_sharding(mesh, rules)
    rng = np.random.default_rng(0)
    enc = padded_batch(rng, 8, 12)
    tgt = padded_batch(rng, 8, 5, min_len=2)
    batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
             "decoder_input_tokens": shift_right(tgt)}
    state = trainer.init_state(model, tx, jax.random.PRNGKey(0), sh, mesh, rules,
                               random_params(cfg, seed=6))
    step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh, rules)
    seen = []
    for i in range(10):
        state, m = step(state, partitioning.host_to_global(batch, bsh), jax.random.PRNGKey(i))
        seen.append(float(m["loss"]))
    assert np.isfinite(seen).all() and seen[-1] < 0.7 * seen[0], seen
    params = jax.device_get(state.params)

    eval_cfg = cfg.replace(dropout_rate=0.0)
    tokens = np.arange(10, 60, dtype=np.int32)  # a catalogue of one-token items
    width = 4
    lengths = np.arange(8) % (width + 1)
    prefix = np.zeros((8, width), np.int32)
    for r, n in enumerate(lengths):
        prefix[r, width - n:] = rng.choice(tokens, n, replace=False)
    items, scores = modes.NextItemRanker(eval_cfg, tokens)(params, enc, len(tokens), None,
                                                           prefix, lengths)
    # Reference: the full [batch, length, vocab] logits with each prefix left-aligned after
    # the start token (causal: the right padding does not reach position lengths[r]).
    dec = np.zeros((8, width + 1), np.int32)
    for r, n in enumerate(lengths):
        dec[r, 1:n + 1] = prefix[r, width - n:]
    logits = Transformer(eval_cfg).apply({"params": params}, enc, dec)
    assert logits.shape == (8, width + 1, eval_cfg.vocab_size)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for r in range(8):
        want = logp[r, lengths[r], tokens[items[r]]]
        np.testing.assert_allclose(scores[r], want, rtol=0, atol=1e-5)
        assert sorted(items[r].tolist()) == list(range(len(tokens)))
    trie = build_trie([[int(t)] for t in tokens], eos_id=1, vocab_size=eval_cfg.vocab_size,
                      end_with_eos=False)
    k = 6
    seqs, beam_scores = modes.TriePredictor(eval_cfg, trie)(params, enc, k, None,
                                                            decoder_prefix=prefix,
                                                            prefix_lengths=lengths)
    by_token = {int(t): j for j, t in enumerate(tokens)}
    np.testing.assert_array_equal(np.vectorize(by_token.get)(seqs[:, :, 0]), items[:, :k])
    np.testing.assert_allclose(beam_scores, scores[:, :k], rtol=0, atol=1e-4)


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import sys
    sys.path.insert(0, "tests")
    import jax, numpy as np
    from flax import linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from hf_fixtures import padded_batch, random_params, shift_right
    from flanrec import partitioning
    from flanrec.model.params import flatten
    from flanrec.model import Transformer, get_preset

    cfg = get_preset("tiny", logits_via_embedding=True)
    params = random_params(cfg)
    enc = padded_batch(np.random.default_rng(0), 4, 8)
    tgt = padded_batch(np.random.default_rng(1), 4, 6)
    model = Transformer(cfg)
    ref = jax.jit(model.apply)({"params": params}, enc, shift_right(tgt), tgt)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), enc, tgt))["params"]
    batch = NamedSharding(mesh, P("data", None))
    for kind, want in (("standard", P("model", None)), ("fsdp", P("model", "data"))):
        rules = partitioning.logical_axis_rules(kind)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        placed = jax.device_put(params, shardings)
        assert "decoder/logits_dense/kernel" not in flatten(placed)
        assert flatten(placed)["token_embedder/embedding"].sharding.spec == want, kind
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            fwd = jax.jit(lambda p, e, d, t: model.apply({"params": p}, e, d, t))
            out = fwd(placed, jax.device_put(enc, batch),
                      jax.device_put(shift_right(tgt), batch), jax.device_put(tgt, batch))
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
        print("OK", kind, out.sharding.spec)
""")


def test_tied_forward_under_logical_sharding_matches_single_device():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _SHARDED], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("OK") == 2


def test_bfloat16_activations_keep_float32_logits():
    f32 = TIED.replace(num_encoder_layers=1, num_decoder_layers=1)
    cfg = f32.replace(dtype="bfloat16")
    params = jax.tree.map(jnp.asarray, random_params(cfg, seed=8))
    rng = np.random.default_rng(9)
    enc, tgt = padded_batch(rng, 2, 7), padded_batch(rng, 2, 4)
    low = jax.jit(Transformer(cfg).apply)({"params": params}, enc, shift_right(tgt))
    high = jax.jit(Transformer(f32).apply)({"params": params}, enc, shift_right(tgt))
    assert low.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(low - high))) < 0.1 * float(jnp.max(jnp.abs(high)))
