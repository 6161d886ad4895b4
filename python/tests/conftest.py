"""Shared fixtures: a fresh kernel cache per test session, random inputs."""
import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _fresh_kernel_cache(tmp_path_factory):
    """Where the compiler runs, every session compiles its kernels anew into
    a private cache, so a test never passes on a kernel an older compiler
    left behind. Where it does not (a GPU machine that only loads kernels
    built elsewhere), the given DIFFATTN_CACHE_DIR is used as it is."""
    from diffattn import _compiler

    if _compiler.compiler_version() is None:
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFATTN_CACHE_DIR", str(tmp_path_factory.mktemp("kernel-cache")))
    yield
    mp.undo()


@pytest.fixture
def rng(request):
    # A different stream per test, but reproducible from the test's name.
    seed = abs(hash(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def rel_l2(out, ref):
    out = np.asarray(out, dtype=np.float64)
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300)


TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 3e-3}
