"""flanrec's version, in a module of its own: the checkpoint and output-marker writers record
it, and importing it from the package root would tie them into a circle through
`flanrec.load` (which imports the API, which loads checkpoints)."""

__version__ = "0.1.0"
