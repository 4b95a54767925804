"""The front end every flanrec job shares: quiet logs by default, `--verbose`, one-line errors.

Why one module: a user runs eight jobs (prepare, train, infer, eval, baselines, convert,
ensemble, quickstart) and should meet one behaviour:

* **A user's mistake is one line and exit code 2**: ``flanrec.prepare: error: u.data line
  17, field 'timestamp': expected an integer, got 'abc'``. Anything raised as
  `flanrec.errors.UserError` (or a subclass) counts as diagnosed; every other exception is a
  bug in flanrec and keeps its traceback. ``--verbose`` shows the traceback of a user error
  too.
* **Quiet by default**: TensorFlow, XLA and absl print notices at import and start-up that no
  user can act on (oneDNN, "could not find cuda drivers", cuInit on a CPU machine, seqio's
  "not cached" rate notes, tf.data's partial-cache warnings). They are filtered here, by
  pattern, so that everything else, including warnings a user must act on, still shows.
  ``--verbose`` turns all filtering off and sets the third-party loggers to INFO.

The environment variables TF/XLA read at start-up are set before the job's body runs; no
job module imports TensorFlow at import time (tests/test_jobs_cli.py checks), so they take
effect. TensorFlow itself is imported here, under a file-descriptor-level stderr filter,
because its C++ start-up lines bypass every logging setting.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flanrec.errors import DISK_ERRNOS, UserError, disk_error
from flanrec.files import outputs

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "FLANREC_VERBOSE"
"""`FLANREC_VERBOSE=1` means `--verbose` for every job (the quickstart sets it for its stages
when it is run with --verbose; handy for `tpu_scripts/launch.sh --env=...`)."""
LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"

THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "tensorflow", "seqio", "etils", "clu",
                       "tensorstore", "h5py", "matplotlib", "PIL")

# C++ lines printed to stderr while TensorFlow loads and first looks for GPUs. Each is a
# notice about the build or the machine, never about the user's job.
STDERR_NOISE = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\] oneDNN custom operations are on",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .*rebuild TensorFlow",
    r"\] failed call to cuInit",
    r"\] Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
))

# Python log records of third-party libraries that describe normal operation.
LOG_NOISE = tuple(re.compile(p) for p in (
    r"not cached so using number of input examples instead of preprocessed examples",
    r"has no '[^']*' split, skipping",
    r"does not exist in any task cache directories",
    # gin tries each search path for an included file and logs every miss at ERROR level; a
    # file found on none of them raises, and that error is what the user sees.
    r"^Path not found: ",
))


# gin appends "In call to configurable 'read_table' (<function read_table at 0x...>)" to any
# exception raised inside a configurable: flanrec internals, not the user's input.
_GIN_CALL_CONTEXT = re.compile(r"^In call to configurable '[^']*' \(<.*>\)$")


def one_line(text: object) -> str:
    """A message on one line: its lines joined with '; ' (a traceback-free summary)."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    parts = [p for p in parts if not _GIN_CALL_CONTEXT.match(p)]
    return "; ".join(parts) if parts else type(text).__name__


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not any(p.search(message) for p in LOG_NOISE)


class JobArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (`prog: error: ... (see --help)`, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        job = self.prog.removeprefix("python -m ")
        self.exit(2, f"{job}: error: {one_line(message)} (see --help)\n")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: full third-party logs and tracebacks of user errors."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show TensorFlow/JAX/absl logs and the traceback of errors")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of the JAX jobs (train, infer, eval's inference)."""
    parser.add_argument("--coordinator_address", default=None,
                        help="host:port of process 0, for multi-process runs outside TPU pods")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() with auto-detection "
                             "(TPU pod slices: run the same command on every worker)")


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` as the flags of `add_distributed_flags` ask; nothing
    without them. Call it after gin is configured and before any JAX device query."""
    if not (getattr(args, "coordinator_address", None) or getattr(args, "distributed", False)):
        return
    import jax

    if args.coordinator_address:
        # CPU collectives across processes (no effect on TPU/GPU backends); must be set
        # before the backend starts, so no device query may precede it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    else:
        jax.distributed.initialize()


def quiet_environment(verbose: bool) -> None:
    """Set what TF/XLA read at start-up. A value the user exported is kept, except that
    `--verbose` asks for everything."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        # 2: C++ INFO and WARNING lines off (tf.data's partial-cache notes among them);
        # errors still show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[re.Pattern[str]] = STDERR_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 (what C++ code writes too) and replay it minus `patterns`.

    Replayed on exit even when the block raises, so no real message is lost.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", errors="replace").splitlines(keepends=True):
                if not any(p.search(line) for p in patterns):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_tensorflow(verbose: bool) -> None:
    """Import TensorFlow once, quietly, and keep it off accelerators (JAX owns them; TF only
    reads data). A no-op when TF is already imported (tests, notebooks)."""
    if "tensorflow" in sys.modules:
        return
    ctx = contextlib.nullcontext() if verbose else filtered_stderr()
    with ctx:
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # devices already initialised: too late, harmless
            pass


class _BelowWarning(logging.Filter):
    """Keeps INFO and DEBUG records: the progress stream (stdout)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Makes a later `import tensorflow` (by seqio, tf.io.gfile, ...) in a job that did not
    load TF at start as quiet as `load_tensorflow`: TF's C++ start-up lines are printed while
    the module executes, before any flag or log level of ours could reach them."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders do the rest
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)
            try:  # the first device query prints CUDA notices too; JAX owns accelerators
                module.config.set_visible_devices([], "GPU")
            except (AttributeError, RuntimeError, ValueError):
                pass


def quiet_later_tensorflow(verbose: bool) -> None:
    """Install `_QuietTensorFlowImport` unless TF is imported already (or `verbose`)."""
    if verbose or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def setup_logging(verbose: bool, stream: object = None, error_stream: object = None) -> None:
    """flanrec's loggers at INFO; third-party ones at WARNING minus known noise (INFO and
    unfiltered with `verbose`). INFO lines go to stdout (progress a user may pipe or tee);
    warnings and errors (integrity, convert caveats, the front end's one-line errors) to
    stderr, so they are seen even when stdout is redirected."""
    out = logging.StreamHandler(stream or sys.stdout)
    out.addFilter(_BelowWarning())
    err = logging.StreamHandler(error_stream or sys.stderr)
    err.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, force=True, format=LOG_FORMAT, handlers=[out, err])
    root = logging.getLogger()
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(_NoiseFilter())
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:
        pass


def configure(verbose: bool, tensorflow: bool = True) -> None:
    """Everything a job needs before its body: environment, logging, quiet TF import."""
    quiet_environment(verbose)
    setup_logging(verbose)
    if tensorflow:
        load_tensorflow(verbose)
    else:
        quiet_later_tensorflow(verbose)


def report_user_error(prog: str, error: BaseException, verbose: bool) -> int:
    """Print `prog: error: message` (traceback first with `verbose`); return exit code 2."""
    if verbose:
        traceback.print_exception(error)
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
    return int(getattr(error, "exit_code", 2) or 2)


def run(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
        *, tensorflow: bool = True,
        user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a job's `body(argv)` behind the shared front end; returns the exit code.

    `prog` names the job in error lines (`flanrec.prepare`). `tensorflow=False` for jobs that
    never touch TF (eval, convert). `user_errors`: exception types this job has always
    reported as the user's (its messages name the file or flag), in addition to UserError.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in args or os.environ.get(VERBOSE_ENV) == "1"
    wants_help = "-h" in args or "--help" in args
    configure(verbose, tensorflow=tensorflow and not wants_help)

    try:
        with _sigterm_exits():
            return int(body(args) or 0)
    except UserError as e:
        return report_user_error(prog, e, verbose)
    except user_errors as e:
        return report_user_error(prog, e, verbose)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        return report_user_error(prog, disk_error(e, f"cannot write{where}"), verbose)
    finally:
        outputs.release_locks()


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (what `kill`, schedulers and preemption send) ends the job as an exception
    (SystemExit 143) instead of at once, so every `finally` runs: run locks are released and
    scratch directories removed. Only when SIGTERM has its default action and this is the
    main thread; a job with its own handler (training saves a checkpoint first) installs it
    over this one and restores it afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        del frame
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
