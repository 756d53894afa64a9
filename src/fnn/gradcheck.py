"""Gradient checking: the hand-written gradient against ``jax.grad`` and finite differences.

Errors are reported per layer and per parameter (``W``, ``b``) so that a wrong
derivative is located, not just detected. An error made in layer ``l``'s
backward rule also corrupts every layer below it (the message flows down), so
the report names the *last* layer (in forward order) that disagrees: that is
where the backward pass first went wrong.

Finite differences are taken along random unit directions, one set per
parameter tensor: ``(R(θ + εu) − R(θ − εu)) / 2ε ≈ ⟨∇R, u⟩``. This costs
``2 × directions`` forward passes per tensor instead of two per scalar.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn.backprop import Objective, autodiff_value_and_grad, manual_value_and_grad
from fnn.losses import Loss, get_loss
from fnn.network import MLP, Params
from fnn.validation import check_params_finite, validate


@dataclasses.dataclass(frozen=True)
class GradcheckRow:
    """One parameter tensor's line of a :class:`GradcheckReport`.

    Attributes:
      layer: the layer, 1-based as in the lectures (``params[layer - 1]``).
      param: ``"W"`` or ``"b"``.
      norm: ``‖∂R/∂θ‖₂`` from the hand-written backward.
      autodiff_error: ``‖g_manual − g_jax.grad‖ / max(‖g_manual‖, ‖g_jax.grad‖)``.
      fd_error: the worst ``|⟨g_manual, u⟩ − (R(θ+εu) − R(θ−εu))/2ε|`` over the random unit
        directions ``u``, relative to the gradient's norm.
    """

    layer: int  # 1-based, as in the lectures
    param: str  # "W" or "b"
    norm: float  # ‖∂R/∂θ‖ from the manual pass
    autodiff_error: float  # ‖manual − jax.grad‖ / max(‖manual‖, ‖jax.grad‖)
    fd_error: float  # worst relative error of ⟨manual, u⟩ against the finite difference


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """The per-layer comparison :func:`gradcheck` returns; ``print`` it for the table.

    Attributes:
      rows: one :class:`GradcheckRow` per layer and parameter, in forward order.
      autodiff_tol, fd_tol: the relative-error thresholds a row must meet.
      dtype: the parameters' dtype (the tolerances depend on it).
    """

    rows: tuple[GradcheckRow, ...]
    autodiff_tol: float
    fd_tol: float
    dtype: str

    @property
    def failures(self) -> tuple[GradcheckRow, ...]:
        """The rows over either tolerance."""
        return tuple(
            r for r in self.rows if r.autodiff_error > self.autodiff_tol or r.fd_error > self.fd_tol
        )

    @property
    def ok(self) -> bool:
        """Whether every row is within both tolerances."""
        return not self.failures

    @property
    def worst(self) -> GradcheckRow:
        """The row furthest over (or nearest to) its tolerances."""
        return max(self.rows, key=lambda r: max(r.autodiff_error / self.autodiff_tol, r.fd_error / self.fd_tol))

    @property
    def suspect_layer(self) -> int | None:
        """The layer whose backward rule first disagrees (the deepest failing layer), or None."""
        return max((r.layer for r in self.failures), default=None)

    def _repr_html_(self) -> str:
        """The table as HTML, for notebooks: failing rows in red."""
        import html

        head = "".join(f"<th>{h}</th>" for h in ("layer", "param", "|grad|", "vs jax.grad", "vs fin. diff.", "status"))
        rows = []
        for r in self.rows:
            bad = r.autodiff_error > self.autodiff_tol or r.fd_error > self.fd_tol
            style = ' style="color:#b00"' if bad else ""
            cells = (r.layer, html.escape(str(r.param)), f"{r.norm:.3e}", f"{r.autodiff_error:.2e}",
                     f"{r.fd_error:.2e}", "FAIL" if bad else "ok")
            rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        verdict = "all layers agree" if self.ok else f"suspect layer {self.suspect_layer}"
        return (f"<p>gradcheck ({self.dtype}): manual backward vs jax.grad (tol {self.autodiff_tol:.0e}) and "
                f"finite differences (tol {self.fd_tol:.0e}): <b>{verdict}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def __str__(self) -> str:
        lines = [
            f"gradcheck ({self.dtype}): manual backward vs jax.grad (tol {self.autodiff_tol:.0e}) "
            f"and finite differences (tol {self.fd_tol:.0e})",
            f"{'layer':>5} {'param':>5} {'|grad|':>10} {'vs jax.grad':>12} {'vs fin.diff':>12}  status",
        ]
        for r in self.rows:
            bad = r.autodiff_error > self.autodiff_tol or r.fd_error > self.fd_tol
            lines.append(
                f"{r.layer:>5} {r.param:>5} {r.norm:>10.3e} {r.autodiff_error:>12.2e} "
                f"{r.fd_error:>12.2e}  {'MISMATCH' if bad else 'ok'}"
            )
        if self.ok:
            lines.append("all layers agree")
        else:
            lines.append(
                f"backward pass first goes wrong at layer {self.suspect_layer} "
                "(layers below it inherit its error)"
            )
        return "\n".join(lines)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
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

    Args:
      net, loss, params, x, v: as for :func:`fnn.value_and_grad`.
      key: PRNG key for the finite-difference directions (default ``key(0)``).
      directions: random directions per parameter tensor.
      eps: finite-difference step (default 1e-6 in float64, 1e-2 in float32).
      autodiff_tol, fd_tol: relative-error thresholds; defaults suit the dtype
        (1e-10 / 1e-6 in float64, 1e-5 / 1e-2 in float32).

    Returns:
      A :class:`GradcheckReport`; ``print`` it for the per-layer table.
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

    manual, auto, fd, directional = _compute(net, loss, params, x, v, key, directions, eps)
    rows = []
    for l in range(net.num_layers):
        for name in ("W", "b"):
            g = np.asarray(manual[l][name])
            fd_lp, dir_lp = np.asarray(fd[l][name]), np.asarray(directional[l][name])
            # Error relative to the gradient's norm: a directional derivative can be
            # near zero by chance even when the gradient is not.
            scale = max(np.linalg.norm(g), np.abs(fd_lp).max())
            fd_err = 0.0 if scale == 0 else float(np.abs(fd_lp - dir_lp).max() / scale)
            rows.append(
                GradcheckRow(l + 1, name, float(np.linalg.norm(g)), _rel(g, np.asarray(auto[l][name])), fd_err)
            )
    return GradcheckReport(tuple(rows), autodiff_tol, fd_tol, str(dtype))


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def _compute(net, loss, params, x, v, key, directions, eps):
    # One compiled call: both gradients, then every finite difference in one lax.map over
    # (tensor, direction) pairs. A loop rather than a copy of the network per tensor keeps
    # the program, and its compile time, the size of two forward passes.
    objective = Objective(net, loss)
    _, manual = manual_value_and_grad(objective, params, x, v)
    _, auto = autodiff_value_and_grad(objective, params, x, v)
    risk_at = lambda p: objective.evaluate(p, x, v)[0]
    leaves, treedef = jax.tree.flatten(params)
    manual_leaves = jax.tree.leaves(manual)
    # One draw for every tensor's directions: each separate jax.random.normal adds its own
    # copy of the generator to the program, about 0.2 s of compile time apiece on a CPU.
    sizes = [leaf.size for leaf in leaves]
    draw = jax.random.normal(key, (directions, sum(sizes)), leaves[0].dtype)
    units = []  # per tensor, `directions` random unit vectors
    for leaf, u in zip(leaves, jnp.split(draw, np.cumsum(sizes)[:-1], axis=1)):
        u = u / jnp.sqrt(jnp.sum(u * u, axis=1, keepdims=True))
        units.append(u.reshape(directions, *leaf.shape))

    def one(k):
        i, r = k // directions, k % directions  # move tensor i along its r-th direction only
        u = [jnp.where(i == j, units[j][r], jnp.zeros_like(a)) for j, a in enumerate(leaves)]
        shifted = lambda s: treedef.unflatten([a + s * d for a, d in zip(leaves, u)])
        fd = (risk_at(shifted(eps)) - risk_at(shifted(-eps))) / (2 * eps)
        return fd, sum(jnp.vdot(d, g) for d, g in zip(u, manual_leaves))

    fd, directional = jax.lax.map(one, jnp.arange(len(leaves) * directions))
    split = lambda a: treedef.unflatten(list(a.reshape(len(leaves), directions)))
    return manual, auto, split(fd), split(directional)
