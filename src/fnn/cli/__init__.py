"""The command line (``fnn train``, ``evaluate``, ``sweep``, ``bench``) and its run and sweep
folders. The top layer: it imports the library, the library never imports it."""

from fnn.cli.main import main

__all__ = ["main"]
