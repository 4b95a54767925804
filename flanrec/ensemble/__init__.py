"""Ensembles over templates, checkpoints and runs (fusion rules in `fusion`)."""
