"""Flan-T5 model: config, presets and the Flax network."""

from flanrec.model.config import PRESETS, T5Config, get_preset
from flanrec.model.network import Transformer

__all__ = ["PRESETS", "T5Config", "Transformer", "get_preset"]
