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


def test_cache_key_names_the_compiler_a_loading_machine_would():
    """Where no compiler runs, the cache key uses the line a compiler built
    from the same tree prints (release + source id): both sides agree."""
    from diffattn import _build_config, _compiler, _source_id

    version = _compiler.compiler_version()
    if version is None:
        pytest.skip("no compiler here")
    assert version == f"diffattn-compile {_build_config.VERSION} (source {_source_id.SOURCE_ID})"


def _source_id(script, tree, out):
    subprocess.run(["cmake", f"-DSRC_DIR={tree}", f"-DOUT_PYTHON={out}", "-P", script],
                   check=True, capture_output=True)
    return out.read_text().split('SOURCE_ID = "')[1].split('"')[0]


def test_source_id_follows_the_compiler_sources(tmp_path):
    """cmake/SourceId.cmake: the id changes when a compiler source changes,
    not when a file outside the compiler does, and an unchanged tree leaves
    the output untouched (nothing rebuilds)."""
    import shutil

    if shutil.which("cmake") is None:
        pytest.skip("no cmake")
    script = os.path.join(os.path.dirname(__file__), "..", "..", "cmake", "SourceId.cmake")
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "python").mkdir()
    (tree / "lib" / "Pass.cpp").write_text("int a;\n")
    (tree / "python" / "x.py").write_text("a = 1\n")
    out = tmp_path / "_source_id.py"
    first = _source_id(script, tree, out)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    stamp = out.stat().st_mtime_ns
    (tree / "python" / "x.py").write_text("a = 2\n")
    assert _source_id(script, tree, out) == first
    assert out.stat().st_mtime_ns == stamp
    (tree / "lib" / "Pass.cpp").write_text("int b;\n")
    assert _source_id(script, tree, out) != first
