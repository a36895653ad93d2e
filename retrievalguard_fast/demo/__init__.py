"""The embedded default: scikit-learn's handwritten digits (no download) and a small embedding
network trained under noise, with weights shipped for sigma 0.25 and 0.5 (:mod:`.digits`;
:mod:`.training` is the recipe behind them). ``python -m retrievalguard_fast demo`` certifies it."""

from .digits import DigitsEmbeddingNet, DigitsSplit, default_weights_path, load_default_model, load_digits_split

__all__ = ["DigitsEmbeddingNet", "DigitsSplit", "default_weights_path", "load_default_model", "load_digits_split"]
