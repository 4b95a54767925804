"""flanrec: instruction-tune Flan-T5 as a recommender (JAX/Flax, SeqIO, Orbax)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package import stays free of JAX: api is imported on the first load
    from flanrec.api import FlanT5Model

from flanrec.version import __version__

__all__ = ["__version__", "load"]


def load(path: str, **kwargs: Any) -> FlanT5Model:
    """Load a Flan-T5 model from an HF directory, a T5X checkpoint or a flanrec checkpoint
    (`flanrec.api.load`, imported here only when called)."""
    from flanrec.api import load as _load

    return _load(path, **kwargs)
