"""fnn.analysis.linearised: the Hessian- and GGN-vector products split into a vector-free part
made once and a per-vector part equal fnn.analysis.quantities' products (float64), with and
without dropout masks and with activations whose second derivative is not zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.analysis.linearised import ggn_vp_linear, hvp_linear, linearise
from fnn.analysis.quantities import ggn_vp_cached, hvp_cached
from helpers import targets_for


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_linearised_products_equal_the_hand_written_ones(loss_name, dropout, x64):
    net = fnn.MLP((4, 6, 5, 3), ("tanh", "softplus", "identity"))
    loss = fnn.get_loss(loss_name)
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    params = fnn.init(k1, net, "glorot", dtype=jnp.float64)
    x = jax.random.normal(k2, (7, 4), jnp.float64)
    v = targets_for(loss, k3, 7, 3, jnp.float64)
    u = fnn.init(k4, net, "glorot", dtype=jnp.float64)
    out, cache = fnn.forward_with_cache(net, params, x, dropout=dropout, key=k5)
    if dropout:
        assert any(m is not None and bool(jnp.any(m == 0)) for m in cache.masks)
    for got, want in [
        (hvp_linear(loss, params, out, v, cache, linearise(net, loss, params, out, v, cache), u),
         hvp_cached(net, loss, params, out, v, cache, u)),
        (ggn_vp_linear(loss, params, out, v, cache, linearise(net, loss, params, out, v, cache, False), u),
         ggn_vp_cached(net, loss, params, out, v, cache, u)),
    ]:
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
