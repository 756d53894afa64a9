"""fnn's quantities against BackPACK itself, on the same weights and data (float64), after the
scaling conventions stated in fnn.quantities. Skips cleanly without backpack-for-pytorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

torch = pytest.importorskip("torch")
backpack = pytest.importorskip("backpack")
from backpack.extensions import KFLR, BatchGrad, BatchL2Grad, DiagGGNExact, SumGradSquared, Variance  # noqa: E402

TORCH_ACTS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}


@pytest.mark.parametrize("activation", list(TORCH_ACTS))
def test_quantities_agree_with_backpack(activation, x64):
    torch.set_default_dtype(torch.float64)
    B, sizes = 5, (4, 6, 5, 3)
    net = fnn.MLP(sizes, activation)
    params = fnn.init(jax.random.key(0), net, dtype=jnp.float64)
    x = np.asarray(jax.random.normal(jax.random.key(1), (B, sizes[0]), jnp.float64))
    v = np.asarray(jax.random.randint(jax.random.key(2), (B,), 0, sizes[-1]))
    layers = []
    for i, p in enumerate(params):
        lin = torch.nn.Linear(*p["W"].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.asarray(p["W"]).T))
            lin.bias.copy_(torch.tensor(np.asarray(p["b"])))
        layers += [lin] + ([TORCH_ACTS[activation]()] if i < len(params) - 1 else [])
    model = backpack.extend(torch.nn.Sequential(*layers))
    loss = backpack.extend(torch.nn.CrossEntropyLoss())(model(torch.tensor(x)), torch.tensor(v))
    with backpack.backpack(BatchGrad(), BatchL2Grad(), SumGradSquared(), Variance(), DiagGGNExact(), KFLR()):
        loss.backward()
    name = "softmax_cross_entropy"
    per_example = fnn.per_example_grads(net, name, params, x, v)
    norms = fnn.per_example_grad_norms(net, name, params, x, v, per_layer=True)
    moments = fnn.gradient_moments(net, name, params, x, v)
    ggn = fnn.ggn_diagonal(net, name, params, x, v)
    kfac = fnn.kfac_factors(net, name, params, x, v)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15)
    for l, lin in enumerate(m for m in model if isinstance(m, torch.nn.Linear)):
        for ours, theirs in (("W", lin.weight), ("b", lin.bias)):
            t = (lambda a: np.swapaxes(a, -1, -2)) if ours == "W" else (lambda a: a)
            close(theirs.grad_batch.numpy(), t(np.asarray(per_example[l][ours])) / B)
            close(theirs.batch_l2.numpy(), np.asarray(norms[l][ours]) ** 2 / B ** 2)
            close(theirs.sum_grad_squared.numpy(), t(np.asarray(moments["sum_grad_squared"][l][ours])) / B ** 2)
            close(theirs.variance.numpy(), t(np.asarray(moments["variance"][l][ours])) / B ** 2)
            close(theirs.diag_ggn_exact.numpy(), t(np.asarray(ggn[l][ours])))
        g, a = (f.numpy() for f in lin.weight.kflr)
        close(g, kfac[l]["G"])
        close(a, kfac[l]["A"])
