"""Random tiny Hugging Face Flan-T5 models for parity tests (imported by test modules).

Kept out of conftest.py (owned by the lead) on purpose; tests import these helpers directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128)


def make_hf_t5(num_layers: int = 2, num_decoder_layers: int | None = None, seed: int = 0,
               **overrides):
    """A random untied gated-GELU `T5ForConditionalGeneration` in eval mode (fp32).

    transformers 5.x ignores `tie_word_embeddings=False` in the constructor (see
    STACK_NOTES.md), and once untied it also leaves `encoder/decoder.embed_tokens` as separate
    random tables; real Flan-T5 has one shared table, so we copy it in.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs = dict(TINY, num_layers=num_layers, feed_forward_proj="gated-gelu",
                  dropout_rate=0.0, tie_word_embeddings=False, decoder_start_token_id=0)
    if num_decoder_layers is not None:
        kwargs["num_decoder_layers"] = num_decoder_layers
    kwargs.update(overrides)
    cfg = transformers.T5Config(**kwargs)
    cfg.tie_word_embeddings = False
    cfg.scale_decoder_outputs = False
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        # Relative-attention tables and norm scales are small at HF's init; widen them so the
        # parity checks exercise every bucket and norm.
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name or "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "layer_norm" in name else 0.0))
        model.encoder.embed_tokens.weight.copy_(model.shared.weight)
        model.decoder.embed_tokens.weight.copy_(model.shared.weight)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model.eval()


def save_hf_t5(path: Path, **kwargs) -> Path:
    model = make_hf_t5(**kwargs)
    model.save_pretrained(str(path))
    return path


def padded_batch(rng: np.random.Generator, batch: int, length: int, vocab: int = 128,
                 min_len: int = 1) -> np.ndarray:
    """Random tokens in [2, vocab) ending in EOS (1), right-padded with 0 to `length`."""
    out = np.zeros((batch, length), np.int32)
    for i in range(batch):
        n = int(rng.integers(min_len, length + 1))
        out[i, :n] = rng.integers(2, vocab, size=n)
        out[i, n - 1] = 1
    return out


def shift_right(targets: np.ndarray, start: int = 0) -> np.ndarray:
    """T5 decoder inputs: targets shifted right with the start token in front."""
    out = np.zeros_like(targets)
    out[:, 1:] = targets[:, :-1]
    out[:, 0] = start
    return out


def hf_logits(model, enc: np.ndarray, dec_in: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec_in, dtype=torch.long))
    return out.logits.numpy()


def hf_encoder(model, enc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.encoder(input_ids=torch.tensor(enc, dtype=torch.long),
                            attention_mask=torch.tensor(enc > 0, dtype=torch.long))
    return out.last_hidden_state.numpy()


def random_params(cfg, seed: int = 0) -> dict:
    """Random float32 params for `cfg` built straight from the shared table (numpy only).

    Much cheaper than `Transformer.init` on a busy CPU (each initializer compiles), and it
    gives norms and relative-position tables non-trivial values.
    """
    from flanrec.model.params import param_specs, unflatten

    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, _) in param_specs(cfg).items():
        if name.endswith("/scale"):
            value = rng.normal(1.0, 0.3, shape)
        elif name.endswith("rel_embedding") or name.endswith("embedding"):
            value = rng.normal(0.0, 1.0, shape)
        else:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        flat[name] = value.astype(np.float32)
    return unflatten(flat)
