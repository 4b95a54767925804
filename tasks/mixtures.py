"""Mixtures across task groups. `{prefix}_rec_mix` itself is registered with its dir's tasks.

`{prefix}_rec_flan_mix` keeps Flan-T5's general instruction following while it learns to
recommend: `{prefix}_rec_mix` plus the Flan 2022 submix, when a mixture named
`flan2022_submix` is registered in the process (T5X users with FLAN installed import it
before `tasks`), and/or the `flan2022_bridge` task over exported Flan data.
"""

from __future__ import annotations

import logging

import gin
import seqio

from flanrec.data import seqio_tasks
from tasks import _prepared, flan

log = logging.getLogger("flanrec.tasks")

FLAN_SUBMIX = "flan2022_submix"


@gin.configurable
def register_rec_flan_mix(
    prefix: str = "ml100k",
    flan_fraction: float = 0.2,
    flan_providers: tuple[str, ...] = (FLAN_SUBMIX, flan.BRIDGE_TASK),
) -> str | None:
    """Register `{prefix}_rec_flan_mix`; returns its name, or None if no Flan data exists.

    `flan_fraction` of the examples come from the Flan providers that are registered
    (shared equally), the rest from `{prefix}_rec_mix`. Raises ValueError when a provider
    tokenizes with another vocabulary (mixing them would be silently wrong).
    """
    if not 0.0 < flan_fraction < 1.0:
        raise ValueError(f"flan_fraction must be in (0, 1), got {flan_fraction}")
    rec = seqio.get_mixture_or_task(f"{prefix}_rec_mix")
    registered = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
    present = [p for p in flan_providers if p in registered]
    if not present:
        return None
    for p in present:
        other = seqio.get_mixture_or_task(p)
        if not seqio_tasks.vocabularies_match(rec, other):
            raise ValueError(
                f"{p} uses {seqio_tasks.describe_vocabulary(other)} but {prefix}_rec_mix uses "
                f"{seqio_tasks.describe_vocabulary(rec)}; prepare the rec data with the same "
                "vocabulary (FLANREC_VOCAB / gin get_vocabulary.path) and an indexing without "
                "new tokens, or register the Flan data with the rec vocabulary"
            )
    name = f"{prefix}_rec_flan_mix"
    members = [(f"{prefix}_rec_mix", 1.0 - flan_fraction)]
    members += [(p, flan_fraction / len(present)) for p in present]
    seqio_tasks.register_mixture(name, members)
    return name


REGISTERED: list[str] = []
for _prefix in list(_prepared.REGISTERED):
    try:
        _name = register_rec_flan_mix(_prefix)
    except (ValueError, KeyError) as _e:
        log.warning("%s_rec_flan_mix not registered: %s", _prefix, _e)
        continue
    if _name:
        REGISTERED.append(_name)
