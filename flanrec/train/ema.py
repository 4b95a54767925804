"""An exponential moving average of the weights, kept while training (EMA_DECAY).

Weight averaging without a second run: after every optimizer update the train step folds the
new weights into an average, ``ema <- decay * ema + (1 - decay) * params``, starting from the
weights training starts from. The average lives in the train state beside the weights (same
tree, same shardings, float32 whatever the weights' dtype, so small steps are not rounded
away), is donated and updated inside the one jitted step, and is saved as its own Orbax item
(``ema_params``) with the checkpoint's meta naming it as the parameters inference uses. Rank
validation, the best-checkpoint choice, ``flanrec.infer``, ``flanrec.convert`` and
``flanrec.load`` then all see the average; resuming restores it exactly, so an interrupted
run continues the same average bit for bit.

Off by default (``EMA_DECAY = 0.0``): the state then carries no average and checkpoints are
unchanged. Typical decays are 0.999 to 0.9999, i.e. an average over the last ~1,000 to
~10,000 steps; the average starts at the initial weights, so a run much shorter than
``1 / (1 - decay)`` steps still remembers them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flanrec.errors import ConfigError


def check_decay(decay: float) -> float:
    """EMA_DECAY as a float in [0, 1); 0 turns the average off. Else one-line ConfigError."""
    try:
        value = float(decay)
    except (TypeError, ValueError):
        raise ConfigError(f"EMA_DECAY must be a number in [0, 1), got {decay!r}") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"EMA_DECAY must be in [0, 1) (0 turns the moving average off; "
                          f"0.999 averages over ~1,000 steps), got {decay!r}")
    return value


def init(params: Any) -> Any:
    """The average before any update: a float32 copy of the weights (a copy, never the same
    buffers, since the train state is donated to every step)."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)


def update(ema: Any, params: Any, decay: float) -> Any:
    """One step of the average: ``decay * ema + (1 - decay) * params`` in float32."""
    keep, take = float(decay), 1.0 - float(decay)
    return jax.tree.map(lambda e, p: keep * e + take * p.astype(jnp.float32), ema, params)
