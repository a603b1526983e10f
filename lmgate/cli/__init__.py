"""The ``lmgate`` command line: ``demo``, ``probe``, ``bench`` and ``sim``.

The top of the layer graph: it may import anything in lmgate, and nothing
imports it.
"""

from lmgate.cli._main import main

__all__ = ["main"]
