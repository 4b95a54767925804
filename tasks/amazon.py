"""Amazon review tasks (e.g. `prepare --dataset amazon-2014-Beauty`): same layout as MovieLens.

`$FLANREC_AMAZON_DATA_DIR` (or gin `tasks.amazon.data_dir.path`) lists prepared dirs,
separated by ":"; nothing is registered by default. amazon-2014-Beauty registers as
`amazon_beauty_*`.
"""

from __future__ import annotations

import os

import gin

from tasks import _prepared

DATA_DIR_ENV = "FLANREC_AMAZON_DATA_DIR"


@gin.configurable
def data_dir(path: str | None = None) -> list[str]:
    value = path or os.environ.get(DATA_DIR_ENV) or ""
    return [os.path.expanduser(p) for p in value.split(os.pathsep) if p]


def register_from_config() -> dict[str, str]:
    return _prepared.register_dirs(data_dir())


REGISTERED = register_from_config()
