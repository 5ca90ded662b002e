"""TESSERA encoders in plain PyTorch: every public family, their selection rules and checkpoints."""

from model.encoder import TesseraEncoder

__all__ = ["TesseraEncoder"]
