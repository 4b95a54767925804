"""`python -m flanrec.convert`: move Flan-T5 weights between HF, T5X and flanrec checkpoints.

    python -m flanrec.convert --from hf  --src google/flan-t5-small-dir --out ckpt/flan-small
    python -m flanrec.convert --from t5x --src gs-copy/checkpoint_1198000 --out ckpt/flan-small
    python -m flanrec.convert --from flanrec --src MODEL_DIR --out hf-out --to hf
    python -m flanrec.convert --from flanrec --src MODEL_DIR --out t5x-out --to t5x
    python -m flanrec.convert --from flanrec --src LORA_RUN --merge_lora --out hf-out --to hf
    python -m flanrec.convert --average RUN_A RUN_B/checkpoint_2000 --out soup [--to hf]

`--merge_lora` folds a LoRA run's adapters into its frozen backbone (W + alpha/r · A B), so
the result is a plain Flan-T5 checkpoint every exporter writes unchanged. `--average` writes
the elementwise mean of several checkpoints ("model soup", `flanrec.convert.average`).

The vocabulary a source carries (a training MODEL_DIR's `spiece.model`, see
`flanrec.interop.vocabulary`) travels with it: an HF output gets it with transformers'
tokenizer files, so `AutoTokenizer` gives the task's ids (`--vocab` names another one). A T5X
output holds T5X's whole Adafactor train state (the run's moments where it trained with
Adafactor) at the flanrec checkpoint's step, so T5X's stock fine-tuning restores it.

Every conversion goes through the model's one parameter table
(`flanrec.model.params.param_specs`), so the output is checked before it is written. Output is
assembled in a scratch directory and published by `flanrec.files.outputs.staged_dir` (one rename
locally; uploaded with its ownership marker last on gs://): an interrupted run leaves nothing
at `--out`. A non-empty `--out` is replaced only with
`--overwrite` and only when flanrec.convert wrote it; `--src`/`--out` may be URLs (gs://).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from flanrec.checkpoints import (
    is_adapter_checkpoint,
    load_adapter_checkpoint,
    load_optimizer_state,
    load_params,
    local_checkpoint,
    read_adapters,
    resolve_checkpoint,
    save_params_checkpoint,
)
from flanrec.convert.average import load_for_average
from flanrec.files import outputs, storage
from flanrec.interop import vocabulary as vocab_files
from flanrec.interop.exports import make_readable
from flanrec.interop.hf import export_hf, import_hf
from flanrec.interop.t5x import import_t5x, match_preset, write_t5x_checkpoint
from flanrec.interop.vocabulary import write_vocabulary
from flanrec.model.adapters import lora_of, prompt_of
from flanrec.model.config import T5Config
from flanrec.model.params import check_finite, count_params, flatten

SOURCES = ("hf", "t5x", "flanrec")
TARGETS = ("flanrec", "hf", "t5x")


def read_source(kind: str, src: str, merge_lora: bool = False) -> tuple[T5Config, dict[str, Any]]:
    """(config, float32 numpy params) from an HF dir, a T5X checkpoint or a flanrec checkpoint.

    A flanrec checkpoint of a LoRA run needs `merge_lora`; one of a prompt run is refused
    (a plain T5 checkpoint has no place for a soft prompt)."""
    if kind == "hf":

        return import_hf(src)
    if kind == "t5x":

        return import_t5x(src)
    if kind == "flanrec":

        if is_adapter_checkpoint(src):
            adapted, _, _ = read_adapters(src)
            if prompt_of(adapted) is not None:
                raise ValueError(f"{src}: a soft-prompt checkpoint cannot be written as a plain "
                                 "T5 checkpoint; load it with flanrec.api.load instead")
            if lora_of(adapted) is not None and not merge_lora:
                raise ValueError(f"{src}: a LoRA checkpoint (adapters only): pass --merge_lora "
                                 "to fold them into the backbone")
            return load_adapter_checkpoint(src, merge_lora=True)
        return load_params(src)
    raise ValueError(f"unknown source kind {kind!r}; expected one of {SOURCES}")


def find_vocabulary(kind: str, src: str) -> Any:
    """The vocabulary the source carries (`flanrec.interop.vocabulary`), carried along to
    HF/flanrec outputs; None when it has none (T5X checkpoints never do)."""
    candidates = [src]
    if kind == "flanrec":

        try:
            candidates.append(os.fspath(resolve_checkpoint(src)))
        except (ValueError, FileNotFoundError):
            pass
    for c in candidates:
        found = vocab_files.vocabulary_dir(c)
        if found is not None:
            return vocab_files.load_vocabulary(found)
    return None


def source_optimizer_state(kind: str, src: str) -> tuple[int | None, Any]:
    """(step, optimizer state) of a flanrec training checkpoint, for `--to t5x`; (None,
    None) for anything else."""
    if kind != "flanrec":
        return None, None

    if is_adapter_checkpoint(src):
        return None, None  # adapters' moments: no place in a plain T5X state
    return load_optimizer_state(src)


def write_target(kind: str, cfg: T5Config, params: dict[str, Any], out: Path, *,
                 step: int, vocabulary: Any = None, opt_state: Any = None) -> None:
    """Write one output of `kind` at `out` (a path that does not exist yet)."""
    if kind == "flanrec":

        save_params_checkpoint(cfg, params, out)
        if vocabulary is not None:
            write_vocabulary(vocabulary, out)
    elif kind == "hf":

        export_hf(cfg, params, out, vocabulary=vocabulary)
    elif kind == "t5x":

        write_t5x_checkpoint(params, out, step, opt_state=opt_state)
    else:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGETS}")


OVERWRITE_HINT = " (pass --overwrite)"


def convert(src_kind: str, src: str, out: str, dst_kind: str = "flanrec", *,
            overwrite: bool = False, step: int | None = None, merge_lora: bool = False,
            vocab: str | None = None) -> tuple[T5Config, str]:
    """Convert `src` (of `src_kind`) to `out` (of `dst_kind`); returns (config, out path).

    `step` (T5X output): default the source's own step for a flanrec training checkpoint,
    else 0. `vocab`: see `vocabulary.from_path`; default the vocabulary the source carries."""

    out_path = _check_out(out, [src], overwrite)
    with local_checkpoint(src) as local_src:  # a URL source is read from a local copy
        cfg, params = read_source(src_kind, local_src, merge_lora)
        check_finite(flatten(params), f"--src {src}")
        vocabulary = (vocab_files.from_path(vocab) if vocab
                      else find_vocabulary(src_kind, local_src))
        src_step, opt_state = (source_optimizer_state(src_kind, local_src) if dst_kind == "t5x"
                               else (None, None))
        step = step if step is not None else int(src_step or 0)
        _write(dst_kind, cfg, params, out_path, step=step, vocabulary=vocabulary,
               opt_state=opt_state, overwrite=overwrite)
    return cfg, out_path


def average(srcs: list[str], out: str, dst_kind: str = "flanrec", *, overwrite: bool = False,
            step: int | None = None, vocab: str | None = None) -> tuple[T5Config, str]:
    """Write the elementwise mean of the checkpoints `srcs` to `out` (of `dst_kind`)."""

    out_path = _check_out(out, srcs, overwrite)
    with contextlib.ExitStack() as stack:
        local = [stack.enter_context(local_checkpoint(s)) for s in srcs]
        cfg, params = load_for_average(local)
        vocabulary = (vocab_files.from_path(vocab) if vocab else
                      next((v for s in local for v in [find_vocabulary("flanrec", s)] if v),
                           None))
        _write(dst_kind, cfg, params, out_path, step=step or 0, vocabulary=vocabulary,
               overwrite=overwrite)
    return cfg, out_path


def _check_out(out: str, srcs: list[str], overwrite: bool) -> str:
    """Before anything is read: --out is neither an input nor holds one, and may be written
    (new, empty, or a flanrec.convert output with --overwrite)."""
    out_path = storage.normalize(out)
    for src in srcs:
        src_path = storage.normalize(src)
        what = "--src" if len(srcs) == 1 else f"an --average source ({src})"
        if storage.is_within(out_path, src_path):
            raise ValueError(f"--out {out_path} must not be {what} or inside it")
        if storage.is_within(src_path, out_path):
            raise ValueError(f"--out {out_path} must not contain {what}: replacing it would "
                             "delete the input")
    outputs.check_replaceable(out_path, "convert", replace=overwrite,
                              replace_hint=OVERWRITE_HINT)
    return out_path


def _write(dst_kind: str, cfg: T5Config, params: dict[str, Any], out_path: str, *, step: int,
           vocabulary: Any, overwrite: bool, opt_state: Any = None) -> None:
    """Build the output in scratch and publish it (`flanrec.files.outputs.staged_dir`)."""
    with outputs.staged_dir(out_path, "convert", replace=overwrite,
                            replace_hint=OVERWRITE_HINT, record={"to": dst_kind}) as build:
        write_target(dst_kind, cfg, params, Path(build), step=step, vocabulary=vocabulary,
                     opt_state=opt_state)
        make_readable(Path(build))  # others (a serving job, a colleague) read exports too


def summary(cfg: T5Config, src_kind: str, dst_kind: str, out: str | Path) -> str:

    name = match_preset(cfg)
    if name == "custom":
        name = (f"custom(d_model={cfg.d_model}, d_ff={cfg.d_ff}, heads={cfg.num_heads}, "
                f"layers={cfg.num_encoder_layers}/{cfg.num_decoder_layers}, "
                f"vocab={cfg.vocab_size})")
    if cfg.logits_via_embedding:
        name += " with tied output embeddings"
    n = count_params(cfg)
    return f"{src_kind} -> {dst_kind}: {name}, {n:,} params ({n / 1e6:.1f}M) -> {out}"
