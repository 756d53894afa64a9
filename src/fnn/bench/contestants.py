"""The contestants of ``fnn bench``: fnn's rows (the hand-written and ``jax.grad`` steps built by
the library's own :func:`fnn.make_update_fn`, the scan-fused epoch, the fixed-batch floor) and
the peer libraries' rows (PyTorch eager and ``torch.compile``, Flax NNX, Equinox), each imported
only when asked for.

A row is a function ``run(k)`` that advances its own state by ``k`` steps and blocks.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import optax

import fnn
from fnn.core.backprop import Objective, get_method
from fnn.bench.harness import _compiled_memory_mb, _stepper
from fnn.training.train import make_epoch_fn


PEER_NAMES = ("torch", "torch-compile", "flax", "equinox")


FLOOR_ROW = "floor: scanned update, one fixed batch (diagnostic)"


TWIN = " (step per call, 2nd copy)"


def _fnn_rows(sizes, batch, dtype_name, device, steps_per_epoch=16, twins=False):
    """name -> ``run(k)`` for fnn's rows: per-call steps (manual and ``jax.grad``, and their twins),
    the scan-fused epoch and the fixed-batch floor."""
    dev = jax.devices(device)[0]
    compute = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    net = fnn.MLP(sizes, "relu")
    loss = fnn.get_loss("softmax_cross_entropy")
    params = jax.device_put(fnn.init(jax.random.key(0), net, "he"), dev)
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.device_put(jax.random.normal(k1, (batch, sizes[0]), compute), dev)
    v = jax.device_put(jax.random.randint(k2, (batch,), 0, sizes[-1]), dev)
    opt = optax.sgd(0.01)
    rows = {}
    for copy, method in itertools.product((False, True) if twins else (False,), ("manual", "autodiff")):
        # A fresh function each time: the twin is compiled and run separately, same program.
        step = jax.jit(_step_fn(net, loss, opt, method, compute), donate_argnums=(0, 1))
        run = _stepper(lambda p, s, i, step=step: step(p, s, x, v), params, opt.init(params), 1,
                       _compiled_memory_mb(step, params, opt.init(params), x, v))
        name = "fnn manual" if method == "manual" else "fnn jax.grad"
        rows[name + (TWIN if copy else " (step per call)")] = run

    # Scan-fused epoch: steps_per_epoch batches drawn on device and stepped inside one compiled call.
    data_x = jax.device_put(jax.random.normal(k1, (batch * steps_per_epoch, sizes[0]), compute), dev)
    data_v = jax.device_put(jax.random.randint(k2, (batch * steps_per_epoch,), 0, sizes[-1]), dev)
    if compute == jnp.float32:  # the library's epoch trains in the parameters' dtype; bf16 rows use the step
        epoch = make_epoch_fn(net, loss, opt, batch_size=batch)
        rows["fnn manual (scan-fused epoch)"] = _stepper(
            lambda p, s, i: epoch(p, s, data_x, data_v, jax.random.key(i))[:2], params, opt.init(params),
            steps_per_epoch, _compiled_memory_mb(epoch, params, opt.init(params), data_x, data_v, jax.random.key(0)))

        # Diagnostic floor: the same update scanned over one fixed batch, with no shuffle and
        # no gather. Neither dispatch nor data movement is left, so no fusion of whole steps
        # can beat it; the epoch's distance from it is what shuffling and batching cost.
        update = fnn.make_update_fn(net, loss, opt, "manual")

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def fixed_batch(p, s, x, v):
            def body(carry, _):
                p, s, metrics = update(*carry, x, v)
                return (p, s), metrics["loss"]

            (p, s), _ = jax.lax.scan(body, (p, s), None, length=steps_per_epoch)
            return p, s

        rows[FLOOR_ROW] = _stepper(lambda p, s, i: fixed_batch(p, s, x, v), params, opt.init(params),
                                   steps_per_epoch, _compiled_memory_mb(fixed_batch, params, opt.init(params), x, v))
    return rows


def _step_fn(net, loss, opt, method, compute):
    """``(params, opt_state, x, v) -> (params, opt_state)``. In float32 this is the library's own
    update (:func:`fnn.make_update_fn`); in bfloat16 the same gradient is taken on a bf16 copy of
    float32 master weights (gradients flow back through the cast)."""
    if compute == jnp.float32:
        update = fnn.make_update_fn(net, loss, opt, method)
        return lambda p, s, x, v: update(p, s, x, v)[:2]
    grad_fn, objective = get_method(method), Objective(net, loss)

    def mixed(p, s, x, v):
        _, g = grad_fn(objective, jax.tree.map(lambda a: a.astype(compute), p), x, v)
        u, s = opt.update(jax.tree.map(lambda a: a.astype(jnp.float32), g), s, p)
        return optax.apply_updates(p, u), s

    return mixed


def _torch_row(sizes, batch):
    import torch

    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, sizes[0])
    v = torch.randint(0, sizes[-1], (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(k):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), v).backward()
            opt.step()

    run.parts = (model, opt, x, v, loss_fn)
    return {f"PyTorch {torch.__version__} eager": run}


def _torch_compile_row(sizes, batch):
    """The same PyTorch step with the model and the optimizer step under ``torch.compile``."""
    import torch

    eager = _torch_row(sizes, batch)
    (run,) = eager.values()
    model, opt, x, v, loss_fn = run.parts
    compiled = torch.compile(model)
    opt_step = torch.compile(opt.step)

    def run_compiled(k):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss_fn(compiled(x), v).backward()
            opt_step()

    return {f"PyTorch {torch.__version__} torch.compile": run_compiled}


def _equinox_row(sizes, batch):
    import equinox as eqx

    model = eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 2, activation=jax.nn.relu,
                       key=jax.random.key(0))
    if len(set(sizes[1:-1])) > 1:
        raise ValueError("equinox MLP needs equal hidden widths")
    opt = optax.sgd(0.01)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    v = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])

    @eqx.filter_jit
    def step(model, state, x, v):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), v).mean()

        g = eqx.filter_grad(loss)(model)
        u, state = opt.update(g, state, model)
        return eqx.apply_updates(model, u), state

    st = {"m": model, "s": opt.init(eqx.filter(model, eqx.is_array))}

    def run(k):
        m, s = st["m"], st["s"]
        for _ in range(k):
            m, s = step(m, s, x, v)
        jax.block_until_ready(eqx.filter(m, eqx.is_array))
        st["m"], st["s"] = m, s

    return {f"Equinox {eqx.__version__}": run}


def _flax_row(sizes, batch):
    import flax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    v = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])

    @nnx.jit
    def step(model, opt, x, v):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), v).mean()

        grads = nnx.grad(loss)(model)
        opt.update(model, grads)

    def run(k):
        for _ in range(k):
            step(model, opt, x, v)
        jax.block_until_ready(nnx.state(model))

    return {f"Flax NNX {flax.__version__}": run}


PEERS = {"torch": _torch_row, "torch-compile": _torch_compile_row, "flax": _flax_row,
         "equinox": _equinox_row}


assert tuple(PEERS) == PEER_NAMES
