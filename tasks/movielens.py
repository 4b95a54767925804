"""MovieLens tasks: everything `flanrec.prepare --dataset ml-*` wrote to the data dir.

Where the data lives is configuration, not code: the gin macro `FLANREC_DATA_DIR` (in the run's
gin file; read when MIXTURE_OR_TASK_MODULE is imported), else `$FLANREC_DATA_DIR`, default
`~/.cache/flanrec/prepared/ml-100k`. Several dirs may be listed, separated by `os.pathsep`
(":"; `gs://` URLs stay whole); each registers under the prefix its prepare.json names
(ml-100k -> `ml100k`, ml-1m -> `ml1m`), e.g. `ml100k_seq_seqidx`.
A missing dir registers nothing (so `import tasks` works before `prepare` has run).
"""

from __future__ import annotations

import os

import gin

from flanrec import storage
from flanrec.data.vocab import gin_macro
from tasks import _prepared

DATA_DIR_ENV = "FLANREC_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/flanrec/prepared/ml-100k"


@gin.configurable
def data_dir(path: str | None = None) -> list[str]:
    """The prepared MovieLens dirs: `path`, else the gin macro FLANREC_DATA_DIR (set in a run's
    gin file, read when MIXTURE_OR_TASK_MODULE is imported), else $FLANREC_DATA_DIR, else
    the default."""
    value = (path or gin_macro(DATA_DIR_ENV) or os.environ.get(DATA_DIR_ENV)
             or DEFAULT_DATA_DIR)
    return [p if storage.is_url(p) else os.path.expanduser(p)
            for p in storage.split_path_list(value)]


def register_from_config() -> dict[str, str]:
    """Register every configured dir that is prepared; prefix -> data dir."""
    return _prepared.register_dirs(data_dir())


REGISTERED = register_from_config()
"""prefix -> data dir of what this import registered."""
