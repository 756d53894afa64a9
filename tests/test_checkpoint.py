import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.io import checkpoint


def _state():
    net = fnn.MLP((3, 5, 2), "relu")
    params = fnn.init(jax.random.key(0), net)
    opt = optax.adam(1e-3)
    step = fnn.make_update_step(net, "softmax_cross_entropy", opt)
    p, s = jax.tree.map(jnp.array, params), opt.init(params)
    p, s, _ = step(p, s, jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
    return net, opt, p, s


def test_round_trip(tmp_path):
    net, opt, p, s = _state()
    key = jax.random.key(42)
    checkpoint.save(tmp_path / "c.npz", net=net, params=p, opt_state=s, step=7, key=key, meta={"a": 1})
    c = checkpoint.load(tmp_path / "c.npz", net=net, opt_state_like=opt.init(p))
    assert c.net == net and c.step == 7 and c.meta == {"a": 1}
    jax.tree.map(np.testing.assert_array_equal, c.params, p)
    jax.tree.map(np.testing.assert_array_equal, c.opt_state, s)
    assert jax.tree.structure(c.opt_state) == jax.tree.structure(s)
    np.testing.assert_array_equal(jax.random.key_data(c.key), jax.random.key_data(key))
    # No pickle: the file loads with allow_pickle=False (load() uses it) and has no object arrays.
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind


def test_mismatched_architecture_is_a_clear_error(tmp_path):
    net, opt, p, s = _state()
    checkpoint.save(tmp_path / "c.npz", net=net, params=p)
    with pytest.raises(ValueError, match=r"holds MLP\(sizes=\(3, 5, 2\).*asks for MLP\(sizes=\(3, 6, 2\)"):
        checkpoint.load(tmp_path / "c.npz", net=fnn.MLP((3, 6, 2), "relu"))
    checkpoint.save(tmp_path / "d.npz", net=net, params=p, opt_state=s)
    with pytest.raises(ValueError, match="different optimizer"):
        checkpoint.load(tmp_path / "d.npz", opt_state_like=optax.sgd(0.1, momentum=0.9).init(p))


def test_corrupt_or_truncated_checkpoint(tmp_path):
    net, opt, p, s = _state()
    path = checkpoint.save(tmp_path / "c.npz", net=net, params=p, opt_state=s)
    raw = path.read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "t.npz")
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.npz")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net, opt, p, s = _state()
    path = checkpoint.save(tmp_path / "c.npz", net=net, params=p, step=1)
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, net=net, params=p, step=2)
    assert checkpoint.load(path).step == 1
    assert [q.name for q in tmp_path.iterdir()] == ["c.npz"]
