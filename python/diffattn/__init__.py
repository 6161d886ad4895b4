"""diffattn: differential attention (Differential Transformer V1 and V2).

The package is laid out by the CMake build under build/python_packages. It
provides:

- ``diffattn.reference.v2`` / ``diffattn.reference.v1``: float64 numpy
  reference implementations of the ops' semantics, for tests.
- ``diffattn.__version__``: the project version the build recorded.
"""

from . import reference

try:
    from ._build_config import VERSION as __version__
except ImportError:  # running from the source tree, not a laid-out package
    __version__ = "0.0.0+source"

__all__ = ["reference", "__version__"]
