"""Model registry (the `model=` config group): grayscale in, logits out, Opacus-compatible."""

from src.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
