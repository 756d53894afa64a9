"""The lectures' worked examples, computed through fnn's own layers, losses and backward pass."""

import jax.numpy as jnp
import numpy as np
import pytest

import fnn


def _layer(w, b=None):
    w = jnp.asarray(w, jnp.float64)
    return {"W": w, "b": jnp.zeros(w.shape[1], jnp.float64) if b is None else jnp.asarray(b, jnp.float64)}


def test_sum_times_product(x64):
    # f(x, y, z) = (x + y) z at (-2, 5, -4). The sum q = x + y is one identity layer
    # with W = [1, 1]ᵀ; f = q z, so the message arriving at q is ∂f/∂q = z.
    x, y, z = -2.0, 5.0, -4.0
    net = fnn.MLP((2, 1), ("identity",))
    params = [_layer([[1.0], [1.0]])]
    q, cache = fnn.forward_with_cache(net, params, jnp.array([[x, y]]))
    assert float(q[0, 0]) == 3.0 and float(q[0, 0]) * z == -12.0
    _, d_xy = fnn.backward_with_input_grad(net, params, cache, jnp.array([[z]]))
    df_dz = float(q[0, 0])
    assert d_xy.tolist() == [[-4.0, -4.0]] and df_dz == 3.0


def test_logistic_loss(x64):
    # l = -log σ(w·x) with x = (1, 1, 1), w = (1, 1, -1.5): one identity layer and
    # the binary cross-entropy on its logit with target 1.
    net = fnn.MLP((3, 1), ("identity",))
    params = [_layer([[1.0], [1.0], [-1.5]])]
    x = jnp.ones((1, 3))
    loss, grads = fnn.value_and_grad(net, "binary_cross_entropy", params, x, jnp.array([1.0]))
    assert float(loss) == pytest.approx(np.log1p(np.exp(-0.5)), rel=1e-15)
    assert round(float(loss), 5) == 0.47408  # the slide rounds intermediates and shows 0.4740
    assert np.round(np.asarray(grads[0]["W"][:, 0]), 4).tolist() == [-0.3775] * 3


def test_chain_rule_example(x64):
    # z1 = 2x, z2 = z1², z3 = e^{z2}, y = log z3 at x = 0.5: dy/dx = 4.
    # Each step is a width-1 layer; the non-linear ones are user-defined activations
    # with their hand-written derivatives.
    square = fnn.Activation("square", lambda z: z * z, lambda z, y: 2 * z)
    exp = fnn.Activation("exp", jnp.exp, lambda z, y: y)
    log = fnn.Activation("log", jnp.log, lambda z, y: 1 / z)
    net = fnn.MLP((1, 1, 1, 1, 1), ("identity", square, exp, log))
    params = [_layer([[2.0]]), _layer([[1.0]]), _layer([[1.0]]), _layer([[1.0]])]
    y, cache = fnn.forward_with_cache(net, params, jnp.array([[0.5]]))
    assert [float(z[0, 0]) for z in cache.outputs] == pytest.approx([1.0, 1.0, np.e, 1.0])
    _, dy_dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    assert float(dy_dx[0, 0]) == pytest.approx(4.0, rel=1e-15)


def test_bias_as_a_weight_gives_the_same_gradients(x64):
    # The lectures' trick: y_0 = 1 prepended to the input and w_0j = b_j make the bias an
    # ordinary weight. A layer without bias on the augmented input has the same output and
    # gradients as (W, b): ∂R/∂w_0j = ∂R/∂b_j.
    import jax
    import jax.numpy as jnp

    import fnn

    key = jax.random.key(0)
    x = jax.random.normal(key, (7, 3), jnp.float64)
    v = jnp.array([0, 1, 1, 0, 1, 0, 0])
    net = fnn.MLP((3, 2), ("identity",))
    params = [{"W": jax.random.normal(jax.random.key(1), (3, 2), jnp.float64),
               "b": jnp.array([0.3, -0.2], jnp.float64)}]
    augmented = [{"W": jnp.concatenate([params[0]["b"][None], params[0]["W"]]), "b": jnp.zeros(2, jnp.float64)}]
    net_aug = fnn.MLP((4, 2), ("identity",))
    x_aug = jnp.concatenate([jnp.ones((7, 1), jnp.float64), x], 1)
    value, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    value_aug, grads_aug = fnn.value_and_grad(net_aug, "softmax_cross_entropy", augmented, x_aug, v)
    assert float(value) == pytest.approx(float(value_aug), rel=1e-14)
    np.testing.assert_allclose(grads_aug[0]["W"][0], grads[0]["b"], rtol=1e-13)
    np.testing.assert_allclose(grads_aug[0]["W"][1:], grads[0]["W"], rtol=1e-13)


def test_trace_records_every_message_of_the_backward_pass(x64):
    import jax
    import jax.numpy as jnp

    import fnn

    net = fnn.MLP((2, 3, 2, 2), ("sigmoid", "tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    x, v = jax.random.normal(jax.random.key(1), (4, 2), jnp.float64), jnp.array([0, 1, 1, 0])
    t = fnn.trace(net, "softmax_cross_entropy", params, x, v)
    _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v, method="autodiff")
    assert [l.layer for l in t.layers] == [1, 2, 3]
    for layer, g in zip(t.layers, grads):
        np.testing.assert_allclose(layer.grad_W, g["W"], rtol=1e-12)
        np.testing.assert_allclose(layer.grad_b, g["b"], rtol=1e-12)
    for lower, upper in zip(t.layers, t.layers[1:]):  # the message sent down is the one that arrives
        np.testing.assert_array_equal(upper.delta_in, lower.delta_y)
        np.testing.assert_array_equal(upper.y_in, lower.y)
    assert "layer 3  δz" in str(t) and t._repr_html_().count("<tr>") == 1 + 10 * 3


# --- deck 000/004: the first-order optimality condition ---------------------------------------------

def test_gradient_is_zero_at_the_minimum(x64):
    # ∇R(w*) = 0 at a minimum. For a linear model with MSE, w* is the least-squares solution
    # (closed form); fnn's hand-written gradient vanishes there and nowhere near it.
    import jax

    x = jax.random.normal(jax.random.key(0), (50, 3), jnp.float64)
    v = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * jax.random.normal(jax.random.key(1), (50, 1),
                                                                             jnp.float64)
    w, *_ = np.linalg.lstsq(np.c_[np.ones(50), x], np.asarray(v), rcond=None)
    net = fnn.MLP((3, 1), ("identity",))
    best = [{"W": jnp.asarray(w[1:]), "b": jnp.asarray(w[0])}]
    _, grads = fnn.value_and_grad(net, "mse", best, x, v)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-13
    nearby = [{"W": best[0]["W"] + 0.01, "b": best[0]["b"]}]
    _, grads = fnn.value_and_grad(net, "mse", nearby, x, v)
    assert float(jnp.abs(grads[0]["W"]).max()) > 1e-3
    # and it is a minimum: the Hessian there (of the weights) is positive definite.
    risk = lambda W: fnn.value_and_grad(net, "mse", [{"W": W, "b": best[0]["b"]}], x, v)[0]
    assert np.linalg.eigvalsh(np.asarray(jax.hessian(risk)(best[0]["W"]))[:, 0, :, 0]).min() > 0


# --- deck 003: computation graphs --------------------------------------------------------------------

def test_computation_graph_h_2x_y_3h(x64):
    # h = 2x, y = 3h: two identity layers; the backward messages are ∂y/∂h = 3, then ∂y/∂x = 3·2 = 6.
    net = fnn.MLP((1, 1, 1), ("identity", "identity"))
    params = [_layer([[2.0]]), _layer([[3.0]])]
    y, cache = fnn.forward_with_cache(net, params, jnp.array([[0.7]]))
    assert float(y[0, 0]) == pytest.approx(4.2)
    _, dy_dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    assert float(dy_dx[0, 0]) == 6.0


def test_a_node_off_the_path_gets_no_gradient(x64):
    # t = 2x is computed but y = 3h does not use it: in the graph ∂y/∂t does not exist, and an
    # autodiff system reports it as 0 (or None) — although in "pure maths" y = 3t, so dy/dt = 3.
    import jax

    def graph(x, t_offset=0.0):
        t = 2 * x + t_offset  # a node of the graph that y does not read
        h = 2 * x
        return 3 * h, t

    assert jax.grad(lambda off: graph(0.7, off)[0])(0.0) == 0.0
    # The same in fnn: layer 1 computes (h, t) = (2x, 2x), layer 2 reads h only (weight 0 on t).
    # The message arriving at layer 1's outputs is ∂y/∂b₁ = (∂y/∂h, ∂y/∂t) = (3, 0).
    net = fnn.MLP((1, 2, 1), ("identity", "identity"))
    params = [_layer([[2.0, 2.0]]), _layer([[3.0], [0.0]])]
    _, cache = fnn.forward_with_cache(net, params, jnp.array([[0.7]]))
    grads, dy_dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    assert np.asarray(grads[0]["b"]).tolist() == [3.0, 0.0] and float(dy_dx[0, 0]) == 6.0


def test_branching_total_derivative_is_3(x64):
    # α = x + y with x = z, y = 2z: dα/dz = ∂α/∂x·dx/dz + ∂α/∂y·dy/dz = 1·1 + 1·2 = 3. As a net:
    # layer 1 branches z into (x, y) with W = [1, 2]; layer 2 sums them with W = [1, 1]ᵀ.
    net = fnn.MLP((1, 2, 1), ("identity", "identity"))
    params = [_layer([[1.0, 2.0]]), _layer([[1.0], [1.0]])]
    alpha, cache = fnn.forward_with_cache(net, params, jnp.array([[0.4]]))
    assert float(alpha[0, 0]) == pytest.approx(1.2)
    _, d_dz = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    assert float(d_dz[0, 0]) == 3.0


# --- deck 003: vector and matrix calculus (checked against jax.jacfwd / jax.hessian) ---------------

def _rand(key, *shape):
    import jax

    return jax.random.normal(jax.random.key(key), shape, jnp.float64)


def test_jacobian_layout_is_m_by_n(x64):
    # y = f(x), x ∈ ℝᴺ, y ∈ ℝᴹ: ∂y/∂x is M × N with entry (i, j) = ∂y(i)/∂x(j) (numerator layout).
    import jax

    f = lambda x: jnp.stack([x[0] * x[1], jnp.sin(x[2])])  # M = 2, N = 3
    x = jnp.array([0.5, -1.0, 2.0])
    J = jax.jacfwd(f)(x)
    assert J.shape == (2, 3)
    np.testing.assert_allclose(J, [[x[1], x[0], 0.0], [0.0, 0.0, np.cos(x[2])]], rtol=1e-15)
    # A scalar y (M = 1) gives a row vector; ∂y/∂xᵀ = (∂y/∂x)ᵀ is the column (gradient) form.
    g = jax.jacfwd(lambda x: jnp.sum(x ** 3, keepdims=True))(x)
    assert g.shape == (1, 3) and g.T.shape == (3, 1)
    np.testing.assert_allclose(g[0], 3 * x ** 2, rtol=1e-15)


def test_linear_and_quadratic_forms(x64):
    import jax

    A, x, y = _rand(0, 4, 3), _rand(1, 3), _rand(2, 4)
    np.testing.assert_allclose(jax.jacfwd(lambda x: A @ x)(x), A, rtol=1e-15)  # ∂(Ax)/∂x = A
    np.testing.assert_allclose(jax.grad(lambda x: y @ A @ x)(x), y @ A, rtol=1e-14)  # ∂(yᵀAx)/∂x = yᵀA
    np.testing.assert_allclose(jax.grad(lambda y: y @ A @ x)(y), x @ A.T, rtol=1e-14)  # ∂(yᵀAx)/∂y = xᵀAᵀ
    B = _rand(3, 3, 3)  # not symmetric: ∂(xᵀBx)/∂x = xᵀ(Bᵀ + B), not 2xᵀB
    np.testing.assert_allclose(jax.grad(lambda x: x @ B @ x)(x), x @ (B.T + B), rtol=1e-14)
    assert not np.allclose(x @ (B.T + B), 2 * x @ B)


def test_chain_rules_of_the_vector_forms(x64):
    # x(z), y(z): ∂(yᵀx)/∂z = xᵀ ∂y/∂z + yᵀ ∂x/∂z;  ∂(xᵀx)/∂z = 2xᵀ ∂x/∂z;
    # ∂(yᵀAx)/∂z = xᵀAᵀ ∂y/∂z + yᵀA ∂x/∂z;  ∂(xᵀAx)/∂z = xᵀ(A + Aᵀ) ∂x/∂z.
    import jax

    z, P, Q, A = _rand(4, 2), _rand(5, 3, 2), _rand(6, 3, 2), _rand(7, 3, 3)
    xf, yf = (lambda z: jnp.tanh(P @ z)), (lambda z: jnp.sin(Q @ z))
    x, y, dx, dy = xf(z), yf(z), jax.jacfwd(xf)(z), jax.jacfwd(yf)(z)
    grad = lambda f: jax.grad(f)(z)
    np.testing.assert_allclose(grad(lambda z: yf(z) @ xf(z)), x @ dy + y @ dx, rtol=1e-13)
    np.testing.assert_allclose(grad(lambda z: xf(z) @ xf(z)), 2 * x @ dx, rtol=1e-13)
    np.testing.assert_allclose(grad(lambda z: yf(z) @ A @ xf(z)), x @ A.T @ dy + y @ A @ dx, rtol=1e-13)
    np.testing.assert_allclose(grad(lambda z: xf(z) @ A @ xf(z)), x @ (A + A.T) @ dx, rtol=1e-13)


def _cvec(A):
    """Column vectorisation: the columns of A stacked (deck 003's vec)."""
    return jnp.reshape(A, (-1,), order="F")


def test_vec_of_a_matrix():
    W = np.array([[11, 12, 13], [21, 22, 23]])
    assert np.asarray(_cvec(W)).tolist() == [11, 21, 12, 22, 13, 23]  # cvec(W) = vec(W)
    assert W.reshape(-1).tolist() == [11, 12, 13, 21, 22, 23]  # rvec(W): numpy's row-major order


def test_second_derivative_is_mn_by_n(x64):
    # y ∈ ℝᴹ, x ∈ ℝᴺ: ∂²y/∂x∂x = ∂/∂x vec((∂y/∂x)ᵀ), an MN × N matrix: block i is y(i)'s Hessian.
    import jax

    M, N = 2, 3
    C = _rand(8, M, N)
    f = lambda x: jnp.tanh(C @ x) * jnp.sum(x ** 2)
    x = _rand(9, N)
    second = jax.jacfwd(lambda x: _cvec(jax.jacfwd(f)(x).T))(x)
    assert second.shape == (M * N, N)
    np.testing.assert_allclose(second, jnp.reshape(jax.hessian(f)(x), (M * N, N)), rtol=1e-13)


def test_fnn_weight_orientation_against_the_decks(x64):
    # fnn's W is (d_in, d_out) and a layer computes f(Wᵀx + b) for a column x (batch rows: xW + b):
    # deck 003's convention (W is M × N, column j belongs to unit j). Deck 001 writes a = W h with
    # W ∈ ℝ^{d_l × d_{l−1}}: deck 001's W is fnn's Wᵀ. Jacobians of the affine layer:
    # ∂z/∂x = Wᵀ, and ∂z/∂vec(W) = I_N ⊗ xᵀ (z = (xᵀW)ᵀ, vec(ABC) = (Cᵀ ⊗ A) vec(B)).
    import jax

    W, b, x = _rand(10, 3, 2), _rand(11, 2), _rand(12, 3)
    net = fnn.MLP((3, 2), ("identity",))
    layer = lambda x, W: fnn.forward(net, [{"W": W, "b": b}], x[None])[0]
    np.testing.assert_allclose(layer(x, W), W.T @ x + b, rtol=1e-14)  # deck 003: Wᵀx + b
    np.testing.assert_allclose(jax.jacfwd(layer)(x, W), W.T, rtol=1e-14)
    by_vec = jax.jacfwd(lambda w: layer(x, jnp.reshape(w, (3, 2), order="F")))(_cvec(W))
    np.testing.assert_allclose(by_vec, jnp.kron(jnp.eye(2), x[None]), rtol=1e-14)
    # The gradient fnn's backward pass returns is the same Jacobian, contracted with the message δ:
    # ∂(δᵀz)/∂W = x δᵀ (an outer product shaped like W).
    delta = jnp.array([[0.3, -1.2]])
    _, cache = fnn.forward_with_cache(net, [{"W": W, "b": b}], x[None])
    grads, _ = fnn.backward_with_input_grad(net, [{"W": W, "b": b}], cache, delta)
    np.testing.assert_allclose(grads[0]["W"], jnp.outer(x, delta[0]), rtol=1e-14)
    np.testing.assert_allclose(_cvec(grads[0]["W"]), delta[0] @ by_vec, rtol=1e-14)


def test_conventions_where_fnn_departs_from_the_slides(x64):
    # step(0) = 1 in fnn; deck 001's g(0) = 0. Both have zero derivative (nothing flows back).
    step = fnn.get_activation("step")
    assert step.fn(jnp.array([-1.0, 0.0, 1.0])).tolist() == [0.0, 1.0, 1.0]
    assert step.grad(jnp.array([0.5]), None).tolist() == [0.0]
    # fnn's mse is deck 001's ½‖y − a‖²₂: gradient y − v. Deck 003's (y − t)² and PyTorch's MSELoss have no ½,
    # so their gradient is 2(y − t), twice fnn's (test_single_neuron_squared_error_without_the_half).
    y, v = jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 4.0]])
    mse = fnn.get_loss("mse")
    assert float(mse.value(y, v)[0]) == 0.5 * (0.25 + 4.0) and mse.grad(y, v).tolist() == [[0.5, -2.0]]


def test_single_neuron_squared_error_without_the_half(x64):
    # Deck 003's single neuron y = f(v), v = Wᵀx + b, L = (y − t)²: ∂L/∂W = 2(y − t) f′(v) xᵀ (the slide's
    # row layout; fnn's ∂/∂W is shaped like W, the column x). No ½ there, so it is 2 × fnn's mse gradient.
    import jax

    x, t = jnp.array([0.4, -1.3, 0.8]), 0.25
    W, b = jnp.array([[0.7], [0.2], [-0.5]]), jnp.array([0.1])
    net = fnn.MLP((3, 1), ("tanh",))
    v = x @ W[:, 0] + b[0]
    y = jnp.tanh(v)
    closed_form = 2 * (y - t) * (1 - y ** 2) * x
    L = lambda W: (fnn.forward(net, [{"W": W, "b": b}], x[None])[0, 0] - t) ** 2
    np.testing.assert_allclose(jax.grad(L)(W)[:, 0], closed_form, rtol=1e-14)
    half, grads = fnn.value_and_grad(net, "mse", [{"W": W, "b": b}], x[None], jnp.array([[t]]))
    assert float(half) == pytest.approx(0.5 * float(L(W)), rel=1e-15)
    np.testing.assert_allclose(2 * grads[0]["W"][:, 0], closed_form, rtol=1e-14)


def test_network_2_3_2_1_against_jax_grad(x64):
    # Deck 001's 2-3-2-1 example: scalar output, its W⁽³⁾ ∈ ℝ^{1×2} (out × in). fnn stores W as
    # (in × out), so fnn's W3 is (2, 1), the transpose of the slide's; every W is deck 001's Wᵀ.
    import jax

    net = fnn.MLP((2, 3, 2, 1), ("sigmoid", "tanh", "identity"))
    params = fnn.init(jax.random.key(3), net)
    assert [p["W"].shape for p in params] == [(2, 3), (3, 2), (2, 1)]
    x = jax.random.normal(jax.random.key(4), (5, 2), jnp.float64)
    for loss, v in (("mse", jax.random.normal(jax.random.key(5), (5, 1), jnp.float64)),
                    ("binary_cross_entropy", jnp.array([[0.0], [1.0], [1.0], [0.0], [1.0]]))):
        value, grads = fnn.value_and_grad(net, loss, params, x, v)
        auto = jax.grad(lambda p: fnn.risk(loss, fnn.forward(net, p, x), v))(params)
        assert float(value) == pytest.approx(float(fnn.risk(loss, fnn.forward(net, params, x), v)), rel=1e-14)
        for g, a in zip(grads, auto):
            np.testing.assert_allclose(g["W"], a["W"], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(g["b"], a["b"], rtol=1e-12, atol=1e-15)
        # In deck 001's orientation ∂R/∂W⁽³⁾ = Σ_b δ⁽³⁾_b h⁽²⁾_bᵀ is 1 × 2: fnn's ∂R/∂W3 transposed.
        top = fnn.trace(net, loss, params, x, v).layers[2]
        np.testing.assert_allclose(top.delta_z.T @ top.y_in, grads[2]["W"].T, rtol=1e-12)
