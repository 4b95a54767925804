"""Import-time registration of prepared dirs, shared by tasks/movielens.py and tasks/amazon.py.

Failing soft here is deliberate: `import tasks` must work on a machine where a dir is not
prepared yet or no vocabulary is available; the reason is logged, and calling
`tasks.register_prepared` directly raises it.
"""

from __future__ import annotations

import json
import logging
import os

import seqio
import tensorflow as tf

from flanrec.data import layout, prepared_tasks, seqio_tasks
from flanrec.data.vocab import VocabularyNotFoundError

log = logging.getLogger("flanrec.tasks")

REGISTERED: dict[str, str] = {}
"""Every prefix registered in this process -> its data dir."""


def task_prefix(data_dir: str) -> str:
    """The prefix prepare.json records (e.g. `ml100k`)."""
    with tf.io.gfile.GFile(os.path.join(data_dir, layout.PREPARE_FILE)) as f:
        doc = json.load(f)
    prefix = doc.get("task_prefix")
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"{data_dir}/{layout.PREPARE_FILE}: field 'task_prefix' missing")
    return prefix


def register_prepared(data_dir: str, prefix: str | None = None,
                      vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """Register the tasks and `{prefix}_rec_mix` mixtures of a prepared dir; returns names.

    `prefix` defaults to the one prepare.json records (`ml100k` for ml-100k); `vocabulary`
    to `flanrec.data.vocab.vocabulary_for_prepared(data_dir)`.
    """
    prefix = prefix or task_prefix(data_dir)
    names = prepared_tasks.register_prepared(data_dir, prefix, vocabulary)
    names += prepared_tasks.register_rec_mixture(data_dir, prefix)
    REGISTERED[prefix] = data_dir
    seqio_tasks.log_registered(names)
    return names


def unregister_prepared(prefix: str) -> list[str]:
    """Remove every task and mixture named `{prefix}_*` and forget the prefix; returns names.

    The seqio registries are process-global: a notebook or test that registered a scratch dir
    calls this so later mixtures (and the Flan bridge's vocabulary choice) do not see it.
    """
    import seqio

    removed = []
    for registry in (seqio.MixtureRegistry, seqio.TaskRegistry):
        for name in list(registry.names()):
            if name.startswith(prefix + "_"):
                registry.remove(name)
                removed.append(name)
    REGISTERED.pop(prefix, None)
    return removed


def register_dirs(dirs: list[str], source: str = "$FLANREC_DATA_DIR",
                  dataset: str = "ml-100k") -> dict[str, str]:
    """Register each prepared dir that exists; log (not raise) why one is skipped.

    A dir without prepared data is a warning naming it, what chose it (`source`) and the
    command that prepares it, since every later step would fail on it.
    """
    out: dict[str, str] = {}
    for d in dirs:
        if not tf.io.gfile.exists(os.path.join(d, layout.PREPARE_FILE)):
            log.warning("flanrec tasks: no prepared data in %s (%s), nothing registered from "
                        "it; prepare it with `python -m flanrec.prepare --dataset %s "
                        "--train_vocab --out %s`", d, source, dataset, d)
            continue
        try:
            prefix = task_prefix(d)
            register_prepared(d, prefix)
        except (VocabularyNotFoundError, ValueError) as e:  # no vocabulary, a damaged dir
            log.warning("flanrec tasks from %s not registered: %s", d, e)
            continue
        out[prefix] = d
    return out
