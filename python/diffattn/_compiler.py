"""Finding and running diffattn-compile, and the kernel cache.

The compiler is ``diffattn-compile`` from the build tree that laid this
package out, unless ``DIFFATTN_COMPILE`` names another. Compiled kernels are
cached under ``DIFFATTN_CACHE_DIR`` (default: ``$XDG_CACHE_HOME/diffattn`` or
``~/.cache/diffattn``): ``<cache>/<key>/`` is one ``diffattn-compile -o``
directory (``manifest.json`` plus the kernels), where ``<key>`` hashes the op
kind, its static parameters, the target and the compiler's identity (release
and source id, see cache_key). A machine without the compiler can use kernels
copied into its cache from a compiler built from the same source tree.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

from . import _build_config, _source_id


class CompileError(RuntimeError):
    """diffattn-compile failed; the message carries its diagnostics."""


class CacheError(RuntimeError):
    """The kernel cache (DIFFATTN_CACHE_DIR) cannot be used: not a writable
    directory, or an entry that does not load (a truncated manifest or
    library). The message names the path."""


def compiler_path():
    """The diffattn-compile this package runs."""
    return os.environ.get("DIFFATTN_COMPILE") or _build_config.DIFFATTN_COMPILE


def cache_dir():
    """The root of the kernel cache."""
    root = os.environ.get("DIFFATTN_CACHE_DIR")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffattn")


@functools.lru_cache(maxsize=None)
def _compiler_version(path):
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def compiler_version():
    """The version line of the compiler, or None when it cannot run here."""
    return _compiler_version(compiler_path())


def cache_key(kind, params, target, options=()):
    """The cache directory name of one kernel configuration.

    The compiler's identity is its ``--version`` line, or, where no compiler
    runs (a machine that only loads kernels), the line a compiler built from
    this package's source tree prints: the release and the source id, a hash
    of the compiler's sources (cmake/SourceId.cmake), so a changed compiler
    never reuses kernels an older one cached.
    """
    version = compiler_version() or (f"diffattn-compile {_build_config.VERSION} "
                                     f"(source {_source_id.SOURCE_ID})")
    text = json.dumps({"kind": kind, "params": params, "target": target,
                       "options": list(options), "compiler": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def ensure_compiled(kind, params, target, mlir_text, options=()):
    """Returns the artifact directory of the kernel, compiling it if needed.

    ``mlir_text`` is a module holding one op with these parameters; it is
    compiled only when the cache has no entry for the key. ``options`` are
    extra diffattn-compile flags (part of the key).
    """
    root = cache_dir()
    key = cache_key(kind, params, target, options)
    final = os.path.join(root, key)
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return final
    compiler = compiler_path()
    if not os.path.isfile(compiler) and shutil.which(compiler) is None:
        raise CompileError(
            f"no kernel for this configuration in {root} and no compiler at "
            f"{compiler} (set DIFFATTN_COMPILE, or copy a diffattn-compile "
            f"output directory to {final})")
    try:
        os.makedirs(root, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".build-", dir=root)
    except OSError as e:
        raise CacheError(f"cannot use the kernel cache {root} (DIFFATTN_CACHE_DIR, else "
                         f"$XDG_CACHE_HOME/diffattn or ~/.cache/diffattn): "
                         f"{e.strerror or e}") from None
    try:
        source = os.path.join(work, "kernel.mlir")
        with open(source, "w") as f:
            f.write(mlir_text)
        out_dir = os.path.join(work, "out")
        proc = subprocess.run([compiler, source, f"--target={target}", "-o", out_dir,
                               *options],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"diffattn-compile failed (exit {proc.returncode}):\n"
                               f"{proc.stderr.strip()}\n--- input ---\n{mlir_text}")
        try:
            os.rename(out_dir, final)
        except OSError:
            # Another process installed the same key first: use theirs.
            if not os.path.isfile(os.path.join(final, "manifest.json")):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# The manifest format this package reads: lib/Target/Manifest.h's
# kManifestFormatVersion, and runtime/lib/manifest.h's for GPU artifacts
# (docs/manifest.md).
MANIFEST_FORMAT_VERSION = 1


def load_manifest(directory):
    """The manifest of a CPU artifact directory (GPU artifacts are read by
    the runtime). Raises ValueError for a format_version this package does
    not read, CacheError for a manifest that does not parse."""
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CacheError(f"cannot read {path}: {e}; delete {directory} to compile it "
                         f"again") from None
    version = manifest.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise ValueError(f"{directory}/manifest.json: format_version {version!r} is not "
                         f"supported by this diffattn package (it reads format_version "
                         f"{MANIFEST_FORMAT_VERSION}); rebuild the kernels with a matching "
                         f"diffattn-compile")
    return manifest
