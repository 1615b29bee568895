"""zoo: a PyTorch Lightning model zoo for small language models."""

__version__ = "0.1.0"
