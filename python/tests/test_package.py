"""The laid-out package: importable, versioned, pointing at its build tree."""
import os
import re
import subprocess
import sys

import pytest

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


def test_source_tree_import_says_to_build(tmp_path):
    # python/diffattn in the source tree has no _build_config.py: importing
    # it must fail with one ImportError that says how to build, not with a
    # traceback from deep inside the package.
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(source, "diffattn", "_build_config.py")):
        pytest.skip("the source tree has a _build_config.py")
    env = dict(os.environ, PYTHONPATH=source)
    proc = subprocess.run([sys.executable, "-c", "import diffattn"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: diffattn: "), proc.stderr
    assert "bash scripts/run.sh setup" in last and "cmake --build build" in last
    assert "During handling" not in proc.stderr
