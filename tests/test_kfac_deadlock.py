"""Issue 23: K-FAC under the runs' ``vmap`` (as in ``fnn.sweep``) must not deadlock on CPU.

jaxlib's CPU LAPACK kernels (``syevd`` for ``eigh``, ``potrf`` for Cholesky) split a *batch* of
matrices over XLA's thread pool and wait for the parts inside a worker of that pool; with several
such calls in one program (one per Kronecker factor) that wait hung for good, every worker idle
(``jax::ParallelBatchMap`` → ``BlockingCounter::Wait`` in the native stacks). fnn's refresh maps
its decompositions over the batch one matrix at a time (``second_order._one_matrix_at_a_time``).
Without it this script hung on 3 of 3 tries (27 lanes, 64-64-10; killed after 60 s); with it, it
takes a few seconds. It runs in a subprocess so that a hang fails the test instead of the suite.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import jax, jax.numpy as jnp, fnn
from fnn.training.second_order import with_shared_step

lanes, steps = 27, 40
net = fnn.MLP((64, 64, 10), ("relu", "identity"))
params = fnn.init(jax.random.key(0), net, "glorot")
x = jax.random.normal(jax.random.key(1), (128, 64))
v = jax.random.randint(jax.random.key(2), (128,), 0, 10)
for mode in ("exact", "pi"):
    opt = fnn.kfac(0.1, 1.0, inverse_update_period=1, damping_mode=mode)
    _, grads, extra = fnn.curvature_pass(opt, net, "softmax_cross_entropy", params, x, v)
    scale = 1.0 + jnp.arange(lanes) / lanes
    batch = jax.tree.map(lambda a: scale.reshape(-1, *[1] * a.ndim) * a, (grads, extra["factors"]))

    def run(g, f):
        def step(state, i):
            factors = jax.tree.map(lambda a: a * (1.0 + 0.01 * i), f)
            u, state = with_shared_step(opt, i).update(g, state, params, factors=factors)
            return state, jax.tree.leaves(u)[0].sum()
        return jax.lax.scan(step, opt.init(params), jnp.arange(steps))[1]

    program = jax.jit(jax.vmap(run))
    for _ in range(3):
        out = program(*batch)
        assert out.shape == (lanes, steps) and bool(jnp.isfinite(out).all()), mode
    print(mode, "done", flush=True)
"""


def test_batched_kfac_refresh_finishes_on_cpu():
    """Both damping modes' refresh (eigh; Cholesky and triangular solve) over 27 lanes, every step,
    three executions each: the program returns finite updates instead of hanging."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"batched K-FAC refresh hung (deadlock in the batched LAPACK calls); got: {hung.stdout!r}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["exact", "done", "pi", "done"]


def test_one_matrix_at_a_time_equals_the_batched_call():
    # fnn.core.linalg's eigh and solve give jnp.linalg's numbers under nested vmap and with an
    # unbatched argument (broadcast), while each LAPACK call sees one matrix.
    import jax
    import jax.numpy as jnp
    from fnn.core import linalg

    a = jax.random.normal(jax.random.key(0), (3, 2, 5, 5))
    a = a @ jnp.swapaxes(a, -1, -2) + 5 * jnp.broadcast_to(jnp.eye(5), a.shape)
    b = jax.random.normal(jax.random.key(1), (3, 2, 5))
    d, _ = jax.jit(jax.vmap(jax.vmap(linalg.eigh)))(a)
    assert jnp.array_equal(d, jnp.linalg.eigh(a)[0])
    x = jax.jit(jax.vmap(jax.vmap(linalg.solve)))(a, b)
    assert jnp.allclose(x, jnp.linalg.solve(a, b[..., None])[..., 0], rtol=1e-5, atol=1e-6)
    shared = jax.vmap(linalg.solve, in_axes=(None, 0))(a[0, 0], b[0])
    assert jnp.allclose(shared, jnp.linalg.solve(a[0, 0], b[0].T).T, rtol=1e-5, atol=1e-6)
