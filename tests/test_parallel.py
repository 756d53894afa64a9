"""Data-parallel training on fake CPU devices (conftest asks JAX for four)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.training import parallel
from helpers import assert_rel_close


def _setup():
    net = fnn.MLP((5, 16, 16, 3), "tanh")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = fnn.init(k1, net)
    x = jax.random.normal(k2, (60, 5))
    v = jax.random.randint(k3, (60,), 0, 3)
    return net, params, x, v


def test_four_fake_devices_are_there():
    assert len(jax.devices()) >= 4


@pytest.mark.parametrize("method", ["manual", "autodiff"])
@pytest.mark.parametrize("batch", [16, 15])  # 15: padded to 16 with one masked example
def test_sharded_steps_equal_single_device(method, batch, x64):
    net, params, x, v = _setup()
    mesh = parallel.make_mesh(4)
    opt = optax.sgd(0.1, momentum=0.9)
    single = fnn.make_update_step(net, "softmax_cross_entropy", opt, method)
    sharded = parallel.make_parallel_update_step(net, "softmax_cross_entropy", opt, mesh, method)
    p1 = jax.tree.map(jnp.array, params)
    p4 = jax.tree.map(jnp.array, params)
    s1, s4 = opt.init(p1), opt.init(p4)
    for i in range(len(x) // batch):  # full batches only: an empty batch is an error
        xb, vb = x[i * batch:(i + 1) * batch], v[i * batch:(i + 1) * batch]
        p1, s1, m1 = single(p1, s1, xb, vb)
        p4, s4, m4 = sharded(p4, s4, xb, vb)
        assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-12)
    assert_rel_close(p1, p4, 1e-12)
    assert len(p4[0]["W"].sharding.device_set) == 4  # really replicated over the mesh


@pytest.mark.parametrize("method", ["manual", "autodiff"])
def test_fit_parallel_equals_fit(method, x64):
    net, params, x, v = _setup()
    kwargs = dict(key=jax.random.key(3), optimizer=optax.adam(1e-2), epochs=3, batch_size=10, method=method)
    a, ha = fnn.fit(net, "softmax_cross_entropy", params, x, v, **kwargs)
    b, hb = fnn.fit_parallel(net, "softmax_cross_entropy", params, x, v, devices=4, **kwargs)
    assert_rel_close(a, b, 1e-12)
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-12)


def test_too_many_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="Asked for 64 devices"):
        parallel.make_mesh(64)
