"""Gradient checking: the hand-written gradient against ``jax.grad`` and finite differences.

Errors are reported per layer and per parameter (``W``, ``b``) so that a wrong
derivative is located, not just detected. An error made in layer ``l``'s
backward rule also corrupts every layer below it (the message flows down), so
the report names the *last* layer (in forward order) that disagrees: that is
where the backward pass first went wrong.

Finite differences are taken along random unit directions, one set per
parameter tensor: ``(R(θ + εu) − R(θ − εu)) / 2ε ≈ ⟨∇R, u⟩``. This costs
``2 × directions`` forward passes (and one backward) per tensor instead of two per
scalar. Examples with a kink inside the step are left out of both sides of each
comparison (:mod:`fnn.core.kinks`), so a correct network with relu units near zero passes.

A finite difference cannot resolve a directional derivative smaller than the rounding of the
risk it differences: each evaluation of ``R`` is exact only to about ``eps_dtype · max(1, |R|)``
(a log-sum-exp rounds at the scale of its largest term, ``exp(0) = 1``), so the quotient carries
noise up to ``FD_NOISE_ULPS · eps_dtype · max(1, |R|) / ε``, the report's ``fd_floor``. The
finite-difference column passes a direction whose error is within ``fd_tol`` of the gradient's
norm *or* within that floor: at convergence (``|∇R|`` ~ 1e-7 in float32) the quotient is noise,
and only the ``jax.grad`` column can judge the backward.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.backprop import Objective, autodiff_value_and_grad, manual_value_and_grad
from fnn.core.kinks import kinked_examples
from fnn.core.losses import Loss, get_loss, risk, risk_grad
from fnn.core.network import MLP, Params
from fnn.core.validation import check_params_finite, validate


AUTODIFF = "vs jax.grad"
# Rounding errors, in units of the dtype's eps × max(1, |R|), that one evaluation of the risk may
# carry: a few operations' worth (the output layer's sums, the loss, the mean over examples).
FD_NOISE_ULPS = 4.0
# The jax.grad column's floor: an output gradient is rounded to about this many ulps of 1/B per
# entry (1 − σ(z) near a confident output loses its digits in either pass), which the
# backward pass in absolute values carries to each parameter; an error within it passes.
AD_NOISE_ULPS = 16.0
FINITE_DIFFERENCES = "vs finite differences"


@dataclasses.dataclass(frozen=True)
class GradcheckRow:
    """One parameter tensor's line of a :class:`GradcheckReport`.

    Attributes:
      layer: the layer, 1-based as in the lectures (``params[layer - 1]``).
      param: ``"W"`` or ``"b"``.
      norm: ``‖∂R/∂θ‖₂`` from the hand-written backward.
      autodiff_error: ``‖g_manual − g_jax.grad‖ / max(‖g_manual‖, ‖g_jax.grad‖, ‖|g|‖)``, where
        ``|g|`` is the backward pass taken in absolute values (every term's size): rounding scales
        with the terms, so a gradient that is a near-cancelling sum is compared at their scale.
      fd_error: the worst ``|⟨g_manual, u⟩ − (R(θ+εu) − R(θ−εu))/2ε|`` over the random unit
        directions ``u``, relative to ``max(‖g‖, |quotient|, fd_floor / fd_tol)``, both taken
        over the examples with no kink inside the step (see :mod:`fnn.core.kinks`); NaN ("n/a" in the table) when every
        example of every direction met a kink, so that nothing could be compared.
      fd_skipped: the fraction of (direction, example) pairs left out of ``fd_error`` because
        a pre-activation or the loss met a kink within the step.
    """

    layer: int  # 1-based, as in the lectures
    param: str  # "W" or "b"
    norm: float  # ‖∂R/∂θ‖ from the manual pass
    autodiff_error: float  # ‖manual − jax.grad‖ / max(‖manual‖, ‖jax.grad‖, size of the summed terms)
    fd_error: float  # worst relative error of ⟨manual, u⟩ against the finite difference
    fd_skipped: float = 0.0  # fraction of (direction, example) pairs at a kink, left out


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """The per-layer comparison :func:`gradcheck` returns; ``print`` it for the table.

    Attributes:
      rows: one :class:`GradcheckRow` per layer and parameter, in forward order.
      autodiff_tol, fd_tol: the relative-error thresholds a row must meet.
      dtype: the parameters' dtype (the tolerances depend on it).
      fd_floor: the rounding noise of a finite-difference quotient (units of ``∂R/∂θ``):
        ``FD_NOISE_ULPS · eps_dtype · max(1, |R|) / ε``. An error within it passes whatever the
        gradient's size, so a gradient well below ``fd_floor / fd_tol`` is not judged by
        finite differences (only by ``jax.grad``).
    """

    rows: tuple[GradcheckRow, ...]
    autodiff_tol: float
    fd_tol: float
    dtype: str
    fd_floor: float = 0.0

    def failed_columns(self, row: GradcheckRow) -> tuple[str, ...]:
        """The comparisons ``row`` fails: ``"vs jax.grad"``, ``"vs finite differences"``, both or none."""
        return tuple(name for name, bad in ((AUTODIFF, row.autodiff_error > self.autodiff_tol),
                                            (FINITE_DIFFERENCES, row.fd_error > self.fd_tol)) if bad)

    @property
    def failures(self) -> tuple[GradcheckRow, ...]:
        """The rows over either tolerance."""
        return tuple(r for r in self.rows if self.failed_columns(r))

    @property
    def columns(self) -> tuple[str, ...]:
        """The comparisons that failed somewhere, in table order (empty when all agree)."""
        failed = {c for r in self.rows for c in self.failed_columns(r)}
        return tuple(c for c in (AUTODIFF, FINITE_DIFFERENCES) if c in failed)

    @property
    def ok(self) -> bool:
        """Whether every row is within both tolerances."""
        return not self.failures

    @property
    def autodiff_ok(self) -> bool:
        """Whether every row agrees with ``jax.grad`` (the finite differences aside)."""
        return AUTODIFF not in self.columns

    @property
    def worst(self) -> GradcheckRow:
        """The row furthest over (or nearest to) its tolerances."""
        fd = lambda r: 0.0 if np.isnan(r.fd_error) else r.fd_error / self.fd_tol
        return max(self.rows, key=lambda r: max(r.autodiff_error / self.autodiff_tol, fd(r)))

    @property
    def suspect_layer(self) -> int | None:
        """The layer whose backward rule first disagrees (the deepest failing layer), or None."""
        return max((r.layer for r in self.failures), default=None)

    @property
    def verdict(self) -> str:
        """One line: all agree, or which comparison fails first at which layer."""
        if self.ok:
            return "all layers agree"
        return (f"the hand-written backward first disagrees at layer {self.suspect_layer} "
                f"({' and '.join(self.columns)}; layers below it inherit its error)")

    def _cells(self, r: GradcheckRow) -> tuple[str, ...]:
        failed = self.failed_columns(r)
        status = "ok" if not failed else "MISMATCH " + " and ".join(failed)
        fd = "n/a" if np.isnan(r.fd_error) else f"{r.fd_error:.2e}"
        return (str(r.layer), str(r.param), f"{r.norm:.3e}", f"{r.autodiff_error:.2e}", fd,
                f"{100 * r.fd_skipped:.0f}%", status)

    def _repr_html_(self) -> str:
        """The table as HTML, for notebooks: failing rows in red."""
        import html

        heads = ("layer", "param", "|grad|", "vs jax.grad", "vs fin. diff.", "at kinks", "status")
        head = "".join(f"<th>{h}</th>" for h in heads)
        rows = []
        for r in self.rows:
            style = ' style="color:#b00"' if self.failed_columns(r) else ""
            rows.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in self._cells(r)) + "</tr>")
        return (f"<p>gradcheck ({self.dtype}): manual backward vs jax.grad (tol {self.autodiff_tol:.0e}) and "
                f"finite differences (tol {self.fd_tol:.0e}): <b>{html.escape(self.verdict)}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def __str__(self) -> str:
        lines = [
            f"gradcheck ({self.dtype}): manual backward vs jax.grad (tol {self.autodiff_tol:.0e}) "
            f"and finite differences (tol {self.fd_tol:.0e}, noise floor {self.fd_floor:.0e}, "
            "leaving out examples at a kink)",
            f"{'layer':>5} {'param':>5} {'|grad|':>10} {'vs jax.grad':>12} {'vs fin.diff':>12} "
            f"{'at kinks':>8}  status",
        ]
        for r in self.rows:
            c = self._cells(r)
            lines.append(f"{c[0]:>5} {c[1]:>5} {c[2]:>10} {c[3]:>12} {c[4]:>12} {c[5]:>8}  {c[6]}")
        lines.append(self.verdict)
        return "\n".join(lines)


def _fd_error(fd: np.ndarray, directional: np.ndarray, norms: np.ndarray, skipped: np.ndarray,
              least: float = 0.0) -> float:
    # Per direction, the error relative to the gradient's norm over the same examples (a
    # directional derivative can be near zero by chance even when the gradient is not), and
    # never to less than ``least`` (the noise floor over the tolerance); directions along
    # which every example met a kink compare nothing.
    compared = skipped < 1
    if not compared.any():
        return float("nan")
    scale = np.maximum(np.maximum(norms, np.abs(fd)), least)[compared]
    err = np.abs(fd - directional)[compared]
    return float(np.max(np.where(scale > 0, err / np.where(scale > 0, scale, 1), 0.0)))


def _rel(a: np.ndarray, b: np.ndarray, size: np.ndarray, least: float = 0.0) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(size), least)
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def gradcheck(
    net: MLP,
    loss: str | Loss,
    params: Params,
    x,
    v,
    *,
    key: jax.Array | None = None,
    directions: int = 3,
    eps: float | None = None,
    autodiff_tol: float | None = None,
    fd_tol: float | None = None,
) -> GradcheckReport:
    """Compares the hand-written gradient with ``jax.grad`` and central finite differences.

    The finite differences leave out, per direction, the examples for which a pre-activation
    or the loss meets a kink within the step (relu, leaky_relu and step at 0; mae, mape and
    huber at theirs; see :mod:`fnn.core.kinks`): there a difference quotient mixes two slopes and
    would fail a correct backward. The hand-written gradient is recomputed over the same
    examples, so both sides of the comparison see one risk. The report names the column that
    fails: ``"vs jax.grad"`` (the hand-written rules disagree with autodiff of the forward
    pass) or ``"vs finite differences"`` (they disagree with the forward pass's values).

    Args:
      net, loss, params, x, v: as for :func:`fnn.value_and_grad`.
      key: PRNG key for the finite-difference directions (default ``key(0)``).
      directions: random directions per parameter tensor.
      eps: finite-difference step (default 1e-6 in float64, 1e-2 in float32).
      autodiff_tol, fd_tol: relative-error thresholds; defaults suit the dtype
        (1e-10 / 1e-6 in float64, 1e-5 / 1e-2 in float32).

    Returns:
      A :class:`GradcheckReport`; ``print`` it for the per-layer table, or read
      ``report.ok``, ``report.columns`` and ``report.suspect_layer``.

    Raises:
      ValueError: for parameters, inputs or targets that do not fit the network and loss,
        or non-finite parameters.

    Example:
      >>> import jax, jax.numpy as jnp, fnn
      >>> net = fnn.MLP((3, 4, 2), ("tanh", "identity"))
      >>> params = fnn.init(jax.random.key(0), net)
      >>> x, labels = jax.random.normal(jax.random.key(1), (5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, labels)
      >>> report.ok, len(report.rows)       # W and b of two layers
      (True, 4)
    """
    loss = get_loss(loss)
    validate(net, loss, params, x, v)
    check_params_finite(params)
    dtype = jnp.result_type(params[0]["W"])
    f64 = dtype == jnp.float64
    eps = eps if eps is not None else (1e-6 if f64 else 1e-2)
    autodiff_tol = autodiff_tol if autodiff_tol is not None else (1e-10 if f64 else 1e-5)
    fd_tol = fd_tol if fd_tol is not None else (1e-6 if f64 else 1e-2)
    key = jax.random.key(0) if key is None else key

    value, manual, auto, sizes, noise, fd, directional, norms, skipped = _compute(net, loss, params, x, v, key,
                                                                                 directions, eps)
    ad_floor = AD_NOISE_ULPS * float(jnp.finfo(dtype).eps) / autodiff_tol
    floor = FD_NOISE_ULPS * float(jnp.finfo(dtype).eps) * max(1.0, abs(float(value))) / eps
    rows = []
    for l in range(net.num_layers):
        for name in ("W", "b"):
            g = np.asarray(manual[l][name])
            rows.append(GradcheckRow(l + 1, name, float(np.linalg.norm(g)),
                                     _rel(g, np.asarray(auto[l][name]), np.asarray(sizes[l][name]),
                                          ad_floor * float(np.linalg.norm(np.asarray(noise[l][name])))),
                                     _fd_error(*(np.asarray(a[l][name]) for a in (fd, directional, norms,
                                                                                   skipped)), floor / fd_tol),
                                     float(np.mean(np.asarray(skipped[l][name])))))
    return GradcheckReport(tuple(rows), autodiff_tol, fd_tol, str(dtype), floor)


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def _compute(net, loss, params, x, v, key, directions, eps):
    # One compiled call: both gradients, then every finite difference in one lax.map over
    # (tensor, direction) pairs. A loop rather than a copy of the network per tensor keeps
    # the program, and its compile time, the size of a few forward passes.
    objective = Objective(net, loss)
    _, manual = manual_value_and_grad(objective, params, x, v)
    _, auto = autodiff_value_and_grad(objective, params, x, v)
    leaves, treedef = jax.tree.flatten(params)
    units = _directions(leaves, key, directions)
    mid = objective.evaluate(params, x, v)
    dout = risk_grad(loss, mid[1], v)
    sizes = _magnitudes(net, params, mid[2], dout)
    noise = _magnitudes(net, params, mid[2], jnp.full_like(dout, 1.0 / dout.reshape(-1, dout.shape[-1]).shape[0]))

    def one(k):
        i, r = k // directions, k % directions  # move tensor i along its r-th direction only
        u = [jnp.where(i == j, units[j][r], jnp.zeros_like(a)) for j, a in enumerate(leaves)]
        shifted = lambda s: treedef.unflatten([a + s * d for a, d in zip(leaves, u)])
        (_, out_m, cache_m), (_, out_p, cache_p) = (objective.evaluate(shifted(s), x, v) for s in (-eps, eps))
        # Examples with a kink inside the step are left out of both sides of the comparison.
        kinked = kinked_examples(net, loss, v, (cache_m, mid[2], cache_p), (out_m, mid[1], out_p))
        keep = (~kinked).astype(leaves[0].dtype)
        fd = (risk(loss, out_p, v, keep) - risk(loss, out_m, v, keep)) / (2 * eps)
        kept = jax.tree.leaves(manual_value_and_grad(objective, params, x, v, keep)[1])
        norm = jnp.stack([jnp.linalg.norm(g) for g in kept])[i]
        return fd, sum(jnp.vdot(d, g) for d, g in zip(u, kept)), norm, jnp.mean(kinked.astype(keep.dtype))

    per_direction = jax.lax.map(one, jnp.arange(len(leaves) * directions))
    split = lambda a: treedef.unflatten(list(a.reshape(len(leaves), directions)))
    return mid[0], manual, auto, sizes, noise, *(split(a) for a in per_direction)


def _magnitudes(net, params, cache, dout):
    """The backward pass with every factor and term in absolute value: ``|y_{l−1}|ᵀ |δz_l|``
    with ``|δz_l| = |δy_l| ⊙ |f'(z_l)|`` and ``|δy_{l−1}| = |δz_l| |W_l|ᵀ``. It bounds the size of
    the terms each gradient entry is a sum of, which is what float rounding scales with: a
    gradient that is a near-cancelling sum (an output bias at balanced classes) is exact only
    to rounding of its terms, in the hand-written pass and in ``jax.grad`` alike."""
    sizes, delta = [None] * net.num_layers, jnp.abs(dout)
    for l in reversed(range(net.num_layers)):
        dz = delta * jnp.abs(net.activations[l].grad(cache.pre_activations[l], cache.outputs[l]))
        if l < net.num_layers - 1 and cache.masks[l] is not None:
            dz = dz * jnp.abs(cache.masks[l])
        y = jnp.abs(cache.inputs[l])
        dz2, y2 = dz.reshape(-1, dz.shape[-1]), y.reshape(-1, y.shape[-1])
        sizes[l] = {"W": y2.T @ dz2, "b": jnp.sum(dz2, axis=0)}
        delta = dz @ jnp.abs(params[l]["W"]).T
    return sizes


def _directions(leaves, key, directions):
    """Per tensor, ``directions`` random unit vectors shaped like it."""
    # One draw for every tensor's directions: each separate jax.random.normal adds its own
    # copy of the generator to the program, about 0.2 s of compile time apiece on a CPU.
    sizes = [leaf.size for leaf in leaves]
    draw = jax.random.normal(key, (directions, sum(sizes)), leaves[0].dtype)
    units = []
    for leaf, u in zip(leaves, jnp.split(draw, np.cumsum(sizes)[:-1], axis=1)):
        u = u / jnp.sqrt(jnp.sum(u * u, axis=1, keepdims=True))
        units.append(u.reshape(directions, *leaf.shape))
    return units
