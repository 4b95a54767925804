"""`python -m flanrec.prepare`'s command line: flags -> PrepareOptions -> `prepare.prepare`.

Kept apart from the job (`flanrec.prepare`) so that the job reads as what it does, and
notebooks and tests that call `prepare.prepare(opts)` never build an argument parser. The
flags, messages and exit codes are those of `python -m flanrec.prepare`, which runs `main`
here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from flanrec.data import layout, locations
from flanrec.data.sources import table  # noqa: F401 - registers read_table with gin
from flanrec.errors import UserError
from flanrec.files import outputs
from flanrec.frontend import jobs
from flanrec.frontend.argtypes import float_range, int_range, nonnegative_int, positive_int
from flanrec.frontend.gin_cli import bindings_from_flags
from flanrec.prepare.job import FAMILIES, INDEX_SUFFIX, prepare
from flanrec.prepare.options import DUPLICATE_POLICIES, PrepareOptions, default_cache_dir


def default_out(dataset: str) -> str:
    """`--out` when none is given: the one default data dir (flanrec.data.locations).

    `$FLANREC_DATA_DIR` is used only when it holds nothing or the same dataset: a default
    must never replace another dataset's prepared data.
    """
    out = locations.default_data_dir(dataset)
    info = os.path.join(out, layout.PREPARE_FILE)
    if locations.env_data_dirs() and os.path.exists(info):
        try:
            with open(info, encoding="utf-8") as f:
                held = json.load(f).get("dataset")
        except (OSError, ValueError):
            held = None
        if held != dataset:
            raise UserError(f"{locations.DATA_DIR_ENV}={out} holds prepared {held!r}, not "
                            f"{dataset!r}; pass --out DIR for {dataset}")
    return out


def list_tasks(data_dirs: Sequence[str] = ()) -> list[str]:
    """Registered seqio task and mixture names after `import tasks` (+ given prepared dirs)."""
    import seqio

    import tasks

    for d in data_dirs:
        tasks.register_prepared(d)
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m flanrec.prepare` (the job's options plus CSV reading)."""
    p = jobs.JobArgumentParser(
        prog="python -m flanrec.prepare",
        description="Prepare a recommendation dataset as SeqIO instruction tasks (offline).",
    )
    p.add_argument("--dataset", help="ml-100k, ml-1m, ml-20m, amazon-2014-<Cat>, "
                   "amazon-beauty, csv, parquet, sequences (one line per user: user item_1 ... "
                   "item_n, oldest first), ...")
    p.add_argument("--out", help="output directory (written atomically; an existing one is "
                   "replaced only if flanrec.prepare wrote it); default "
                   f"${locations.DATA_DIR_ENV} if set, else "
                   f"{locations.default_prepared_dir('DATASET')}")
    p.add_argument("--raw_dir",
                   help="raw files (skips fetching); required for csv/parquet/sequences")
    p.add_argument("--cache_dir", default=default_cache_dir(),
                   help="fetch cache (default $FLANREC_CACHE or ~/.cache/flanrec)")
    p.add_argument("--indexing", default="sequential",
                   help="comma list of " + "|".join(INDEX_SUFFIX) + " (first one is primary)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_shards", type=positive_int, default=2,
                   help="TFRecord shards per split (>= 1)")
    p.add_argument("--train_vocab", action="store_true",
                   help="train a small SentencePiece model on the task text (vocab/spm.model)")
    p.add_argument("--vocab_size", type=positive_int, default=4000)
    p.add_argument("--max_history", type=positive_int, default=50,
                   help="items of history a model input holds (>= 1)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seqrec_window", type=positive_int, default=40,
                   help="seqrec: item targets per training example (decoder positions)")
    p.add_argument("--seqrec_encoder_items", type=nonnegative_int, default=10,
                   help="seqrec: items before the window that the encoder reads")
    p.add_argument("--seqrec_tilings", type=positive_int, default=2,
                   help="seqrec: shifted cuts of each sequence into windows (each training "
                   "item is a target this many times, in different contexts)")
    p.add_argument("--seqrec_item_text", type=nonnegative_int, default=0, metavar="CHARS",
                   help="seqrec: write each encoder item as 'ID (title, year; genres)', at most "
                   "CHARS characters of text per item (e.g. 64; 0, the default: IDs only). "
                   "Data without item text keeps IDs only, with a note")
    p.add_argument("--seqrec_profile", action="store_true",
                   help="seqrec: put the user's profile (age, gender, occupation) in the "
                   "instruction. Data without user attributes keeps IDs only, with a note")
    p.add_argument("--no_item_pieces", action="store_true",
                   help="with --train_vocab: do not force every item ID to be one piece")
    p.add_argument("--num_candidates", type=int_range(2), default=20,
                   help="direct family: options per question, the target included (>= 2, and at "
                   "most 1 + the fewest items a user has not interacted with)")
    p.add_argument("--kcore", type=positive_int, default=None,
                   help="k-core filter (e.g. 5 for Amazon)")
    p.add_argument("--min_rating", type=float_range(float32=True), default=None,
                   help="keep interactions rated >= this (default: all)")
    p.add_argument("--duplicates", default="last", choices=DUPLICATE_POLICIES,
                   help="rows with the same user, item and timestamp (they would make one "
                   "interaction the validation and the test item): last = keep one, with the "
                   "last row's rating (default); first = the first row's; refuse = stop and "
                   "name them. What was collapsed is printed on stderr")
    p.add_argument("--task_prefix", default=None, help="default: from the dataset (ml100k)")
    p.add_argument("--offline", action="store_true", help="never download anything")
    p.add_argument("--no_unseen_eval", action="store_true",
                   help="skip the test_unseen split (held-out templates)")
    p.add_argument("--no_overwrite", action="store_true",
                   help="fail (before any work) if --out exists and is not empty")
    p.add_argument("--semantic_encoder", default=None, metavar="CHECKPOINT",
                   help="semantic indexing: embed item text (title, year, genres, ...) with "
                   "this T5 checkpoint's encoder (HF dir, T5X or flanrec checkpoint), "
                   "mean-pooled")
    p.add_argument("--semantic_encoder_vocab", default=None, metavar="SPM",
                   help="its SentencePiece model (default: the checkpoint dir's spiece.model, "
                   "then $FLANREC_VOCAB); a prepared dir means its vocab/spm.model")
    p.add_argument("--semantic_embeddings", default=None, metavar="FILE.npy",
                   help="semantic indexing: user-supplied item embeddings .npy (rows in "
                   "catalogue order, or see --semantic_embedding_items). Without this or "
                   "--semantic_encoder: TF-IDF of title/year/genres")
    p.add_argument("--semantic_embedding_items", default=None, metavar="FILE.json",
                   help=".json list / .txt lines naming each embeddings row's item id")
    p.add_argument("--semantic_batch_size", type=positive_int, default=64)
    p.add_argument("--semantic_max_length", type=int_range(2), default=128,
                   help="item text tokens fed to the encoder (EOS included)")
    p.add_argument("--add_stats", default=None, metavar="DIR",
                   help="measure what runs derive their 'auto' settings from (token lengths, "
                   "vocabulary size, example counts) for the prepared dir DIR and record them "
                   "in its metadata file, e.g. for a dir an older flanrec prepared; nothing "
                   "else changes")
    p.add_argument("--list_tasks", action="store_true",
                   help="print registered task and mixture names (after `import tasks`; "
                   "with --out, that dir is registered too) and exit")
    g = p.add_argument_group(
        "reading --dataset csv|parquet (what is not given here comes from gin read_table.*, "
        "then the defaults: ',' with a header naming user_id, item_id, timestamp)")
    g.add_argument("--delimiter", default=None,
                   help="field separator: ',', ';', '|', or tab as '\\t' or 'tab'")
    g.add_argument("--header", dest="header", action="store_true", default=None,
                   help="the first line names the columns (default)")
    g.add_argument("--no_header", dest="header", action="store_false",
                   help="no header line: name the columns with --columns")
    g.add_argument("--columns", default=None, metavar="NAME,NAME,...",
                   help="column names of a file without a header, in file order")
    g.add_argument("--user_col", default=None, help="column of the user id (user_id)")
    g.add_argument("--item_col", default=None, help="column of the item id (item_id)")
    g.add_argument("--time_col", default=None, help="column of the integer timestamp "
                   "(timestamp)")
    g.add_argument("--rating_col", default=None,
                   help="column of the rating; default: a column named rating/score/stars "
                   "if there is one; 'none' reads no ratings")
    g.add_argument("--title_col", default=None,
                   help="column of the item title, in the log itself or in --items_file "
                   "(title)")
    g.add_argument("--items_file", default=None,
                   help="CSV/Parquet of item metadata (the item id column and --title_col)")
    g.add_argument("--encoding", default=None, help="text encoding of the file (utf-8)")
    g.add_argument("--gin_file", action="append", default=[],
                   help="gin file binding read_table.* (repeatable)")
    g.add_argument("--gin_bindings", action="append", default=[],
                   help="raw gin binding, e.g. \"read_table.delimiter = ';'\" (repeatable); "
                   "--gin.NAME=VALUE works too")
    jobs.add_verbose_flag(p)
    return p


def table_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The read_table keywords the user gave on the command line (nothing else, so gin
    bindings still apply to the rest). Refuses options that cannot work, by flag name."""
    out: dict[str, Any] = {}
    if args.delimiter is not None:
        d = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(args.delimiter, args.delimiter)
        if len(d) != 1:
            raise UserError(f"--delimiter must be one character (or '\\t' / 'tab'), got "
                            f"{args.delimiter!r}")
        out["delimiter"] = d
    if args.columns is not None:
        names = [c.strip() for c in args.columns.split(",")]
        if not all(names) or len(set(names)) != len(names):
            raise UserError(f"--columns must be distinct, non-empty names, got {args.columns!r}")
        if args.header:
            raise UserError("--columns names the columns of a file without a header; it "
                            "cannot go with --header")
        out["column_names"] = names
        out["header"] = False
    elif args.header is False:
        raise UserError("--no_header needs --columns NAME,NAME,... (the column names in "
                        "file order)")
    elif args.header is not None:
        out["header"] = True
    for flag, key in (("user_col", "user_col"), ("item_col", "item_col"),
                      ("time_col", "timestamp_col"), ("title_col", "title_col"),
                      ("encoding", "encoding"), ("items_file", "items_path")):
        value = getattr(args, flag)
        if value is not None:
            out[key] = value
    if args.rating_col is not None:
        out["rating_col"] = "" if args.rating_col.lower() == "none" else args.rating_col
    if "encoding" in out:
        import codecs

        try:
            codecs.lookup(out["encoding"])
        except LookupError:
            raise UserError(f"--encoding {out['encoding']!r}: unknown encoding (e.g. utf-8, "
                            "latin-1, cp1252)") from None
    return out


def configure_table_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parse gin files/bindings for the table reader (read_table.* ...), as the other jobs
    take them; a misspelled name fails here with gin's message."""
    import gin

    gin.clear_config()
    for path in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(list(files), list(bindings))


@outputs.releases_locks
def cli(argv: list[str]) -> int:
    """Parse `argv` and run the job; raises UserError (what `main` turns into exit code 2)."""

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = bindings_from_flags(parser, rest, args.gin_bindings)
    table_options = table_options_from_args(args)
    if args.gin_file or bindings:
        configure_table_gin(args.gin_file, bindings)
    if args.list_tasks:
        # When a searched dir holds no prepared data, `import tasks` has said so (a warning
        # naming the dir and the command that prepares it).
        for name in list_tasks([args.out] if args.out else []):
            print(name)
        return 0
    if args.add_stats:
        from flanrec.prepare import stats  # lazy: TF + seqio, as the job's own

        stats.add_stats(args.add_stats)
        return 0
    if not args.dataset:
        build_parser().error("--dataset is required (or --list_tasks, --add_stats)")
    out = args.out or default_out(args.dataset)
    opts = PrepareOptions(
        dataset=args.dataset, out=out, raw_dir=args.raw_dir, cache_dir=args.cache_dir,
        indexing=tuple(m.strip() for m in args.indexing.split(",") if m.strip()),
        seed=args.seed, num_shards=args.num_shards, train_vocab=args.train_vocab,
        vocab_size=args.vocab_size, max_history=args.max_history,
        families=tuple(f.strip() for f in args.families.split(",") if f.strip()),
        seqrec_window=args.seqrec_window, seqrec_encoder_items=args.seqrec_encoder_items,
        seqrec_tilings=args.seqrec_tilings, seqrec_item_text=args.seqrec_item_text,
        seqrec_profile=args.seqrec_profile, item_pieces=not args.no_item_pieces,
        num_candidates=args.num_candidates, kcore=args.kcore, min_rating=args.min_rating,
        duplicates=args.duplicates,
        task_prefix=args.task_prefix, allow_download=not args.offline,
        unseen_eval=not args.no_unseen_eval, overwrite=not args.no_overwrite,
        semantic_encoder=args.semantic_encoder,
        semantic_encoder_vocab=args.semantic_encoder_vocab,
        semantic_embeddings=args.semantic_embeddings,
        semantic_embedding_items=args.semantic_embedding_items,
        semantic_batch_size=args.semantic_batch_size,
        semantic_max_length=args.semantic_max_length,
        table_options=table_options,
    )
    prepare(opts)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The job's exit code (0, or jobs.run's for a user error / crash), as `python -m` gives."""
    return jobs.run("flanrec.prepare", cli, argv)


if __name__ == "__main__":
    sys.exit(main())
