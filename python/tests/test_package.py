"""The laid-out package: importable, versioned, pointing at its build tree."""
import os
import re

import diffattn


def test_version_string():
    assert re.fullmatch(r"\d+\.\d+\.\d+", diffattn.__version__), diffattn.__version__


def test_laid_out_by_the_build():
    from diffattn import _build_config

    assert _build_config.VERSION == diffattn.__version__
    # The compiler the package will run lives in the build tree that laid
    # the package out, beside python_packages/.
    pkg_dir = os.path.dirname(os.path.abspath(diffattn.__file__))
    build_dir = os.path.dirname(os.path.dirname(pkg_dir))
    assert os.path.dirname(_build_config.DIFFATTN_COMPILE) == os.path.join(build_dir, "bin")


def test_reference_exported():
    assert callable(diffattn.reference.v2)
    assert callable(diffattn.reference.v1)
