"""Shared test helpers: targets that fit each loss, and a relative-error assertion."""

import jax
import numpy as np

import fnn


def targets_for(loss: fnn.Loss, key, batch: int, out_dim: int, dtype):
    """Random targets of the kind ``loss`` expects."""
    if loss.name == "softmax_cross_entropy":
        return jax.random.randint(key, (batch,), 0, out_dim)
    if loss.kind == "binary":
        return jax.random.uniform(key, (batch, out_dim), dtype)
    if loss.name == "mape":  # keep targets away from zero
        return 1.0 + jax.random.uniform(key, (batch, out_dim), dtype)
    return jax.random.normal(key, (batch, out_dim), dtype)


def assert_rel_close(a, b, tol):
    """Every leaf satisfies ‖a − b‖ / max(‖a‖, ‖b‖) ≤ tol (exact zeros allowed)."""
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (path, x.shape, y.shape)
        scale = max(np.linalg.norm(x), np.linalg.norm(y))
        err = 0.0 if scale == 0 else np.linalg.norm(x - y) / scale
        assert err <= tol, f"{jax.tree_util.keystr(path)}: relative error {err:.3e} > {tol:.0e}"
