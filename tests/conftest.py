"""Test configuration in the style of equinox's: strict promotion, fake devices."""

import os

import jax

# The CLI turns on JAX's persistent compilation cache in the user's cache folder; tests that
# call it in-process leave it off (tests/test_usability.py checks the cache in a subprocess).
os.environ.setdefault("FNN_NO_COMPILE_CACHE", "1")

# Several fake CPU devices for the sharding tests; must precede any JAX computation.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import hypothesis  # noqa: E402
import pytest  # noqa: E402

hypothesis.settings.register_profile(
    "fnn", max_examples=20, deadline=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("fnn")


@pytest.fixture
def x64():
    """Runs the test with float64 enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop the compiled programs it left behind (fnn keeps one per
    configuration, JAX its own caches): a worker that runs hundreds of modules would otherwise
    hold every executable it ever built. Twice late in loaded full runs an xdist worker
    segfaulted inside XLA's compiler; this keeps a worker's memory flat."""
    yield
    from fnn.core.programs import clear_programs

    clear_programs()  # also jax.clear_caches()
