"""Evaluation: the risk and accuracy (classification) or MSE and R² (regression) of a network
on a data set, as one compiled call."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fnn.core.losses import Loss, get_loss, risk
from fnn.core.network import MLP, Params, forward
from fnn.core.validation import validate

Array = jax.Array


def _to_device(params: Params, x, v) -> tuple[Array, Array]:
    # Data arrive as float32 numpy; compute in the parameters' dtype (float64 under x64).
    dtype = jnp.result_type(params[0]["W"])
    v = jnp.asarray(v)
    if jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(dtype)
    return jnp.asarray(x, dtype), v


@functools.partial(jax.jit, static_argnums=(0, 1))
def _metrics(net: MLP, loss: Loss, params: Params, x: Array, v: Array) -> dict:
    out = forward(net, params, x)
    metrics = {"loss": risk(loss, out, v)}
    if loss.kind == "multiclass":
        labels = v if jnp.issubdtype(v.dtype, jnp.integer) else jnp.argmax(v, -1)
        metrics["accuracy"] = jnp.mean((jnp.argmax(out, -1).astype(labels.dtype) == labels).astype(out.dtype))
    elif loss.kind == "binary":
        metrics["accuracy"] = jnp.mean(((out > 0) == (jnp.reshape(v, out.shape) > 0.5)).astype(out.dtype))
    else:
        v = jnp.reshape(v, out.shape).astype(out.dtype)
        residual = jnp.sum((out - v) ** 2)
        metrics["mse"] = residual / v.size
        metrics["r2"] = 1 - residual / jnp.sum((v - jnp.mean(v, 0, keepdims=True)) ** 2)
    return metrics


def evaluate(net: MLP, loss: str | Loss, params: Params, x, v) -> dict[str, float]:
    """Metrics of ``params`` on ``(x, v)``: ``loss`` (the risk R) and ``accuracy``
    (classification), or ``loss``, ``mse`` (mean squared error per output) and ``r2``
    (regression). ``x``: ``(B, d_0)``; ``v``: targets that fit ``loss``."""
    loss = get_loss(loss)
    validate(net, loss, params, x, v)
    return _host_metrics(net, loss, params, *_to_device(params, x, v))


def _host_metrics(net: MLP, loss: Loss, params: Params, x: Array, v: Array) -> dict[str, float]:
    # No checks, no host copy of the data: for arrays already validated and on the device.
    return {k: float(a) for k, a in _metrics(net, loss, params, x, v).items()}
