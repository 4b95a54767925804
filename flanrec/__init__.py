"""flanrec: instruction-tune Flan-T5 as a recommender (JAX/Flax, SeqIO, Orbax)."""

__version__ = "0.1.0"


def load(path: str, **kwargs):  # noqa: ANN201 - re-exported from flanrec.api
    """Load a Flan-T5 model from an HF directory, a T5X checkpoint or a flanrec checkpoint."""
    from flanrec.api import load as _load

    return _load(path, **kwargs)
