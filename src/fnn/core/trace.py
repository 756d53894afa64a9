"""A backpropagation trace: every forward value and backward message of one pass, layer by layer,
as a table to read or to redo on paper.

``fnn.trace(net, loss, params, x, v)`` runs the forward pass with its cache, then the
hand-written backward one layer at a time (:func:`fnn.backward_step`), and records for
each layer ``l = 1 .. L`` (numbered from the input):

    y_{l-1}   the layer's input            z_l = y_{l-1} W_l + b_l      y_l = f_l(z_l)
    δy_l      the message arriving from above (∂R/∂y_l; for the top layer ∂R/∂y_L)
    δz_l      = δy_l ⊙ f_l'(z_l)
    ∂R/∂W_l   = y_{l-1}ᵀ δz_l,   ∂R/∂b_l = Σ_b δz_l
    δy_{l-1}  = δz_l W_lᵀ, the message sent down

It prints as text and displays as an HTML table in a notebook.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from fnn.core.backprop import backward_step
from fnn.core.losses import Loss, get_loss, risk, risk_grad
from fnn.core.network import MLP, Params, forward_with_cache
from fnn.core.validation import validate


@dataclasses.dataclass(frozen=True)
class LayerTrace:
    """One layer's forward values and backward messages (numpy arrays, batch first)."""

    layer: int
    W: np.ndarray
    b: np.ndarray
    y_in: np.ndarray
    z: np.ndarray
    y: np.ndarray
    delta_y: np.ndarray
    delta_z: np.ndarray
    grad_W: np.ndarray
    grad_b: np.ndarray
    delta_in: np.ndarray


@dataclasses.dataclass(frozen=True)
class BackpropTrace:
    """The trace of one forward and backward pass: ``layers`` (a :class:`LayerTrace` per layer,
    from the input up), the ``loss`` value R, and the network ``output`` y_L."""

    layers: tuple[LayerTrace, ...]
    loss: float
    output: np.ndarray
    activations: tuple[str, ...]

    def rows(self, example: int = 0) -> list[dict]:
        """One dict per layer and quantity for example ``example``, forward first then backward."""
        out = []
        for t, act in zip(self.layers, self.activations):
            for name, value in (("W", t.W), ("b", t.b), ("y_in", t.y_in[example]), ("z", t.z[example]),
                                (f"y = {act}(z)", t.y[example]), ("δy", t.delta_y[example]),
                                ("δz", t.delta_z[example]), ("∂R/∂W", t.grad_W), ("∂R/∂b", t.grad_b),
                                ("δy_in (sent down)", t.delta_in[example])):
                out.append({"layer": t.layer, "quantity": name, "value": np.asarray(value)})
        return out

    def __str__(self) -> str:
        lines = [f"backprop trace: loss R = {self.loss:.6g}, output y_L = {_fmt(self.output[0])} (example 0)"]
        for row in self.rows():
            lines.append(f"  layer {row['layer']}  {row['quantity']:<18} {_fmt(row['value'])}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        cells = "".join(f"<tr><td>{r['layer']}</td><td>{html.escape(r['quantity'])}</td>"
                        f"<td><code>{html.escape(_fmt(r['value']))}</code></td></tr>" for r in self.rows())
        return (f"<p>backprop trace: loss R = {self.loss:.6g} (example 0)</p><table><thead><tr><th>layer</th>"
                f"<th>quantity</th><th>value</th></tr></thead><tbody>{cells}</tbody></table>")


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=4, suppress_small=True, max_line_width=120).replace("\n", "")


def trace(net: MLP, loss: str | Loss, params: Params, x, v) -> BackpropTrace:
    """The :class:`BackpropTrace` of ``R(params)`` on ``(x, v)``: every forward value and backward
    message per layer, computed by fnn's forward cache and :func:`fnn.backward_step`."""
    loss = get_loss(loss)
    validate(net, loss, params, x, v)
    x = jnp.asarray(x)
    out, cache = forward_with_cache(net, params, x)
    value = risk(loss, out, v)
    delta_y = risk_grad(loss, out, v)
    layers = []
    for l in reversed(range(net.num_layers)):
        step = backward_step(net, params, cache, l, delta_y)
        layers.append(LayerTrace(
            l + 1, *(np.asarray(a) for a in (params[l]["W"], params[l]["b"], cache.inputs[l], cache.pre_activations[l],
                                             cache.outputs[l], delta_y, step.delta_z, step.grads["W"],
                                             step.grads["b"], step.delta_in))))
        delta_y = step.delta_in
    return BackpropTrace(tuple(layers[::-1]), float(value), np.asarray(out),
                         tuple(a.name for a in net.activations))


