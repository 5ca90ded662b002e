"""TESSERA encoders in plain PyTorch: every public family, their selection rules and checkpoints.

`TesseraEncoder` is imported on first use, so code that needs only `model.errors` (a one-off
search) starts without PyTorch."""

__all__ = ["TesseraEncoder"]


def __getattr__(name: str):
    if name == "TesseraEncoder":
        from model.encoder import TesseraEncoder

        return TesseraEncoder
    raise AttributeError(f"module 'model' has no attribute {name!r}")
