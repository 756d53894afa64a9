"""Training: optimizers (first- and second-order), schedules, update steps, epochs, ``fit``,
``gradient_descent``, sweeps and data parallelism. Builds on every layer below the command line."""

from fnn.training.config import TrainConfig

__all__ = ["TrainConfig"]
