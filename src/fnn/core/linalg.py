"""Dense linear algebra that stays safe under ``vmap`` on the CPU.

jaxlib's CPU LAPACK kernels (``syevd`` for ``eigh``, ``potrf`` for ``cholesky``, ``getrf`` for
``solve``) split a stack of matrices over XLA's thread pool and wait for the parts inside a pool
worker. With several such calls in flight in one program (``fnn.sweep``'s runs, vmapped) that
wait can deadlock for good, every thread idle (reproduced with jaxlib 0.10.2; a stack of one
matrix never hangs). :func:`one_matrix_at_a_time` keeps each call to one matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def one_matrix_at_a_time(fn):
    """``fn`` unchanged when called plainly; under ``vmap`` it runs over the batch one element at a
    time (``lax.map``), so each LAPACK call inside it sees one matrix. Not differentiable."""
    one = custom_vmap(fn)

    @one.def_vmap
    def _batched(size, batched, *args):
        if not any(batched):
            out = one(*args)
            return out, jax.tree.map(lambda _: False, out)
        args = tuple(a if b else jnp.broadcast_to(a, (size, *jnp.shape(a))) for a, b in zip(args, batched))
        out = jax.lax.map(lambda xs: one(*xs), args)
        return out, jax.tree.map(lambda _: True, out)

    return one


@one_matrix_at_a_time
def eigh(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` of one symmetric matrix ``(n, n)``: eigenvalues ``(n,)`` ascending and
    eigenvectors ``(n, n)``; one LAPACK call per matrix under ``vmap``."""
    return jnp.linalg.eigh(m)


@one_matrix_at_a_time
def solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.linalg.solve(a, b)`` for one system, ``a`` ``(n, n)`` and ``b`` ``(n,)``; one LAPACK
    call per system under ``vmap``."""
    return jnp.linalg.solve(a, b)
