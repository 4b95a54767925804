"""`python -m flanrec.convert`: move Flan-T5 weights between HF, T5X and flanrec checkpoints.

    python -m flanrec.convert --from hf  --src google/flan-t5-small-dir --out ckpt/flan-small
    python -m flanrec.convert --from t5x --src gs-copy/checkpoint_1198000 --out ckpt/flan-small
    python -m flanrec.convert --from flanrec --src MODEL_DIR --out hf-out --to hf
    python -m flanrec.convert --from flanrec --src LORA_RUN --merge_lora --out hf-out --to hf
    python -m flanrec.convert --average RUN_A RUN_B/checkpoint_2000 --out soup [--to hf]

`--merge_lora` folds a LoRA run's adapters into its frozen backbone (W + alpha/r · A B), so
the result is a plain Flan-T5 checkpoint every exporter writes unchanged. `--average` writes
the elementwise mean of several checkpoints ("model soup", `flanrec.convert.average`).

Every conversion goes through the one parameter table (`common.param_specs`), so the output
is checked before it is written. Output is assembled under a temporary name next to `--out`
and moved into place at the end: an interrupted run leaves nothing at `--out`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from flanrec import jobs
from flanrec.convert.common import count_params
from flanrec.model.config import T5Config

SOURCES = ("hf", "t5x", "flanrec")
TARGETS = ("flanrec", "hf", "t5x")
SPIECE_FILE = "spiece.model"


def read_source(kind: str, src: str, merge_lora: bool = False) -> tuple[T5Config, dict[str, Any]]:
    """(config, float32 numpy params) from an HF dir, a T5X checkpoint or a flanrec checkpoint.

    A flanrec checkpoint of a LoRA run needs `merge_lora`; one of a prompt run is refused
    (a plain T5 checkpoint has no place for a soft prompt)."""
    if kind == "hf":
        from flanrec.convert.hf import import_hf

        return import_hf(src)
    if kind == "t5x":
        from flanrec.convert.t5x import import_t5x

        return import_t5x(src)
    if kind == "flanrec":
        from flanrec.checkpoints import load_params
        from flanrec.peft import checkpoint as peft_checkpoint
        from flanrec.peft.config import lora_of, prompt_of

        if peft_checkpoint.is_adapter_checkpoint(src):
            adapted, _, _ = peft_checkpoint.read_adapters(src)
            if prompt_of(adapted) is not None:
                raise ValueError(f"{src}: a soft-prompt checkpoint cannot be written as a plain "
                                 "T5 checkpoint; load it with flanrec.api.load instead")
            if lora_of(adapted) is not None and not merge_lora:
                raise ValueError(f"{src}: a LoRA checkpoint (adapters only): pass --merge_lora "
                                 "to fold them into the backbone")
            return peft_checkpoint.load(src, merge_lora=True)
        return load_params(src)
    raise ValueError(f"unknown source kind {kind!r}; expected one of {SOURCES}")


def find_vocabulary(kind: str, src: str) -> Path | None:
    """The SentencePiece model shipped with the source, carried along to HF/flanrec outputs."""
    candidates = [Path(src) / SPIECE_FILE]
    if kind == "flanrec":
        from flanrec.checkpoints import resolve_checkpoint

        try:
            candidates.append(Path(os.fspath(resolve_checkpoint(src))) / SPIECE_FILE)
        except (ValueError, FileNotFoundError):
            pass
    return next((c for c in candidates if c.is_file()), None)


def write_target(kind: str, cfg: T5Config, params: dict[str, Any], out: Path, *,
                 step: int, spiece: Path | None) -> None:
    """Write one output of `kind` at `out` (a path that does not exist yet)."""
    if kind == "flanrec":
        from flanrec.checkpoints import save_params_checkpoint

        save_params_checkpoint(cfg, params, out)
        if spiece is not None:
            shutil.copyfile(spiece, out / SPIECE_FILE)
    elif kind == "hf":
        from flanrec.convert.hf import export_hf

        export_hf(cfg, params, out, spiece_model=spiece)
    elif kind == "t5x":
        from flanrec.convert.t5x import write_t5x_checkpoint

        write_t5x_checkpoint(params, out, step)
    else:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGETS}")


def _install(built: Path, out: Path, overwrite: bool) -> None:
    """Move the finished output into place; an old `--out` is removed only after that."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite)")
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
    os.replace(built, out)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def convert(src_kind: str, src: str, out: str, dst_kind: str = "flanrec", *,
            overwrite: bool = False, step: int = 0, merge_lora: bool = False
            ) -> tuple[T5Config, Path]:
    """Convert `src` (of `src_kind`) to `out` (of `dst_kind`); returns (config, out path)."""
    out_path = _check_out(out, [src], overwrite)
    cfg, params = read_source(src_kind, src, merge_lora)
    spiece = find_vocabulary(src_kind, src)
    _write(dst_kind, cfg, params, out_path, step=step, spiece=spiece, overwrite=overwrite)
    return cfg, out_path


def average(srcs: list[str], out: str, dst_kind: str = "flanrec", *, overwrite: bool = False,
            step: int = 0) -> tuple[T5Config, Path]:
    """Write the elementwise mean of the checkpoints `srcs` to `out` (of `dst_kind`)."""
    from flanrec.convert.average import load_for_average

    out_path = _check_out(out, srcs, overwrite)
    cfg, params = load_for_average(srcs)
    spiece = next((v for s in srcs for v in [find_vocabulary("flanrec", s)] if v), None)
    _write(dst_kind, cfg, params, out_path, step=step, spiece=spiece, overwrite=overwrite)
    return cfg, out_path


def _check_out(out: str, srcs: list[str], overwrite: bool) -> Path:
    out_path = Path(out).absolute()
    if out_path.exists() and not overwrite and (not out_path.is_dir() or any(out_path.iterdir())):
        raise FileExistsError(f"{out_path}: exists and is not empty (pass --overwrite)")
    for src in srcs:
        src_path = Path(src).absolute()
        if out_path == src_path or src_path in out_path.parents:
            what = "--src" if len(srcs) == 1 else f"an --average source ({src})"
            raise ValueError(f"--out {out_path} must not be {what} or inside it")
    return out_path


def _write(dst_kind: str, cfg: T5Config, params: dict[str, Any], out_path: Path, *, step: int,
           spiece: Path | None, overwrite: bool) -> None:
    """Build the output in a scratch dir next to `out_path`, then move it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        built = scratch / "out"
        write_target(dst_kind, cfg, params, built, step=step, spiece=spiece)
        _install(built, out_path, overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def summary(cfg: T5Config, src_kind: str, dst_kind: str, out: Path) -> str:
    from flanrec.convert.t5x import match_preset

    name = match_preset(cfg)
    if name == "custom":
        name = (f"custom(d_model={cfg.d_model}, d_ff={cfg.d_ff}, heads={cfg.num_heads}, "
                f"layers={cfg.num_encoder_layers}/{cfg.num_decoder_layers}, "
                f"vocab={cfg.vocab_size})")
    n = count_params(cfg)
    return f"{src_kind} -> {dst_kind}: {name}, {n:,} params ({n / 1e6:.1f}M) -> {out}"


def cli(argv: list[str]) -> int:
    """The job: convert or average checkpoints, then print a one-line summary."""
    parser = jobs.JobArgumentParser(
        prog="python -m flanrec.convert",
        description="Convert Flan-T5 weights between Hugging Face, T5X and flanrec checkpoints.")
    parser.add_argument("--from", dest="src_kind", choices=SOURCES,
                        help="source format (not with --average: sources are auto-detected)")
    parser.add_argument("--src",
                        help="HF model dir | T5X checkpoint_N or model dir | flanrec checkpoint")
    parser.add_argument("--average", nargs="+", metavar="CKPT",
                        help="write the elementwise mean of these checkpoints (model soup; any "
                             "format load_params_any reads, one shared config)")
    parser.add_argument("--merge_lora", action="store_true",
                        help="--from flanrec of a LoRA run: fold W + alpha/r·A B into the "
                             "backbone so the output is a plain Flan-T5 checkpoint")
    parser.add_argument("--out", required=True, help="output directory (must not exist or be "
                        "empty, unless --overwrite)")
    parser.add_argument("--to", dest="dst_kind", default="flanrec", choices=TARGETS,
                        help="output format (default: flanrec params-only checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (only once the new output is complete)")
    parser.add_argument("--step", type=int, default=0,
                        help="step number of the written T5X checkpoint_N (--to t5x)")
    jobs.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.average and (args.src or args.src_kind or args.merge_lora):
        parser.error("--average takes the checkpoints itself: no --from/--src/--merge_lora")
    if not args.average and not (args.src and args.src_kind):
        parser.error("--from and --src are required (or --average CKPT CKPT ...)")
    if args.average:
        cfg, out = average(args.average, args.out, args.dst_kind, overwrite=args.overwrite,
                           step=args.step)
    else:
        cfg, out = convert(args.src_kind, args.src, args.out, args.dst_kind,
                           overwrite=args.overwrite, step=args.step, merge_lora=args.merge_lora)
    src_desc = f"average of {len(args.average)}" if args.average else args.src_kind
    print(summary(cfg, src_desc, args.dst_kind, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError / FileNotFoundError / FileExistsError: the converters' diagnosed messages
    # (missing files, parameter shapes, refused formats), the user's since the CLI existed.
    return jobs.run("flanrec.convert", cli, argv, tensorflow=False,
                    user_errors=(ValueError, FileNotFoundError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
