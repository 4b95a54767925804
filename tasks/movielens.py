"""MovieLens tasks: everything `flanrec.prepare --dataset ml-*` wrote to the data dir.

Where the data lives is configuration, not code: the gin macro `FLANREC_DATA_DIR` (in the run's
gin file; read when MIXTURE_OR_TASK_MODULE is imported), else `$FLANREC_DATA_DIR`, default
`$FLANREC_CACHE/prepared/ml-100k` (`~/.cache/flanrec/prepared/ml-100k`: where `prepare` and the
quickstart write when given no directory; `flanrec.data.locations`). Several dirs may be
listed, separated by `os.pathsep` (":"; `gs://` URLs stay whole); each registers under the
prefix its prepare.json names (ml-100k -> `ml100k`, ml-1m -> `ml1m`), e.g. `ml100k_seq_seqidx`.
A missing dir registers nothing (so `import tasks` works before `prepare` has run).
"""

from __future__ import annotations

import gin

from flanrec.data import locations
from flanrec.data.vocab import gin_macro
from tasks import _prepared

DATA_DIR_ENV = locations.DATA_DIR_ENV


@gin.configurable
def data_dir(path: str | None = None) -> list[str]:
    """The prepared MovieLens dirs: `path`, else the gin macro FLANREC_DATA_DIR (set in a run's
    gin file, read when MIXTURE_OR_TASK_MODULE is imported), else $FLANREC_DATA_DIR, else
    the default."""
    return locations.configured_data_dirs(path or gin_macro(DATA_DIR_ENV))


def register_from_config() -> dict[str, str]:
    """Register every configured dir that is prepared; prefix -> data dir."""
    if gin_macro(DATA_DIR_ENV):
        source = f"the gin macro {DATA_DIR_ENV}"
    elif locations.env_data_dirs():
        source = f"${DATA_DIR_ENV}"
    else:
        source = f"the default data dir; {DATA_DIR_ENV} is not set"
    return _prepared.register_dirs(data_dir(), source=source)


REGISTERED = register_from_config()
"""prefix -> data dir of what this import registered."""
