"""Data-parallel training over devices with JAX's own sharding.

Parameters and optimizer state are replicated over a 1-D ``Mesh`` with axis
``"data"``; each batch is split along its first axis. ``jit`` inserts the
gradient all-reduce itself: the risk is a mean over the whole (sharded)
batch, so its gradient is the same number as on one device. Nothing here is
hand-written communication.

A batch whose size the device count does not divide is padded with copies
of its first example carrying weight zero, which changes neither the risk
nor its gradient (see :func:`fnn.risk`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fnn.core.losses import Loss
from fnn.core.network import MLP
from fnn.training.optim import make_update_fn
from fnn.core.programs import program_cache

AXIS = "data"


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``devices`` devices (all by default)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(
            f"Asked for {n} devices but {len(available)} are available ({available[0].platform}). "
            "On CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N (or "
            "jax.config.update('jax_num_cpu_devices', N)) before JAX starts."
        )
    return Mesh(np.array(available[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value held whole on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch split along its first axis over ``mesh``."""
    return NamedSharding(mesh, P(AXIS))


def padded_size(batch: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count that holds ``batch`` examples."""
    n = mesh.devices.size
    return -(-batch // n) * n


def pad_batch(x, v, mesh: Mesh):
    """``(x, v, weights)`` padded to a multiple of the device count.

    Padding rows repeat the batch's first example with weight 0, so they change
    neither the risk nor its gradient. ``x``: ``(B, d_0)``; ``v``: ``(B, ...)``;
    ``weights``: ``(B_padded,)``.
    """
    batch = jnp.shape(x)[0]
    pad = padded_size(batch, mesh) - batch
    weights = (jnp.arange(batch + pad) < batch).astype(jnp.result_type(x))
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        v = jnp.concatenate([v, jnp.repeat(v[:1], pad, axis=0)])
    return x, v, weights


def shard_batch(tree, mesh: Mesh):
    """Inside ``jit``: constrain every array of ``tree`` to be split along its first axis."""
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_sharded(mesh)), tree)


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` held whole on every device of ``mesh``, across processes too.

    Each process passes the same values (as every host does when it loads the
    same data with the same seed). Unlike ``jax.device_put``, this works when
    ``mesh`` spans devices of other processes (after ``jax.distributed.initialize``),
    and for typed PRNG keys, which travel as their raw key data.
    """
    sharding = replicated(mesh)

    def one(a):
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        if jax.process_count() == 1:
            return jax.device_put(a, sharding)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


@program_cache
def make_parallel_update_step(
    net: MLP,
    loss: str | Loss,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    method: str = "manual",
    *,
    l2: float = 0.0,
    dropout: float = 0.0,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
) -> Callable:
    """The update step of :func:`fnn.make_update_step`, sharded over ``mesh``.

        step(params, opt_state, x, v, key=None) -> (params, opt_state, metrics)

    The batch is padded to a multiple of the device count with zero-weight
    examples and split over the devices; params and state stay replicated. Equal arguments
    (the same optimizer object, an equal mesh) return the same step (see :mod:`fnn.core.programs`).
    """
    update = make_update_fn(net, loss, optimizer, method, l2=l2, dropout=dropout, clip_norm=clip_norm,
                            noise_multiplier=noise_multiplier)
    rep, data = replicated(mesh), batch_sharded(mesh)
    sharded = jax.jit(
        update,
        in_shardings=(rep, rep, data, data, rep, data),
        out_shardings=(rep, rep, rep),
        donate_argnums=(0, 1),
    )

    def step(params, opt_state, x, v, key=None):
        x, v, weights = pad_batch(jnp.asarray(x), jnp.asarray(v), mesh)
        return sharded(params, opt_state, x, v, key, weights)

    return step


def __getattr__(name: str):
    # fnn.parallel.fit_parallel lived here in earlier versions. It is fnn.fit_parallel now
    # (fnn.training.train builds on this module, so importing it here would close a circle).
    if name == "fit_parallel":
        raise AttributeError("fnn.parallel.fit_parallel has moved: use fnn.fit_parallel "
                             "(defined in fnn.training.train)")
    raise AttributeError(f"module 'fnn.training.parallel' has no attribute {name!r}")
