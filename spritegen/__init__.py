"""spritegen: train, evaluate, compare and tune text-to-sprite generators."""

__version__ = "0.1.0"
