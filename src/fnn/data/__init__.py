"""Datasets as numpy arrays: the built-in loaders (:mod:`fnn.data.datasets`), the one place
splits are made and statistics fitted (:mod:`fnn.data.splits`), and your own CSV/NPZ files
(:mod:`fnn.data.tables`). ``fnn.data.load``, ``fnn.data.validation_split`` and the loaders are
importable from here, as before the subpackages."""

from fnn.data.datasets import (DATASETS, MNIST_FILES, MNIST_URL, breast_cancer, diabetes, digits, download, load,
                               mnist, mnist1d, moons, read_idx, sine, spirals, xor)
from fnn.data.tables import as_binary
from fnn.data.splits import (Dataset, as_binary_targets, check_data, split_rows, split_standardise, standardise,
                             validation_split)

__all__ = ["DATASETS", "MNIST_FILES", "MNIST_URL", "Dataset", "as_binary", "as_binary_targets", "breast_cancer", "check_data",
           "diabetes", "digits", "download", "load", "mnist", "mnist1d", "moons", "read_idx", "sine", "spirals",
           "split_rows", "split_standardise", "standardise", "validation_split", "xor"]
