"""Amazon review tasks (e.g. `prepare --dataset amazon-2014-Beauty`): same layout as MovieLens.

The gin macro / env var `FLANREC_AMAZON_DATA_DIR` lists prepared dirs,
separated by ":"; nothing is registered by default. amazon-2014-Beauty registers as
`amazon_beauty_*`.
"""

from __future__ import annotations

import os

import gin

from flanrec.data.vocab import gin_macro
from flanrec.files import storage
from tasks import _prepared

DATA_DIR_ENV = "FLANREC_AMAZON_DATA_DIR"


@gin.configurable
def data_dir(path: str | None = None) -> list[str]:
    value = path or gin_macro(DATA_DIR_ENV) or os.environ.get(DATA_DIR_ENV) or ""
    return [p if storage.is_url(p) else os.path.expanduser(p)
            for p in storage.split_path_list(value)]


def register_from_config() -> dict[str, str]:
    return _prepared.register_dirs(data_dir(), source=f"${DATA_DIR_ENV}",
                                   dataset="amazon-beauty")


REGISTERED = register_from_config()
