"""Files: atomic writes, held folders, checkpoints, figures and the compile cache.
Builds on :mod:`fnn.core` and :mod:`fnn.analysis`."""
