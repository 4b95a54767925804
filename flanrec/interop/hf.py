"""Import and export Hugging Face Flan-T5 checkpoints (`T5ForConditionalGeneration`).

HF stores PyTorch `Linear` weights as [out, in]; T5X/flanrec kernels are [in, out]. The whole
mapping is the renaming table `_hf_names` plus a transpose for kernels and the relative
position tables. Everything is validated against the model's parameter table
(`flanrec.model.params.param_specs`) before it is returned, so a checkpoint that does not fit
is refused with the offending name and shapes instead of being half-loaded (no parameter is
ever random-initialised).

Only the T5 v1.1 MLP (gated-GELU) is accepted: loading a T5 v1.0 (ReLU) checkpoint into this
architecture would "work" and silently give wrong outputs, so it is refused. The output
projection comes in two forms: untied and unscaled (Flan-T5: `lm_head.weight`), or tied to
the embeddings and scaled by d_model**-0.5 (`T5Config.logits_via_embedding`). Tying and
scaling are decided the way transformers itself decides them, not from
`tie_word_embeddings` alone: transformers 5 writes `tie_word_embeddings: true` into every T5
config it saves (Flan-T5 re-saved included) and states the logit scaling in
`scale_decoder_outputs`. So the logits are *scaled* when `scale_decoder_outputs` says so, or,
in configs written before that field existed (transformers 4), when `tie_word_embeddings` is
not false; a scaled checkpoint is imported tied, and must then have no `lm_head.weight`
tensor or one equal to `shared.weight`. An unscaled one must have its own `lm_head.weight`.

An export is a directory transformers loads as it loads google/flan-t5-*: config.json,
generation_config.json, model.safetensors and, when the checkpoint carries its vocabulary,
spiece.model with the tokenizer files of `flanrec.interop.hf_tokenizer` (tokenizer.model,
the task's whole SentencePiece proto, which `AutoTokenizer` reads; tokenizer.json for the
`tokenizers` library), all readable by everyone (0644 files in a 0755 directory).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flanrec.errors import UserError
from flanrec.interop import hf_tokenizer
from flanrec.interop import vocabulary as vocab_files
from flanrec.interop.exports import make_readable
from flanrec.model.config import T5Config
from flanrec.model.params import LOGITS_KERNEL, check_params, flatten, param_specs, unflatten

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
SPIECE_FILE = "spiece.model"
GENERATION_CONFIG_FILE = "generation_config.json"

# Embedding copies HF keeps next to `shared.weight`; they must equal it (one table in T5).
_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class HFCheckpointError(UserError, ValueError):
    """A Hugging Face checkpoint directory that cannot be imported as Flan-T5."""


def _hf_names(cfg: T5Config) -> Iterator[tuple[str, str, bool]]:
    """(flanrec name, HF name, transpose?) for every parameter of `cfg`."""
    yield "token_embedder/embedding", "shared.weight", False
    if not cfg.logits_via_embedding:
        yield LOGITS_KERNEL, "lm_head.weight", True
    for stack, norm in (("encoder", "encoder_norm"), ("decoder", "decoder_norm")):
        yield f"{stack}/{norm}/scale", f"{stack}.final_layer_norm.weight", False
        yield (f"{stack}/relpos_bias/rel_embedding",
               f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)

    def attention(ours: str, theirs: str) -> Iterator[tuple[str, str, bool]]:
        for o, t in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            yield f"{ours}/{o}/kernel", f"{theirs}.{t}.weight", True

    def mlp(ours: str, theirs: str) -> Iterator[tuple[str, str, bool]]:
        for name in ("wi_0", "wi_1", "wo"):
            yield f"{ours}/{name}/kernel", f"{theirs}.DenseReluDense.{name}.weight", True

    for i in range(cfg.num_encoder_layers):
        o, t = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
        yield f"{o}/pre_attention_layer_norm/scale", f"{t}.0.layer_norm.weight", False
        yield from attention(f"{o}/attention", f"{t}.0.SelfAttention")
        yield f"{o}/pre_mlp_layer_norm/scale", f"{t}.1.layer_norm.weight", False
        yield from mlp(f"{o}/mlp", f"{t}.1")
    for i in range(cfg.num_decoder_layers):
        o, t = f"decoder/layers_{i}", f"decoder.block.{i}.layer"
        yield f"{o}/pre_self_attention_layer_norm/scale", f"{t}.0.layer_norm.weight", False
        yield from attention(f"{o}/self_attention", f"{t}.0.SelfAttention")
        yield f"{o}/pre_cross_attention_layer_norm/scale", f"{t}.1.layer_norm.weight", False
        yield from attention(f"{o}/encoder_decoder_attention", f"{t}.1.EncDecAttention")
        yield f"{o}/pre_mlp_layer_norm/scale", f"{t}.2.layer_norm.weight", False
        yield from mlp(f"{o}/mlp", f"{t}.2")


def config_from_hf(hf: Mapping[str, Any], source: str) -> T5Config:
    """T5Config from a parsed HF config.json, refusing anything that is not a gated-GELU T5.

    Scaled logits (`scales_logits`) give a tied config (`logits_via_embedding`); whether the
    tensors agree is `import_hf`'s check."""
    model_type = hf.get("model_type")
    if model_type != "t5":
        raise HFCheckpointError(
            f"{source}: model_type is {model_type!r}; only 't5' (T5 v1.1 / Flan-T5 "
            f"encoder-decoder) checkpoints can be imported")
    if not hf.get("is_encoder_decoder", True) or hf.get("is_decoder", False):
        raise HFCheckpointError(f"{source}: not an encoder-decoder model (decoder-only or "
                                f"encoder-only T5 variants are not supported)")
    archs = hf.get("architectures") or ["T5ForConditionalGeneration"]
    if "T5ForConditionalGeneration" not in archs:
        raise HFCheckpointError(f"{source}: architectures {archs} has no "
                                f"T5ForConditionalGeneration (need encoder, decoder and lm_head)")
    ffn = hf.get("feed_forward_proj", "relu")
    if ffn != "gated-gelu":
        raise HFCheckpointError(
            f"{source}: feed_forward_proj is {ffn!r}; only 'gated-gelu' (T5 v1.1 / Flan-T5) is "
            f"supported — T5 v1.0 ('relu') checkpoints have a different MLP")
    try:
        num_layers = int(hf["num_layers"])
        dec_layers = hf.get("num_decoder_layers")
        return T5Config(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_ff=int(hf["d_ff"]),
            num_heads=int(hf["num_heads"]), d_kv=int(hf["d_kv"]),
            num_encoder_layers=num_layers,
            num_decoder_layers=int(dec_layers) if dec_layers is not None else num_layers,
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
            pad_token_id=int(hf.get("pad_token_id", 0) or 0),
            eos_token_id=int(_first(hf.get("eos_token_id", 1))),
            decoder_start_token_id=int(hf.get("decoder_start_token_id", 0) or 0),
            logits_via_embedding=scales_logits(hf),
            name=str(hf.get("_name_or_path") or "hf-import"),
        )
    except KeyError as e:
        raise HFCheckpointError(f"{source}: missing field {e.args[0]!r}") from None


def scales_logits(hf: Mapping[str, Any]) -> bool:
    """Whether transformers multiplies this T5's decoder output by d_model**-0.5.

    transformers 5 reads `scale_decoder_outputs`; configs without it (transformers 4) meant
    scaling by `tie_word_embeddings` not being false, and transformers 5 still reads them so."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def _why_scaled(hf: Mapping[str, Any]) -> str:
    return ("scale_decoder_outputs is true" if "scale_decoder_outputs" in hf else
            "tie_word_embeddings is not false and there is no scale_decoder_outputs field, "
            "which transformers reads as")


def _check_output_projection(tensors: dict[str, np.ndarray], hf: Mapping[str, Any],
                             cfg: T5Config, src: Path) -> None:
    """Refuse tensors whose output projection contradicts the config's scaling; drop an
    `lm_head.weight` that merely repeats `shared.weight` (a tied model saved with it)."""
    lm_head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    if cfg.logits_via_embedding:
        if lm_head is None:
            return
        if shared is not None and np.array_equal(lm_head, shared):
            del tensors["lm_head.weight"]
            return
        raise HFCheckpointError(
            f"{src}: {_why_scaled(hf)} (the d_model**-0.5 logit scaling of T5 v1.0 and of "
            f"tied T5) but lm_head.weight differs from shared.weight: a scaled untied output "
            f"projection is neither Flan-T5 (unscaled, own lm_head) nor tied T5 v1.1")
    if lm_head is None:  # the tensors, not config.json, say whether it is tied
        raise HFCheckpointError(
            f"{src}: no lm_head.weight — the output projection is tied to the embeddings, "
            f"but the config does not scale the logits as a tied T5 does (expected "
            f"scale_decoder_outputs true, or an lm_head.weight tensor as in Flan-T5)")


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def find_spiece_model(src_dir: str | os.PathLike[str]) -> Path | None:
    """The SentencePiece model shipped next to the checkpoint, if any."""
    path = Path(src_dir) / SPIECE_FILE
    return path if path.is_file() else None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # handles bf16 through ml_dtypes

    try:
        return load_file(str(path))
    except Exception as e:  # corrupt or truncated file
        raise HFCheckpointError(f"{path}: cannot read safetensors file: {e}") from e


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise HFCheckpointError(
            f"{path}: reading pytorch_model.bin needs torch, which is not installed. Convert "
            f"it once elsewhere to safetensors, e.g. `python -c \"from transformers import "
            f"T5ForConditionalGeneration as M; M.from_pretrained('DIR')."
            f"save_pretrained('DIR', safe_serialization=True)\"`") from None
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary objects.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise HFCheckpointError(f"{path}: cannot load as a weights-only torch state dict: "
                                f"{e}") from e
    if not isinstance(state, Mapping):
        raise HFCheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_hf_tensors(src: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory, by HF name (any float dtype)."""
    single, index, torch_bin = src / SAFETENSORS_FILE, src / SAFETENSORS_INDEX, src / TORCH_FILE
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise HFCheckpointError(f"{index}: not a safetensors index ({e})") from e
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = src / shard
            if not shard_path.is_file():
                raise HFCheckpointError(f"{index}: names shard {shard}, which is missing")
            tensors.update(_read_safetensors(shard_path))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise HFCheckpointError(f"{index}: tensors {absent[:5]} are listed but not in any "
                                    f"shard")
        return tensors
    if torch_bin.is_file():
        return _read_torch_bin(torch_bin)
    raise HFCheckpointError(f"{src}: no weights found (expected {SAFETENSORS_FILE}, "
                            f"{SAFETENSORS_INDEX} with shards, or {TORCH_FILE})")


def import_hf(src_dir: str | os.PathLike[str]) -> tuple[T5Config, dict[str, Any]]:
    """Read an HF Flan-T5 directory into (T5Config, nested float32 numpy params).

    The SentencePiece model, if shipped, is found with `find_spiece_model(src_dir)`.
    """
    src = Path(src_dir)
    config_path = src / CONFIG_FILE
    if not src.is_dir():
        raise HFCheckpointError(f"{src}: not a directory")
    if not config_path.is_file():
        raise HFCheckpointError(f"{config_path}: missing (an HF checkpoint directory needs "
                                f"config.json next to its weights)")
    try:
        hf_cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{config_path}: invalid JSON: {e}") from e
    cfg = config_from_hf(hf_cfg, str(config_path))
    tensors = read_hf_tensors(src)
    _check_output_projection(tensors, hf_cfg, cfg, src)
    shared = tensors.get("shared.weight")
    for copy in _EMBED_COPIES:
        if copy in tensors and shared is not None and not np.array_equal(tensors[copy], shared):
            raise HFCheckpointError(f"{src}: {copy} differs from shared.weight; T5 uses one "
                                    f"embedding table for encoder and decoder inputs")
    flat: dict[str, np.ndarray] = {}
    used = set(_EMBED_COPIES)
    specs = param_specs(cfg)
    for ours, theirs, transpose in _hf_names(cfg):
        if theirs not in tensors:
            continue  # reported by check_params as missing, under our name
        used.add(theirs)
        value = np.asarray(tensors[theirs], dtype=np.float32)
        value = value.T if transpose else value
        want = specs[ours][0]
        if value.shape != want:
            raise HFCheckpointError(f"{src}: {theirs} (-> {ours}) has shape {value.shape} after "
                                    f"conversion, expected {want} from config.json")
        flat[ours] = np.ascontiguousarray(value)
    extra = sorted(set(tensors) - used)
    if extra:
        raise HFCheckpointError(f"{src}: unexpected tensors {extra[:5]} ({len(extra)} in all); "
                                f"is this really a T5 v1.1 checkpoint with the layer counts of "
                                f"config.json?")
    try:
        check_params(flat, cfg, str(src))
    except ValueError as e:
        raise HFCheckpointError(str(e)) from None
    return cfg, unflatten(flat)


def hf_config_dict(cfg: T5Config) -> dict[str, Any]:
    """config.json for `T5ForConditionalGeneration` describing `cfg` (gated-GELU; untied and
    unscaled like Flan-T5, or tied and scaled with `cfg.logits_via_embedding`)."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_ff": cfg.d_ff,
        "d_kv": cfg.d_kv,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "tie_word_embeddings": cfg.logits_via_embedding,
        "scale_decoder_outputs": cfg.logits_via_embedding,
        "use_cache": True,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "dtype": "float32",  # transformers 5's name; 4.x reads torch_dtype
        "torch_dtype": "float32",
    }


def generation_config_dict(cfg: T5Config) -> dict[str, Any]:
    """generation_config.json: the ids `generate()` starts, pads and stops with."""
    return {"decoder_start_token_id": cfg.decoder_start_token_id,
            "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}


def export_hf(cfg: T5Config, params: Mapping[str, Any], out_dir: str | os.PathLike[str],
              vocabulary: Any = None) -> Path:
    """Write an HF directory atomically: config.json, generation_config.json,
    model.safetensors (a tied model without lm_head.weight, as transformers saves one), and
    with `vocabulary` (a seqio SentencePiece vocabulary) spiece.model,
    the tokenizer files and flanrec_vocabulary.json.

    The directory is assembled under a temporary name next to `out_dir` and moved into place
    with `os.replace`, so readers never see a half-written checkpoint. An existing non-empty
    `out_dir` is refused rather than overwritten. Natural probe texts are encoded with
    tokenizer.json and with `vocabulary`; a text they disagree on is logged as a warning
    (`hf_tokenizer.warn_differences`).
    """
    from safetensors.numpy import save_file

    flat = flatten(_unbox(params))
    check_params(flat, cfg, "export_hf params")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; refusing to "
                              f"overwrite")
    if vocabulary is not None and vocab_files.describe(vocabulary) is None:
        raise ValueError(f"{vocabulary}: only SentencePiece vocabularies can be exported as "
                         "an HF tokenizer")
    if vocabulary is not None and vocabulary.vocab_size > cfg.vocab_size:
        raise ValueError(f"vocabulary {vocabulary} has {vocabulary.vocab_size} ids but the "
                         f"model embeds only {cfg.vocab_size}: it is not this model's")
    tensors: dict[str, np.ndarray] = {}
    for ours, theirs, transpose in _hf_names(cfg):
        value = np.asarray(flat[ours], dtype=np.float32)
        tensors[theirs] = np.ascontiguousarray(value.T if transpose else value)
    for copy in _EMBED_COPIES:  # what save_pretrained writes; loads the same in HF 4.x and 5.x
        tensors[copy] = tensors["shared.weight"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        _write_json(tmp / CONFIG_FILE, hf_config_dict(cfg))
        _write_json(tmp / GENERATION_CONFIG_FILE, generation_config_dict(cfg))
        if vocabulary is not None:
            vocab_files.write_vocabulary(vocabulary, tmp)
            for name, content in hf_tokenizer.tokenizer_files(vocabulary).items():
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    (tmp / name).write_text(content, encoding="utf-8")
        make_readable(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if vocabulary is not None:
        hf_tokenizer.warn_differences(vocabulary, hf_tokenizer.probe_texts(vocabulary),
                                      f"HF export {hf_tokenizer.TOKENIZER_FILE}")
    return out


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _unbox(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept plain or `nn.with_logical_partitioning`-boxed trees (and jax arrays)."""
    if "params" in params and len(params) == 1:
        params = params["params"]
    try:
        from flax import linen as nn
    except ImportError:  # pragma: no cover - flax is a hard dependency of the model
        return params
    return nn.unbox(params)
