"""Per-step cost of fnn's second-order optimizers (and kfac-jax's K-FAC, where installed) against an Adam step.

Networks: 64-64-10 (digits, B = 64) and 784-1024-1024-10 (MNIST, B = 256), ReLU hidden layers, softmax
cross-entropy, float32, random inputs and labels. Every arm is one jitted step carrying its own
params and optimizer state (buffers donated, as kfac-jax donates its own); arms run in interleaved
rounds of ``reps`` steps each, so load on the machine falls on every arm alike; the figure is the
median over rounds of seconds per step. With ``reps`` a multiple of the inverse-update period T
every round holds the same number of refresh steps, so K-FAC's eigendecompositions / inverses are
amortised over T. Arms: K-FAC with KFLR (exact: the C − 1 columns of the loss-Hessian factor) or KFAC
(one sampled target) factors, each with ``damping_mode="exact"`` (eigendecompositions) and ``"pi"`` (factored damping,
Cholesky inverses), EKFAC, the diagonal-GGN preconditioner and Gauss-Newton by 10 CG steps; where
kfac-jax is installed, its K-FAC on the same network with sampled-Fisher factors
(``estimation_mode="fisher_gradients"``, comparable to fnn's one-sample KFAC) and exact GGN factors
(``"ggn_exact"``, comparable to KFLR), its default π-adjusted inverses, no adaptive damping,
learning rate or momentum, and the same T. In every round each arm runs twice, once with the
BLAS library's default threads and once limited to one (``threadpoolctl``): the factorizations of a
refresh (Cholesky, ``eigh``) are LAPACK calls (OpenBLAS) inside XLA's program, and OpenBLAS's own
threads compete with XLA's on a shared CPU. A second copy of the Adam step gives the run's
resolution (full mode). The FLOP count of each part of a K-FAC step is written beside the times;
fnn multiplies the gradient block by the factors from its low-rank form ``ȳᵀδ`` where that costs fewer
FLOPs (:mod:`fnn.training.kronecker`), so its preconditioning is the "as fnn takes it" rows.
``--mnist-kfac`` runs only the MNIST size and the arms Adam (twice), K-FAC with one sampled target
(π and exact damping) and kfac-jax's fisher-1 π step (a run of minutes instead of most of an hour).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from itertools import pairwise
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

import fnn
from fnn.training.kronecker import flops as sandwich_flops, order

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import figure, main, table  # noqa: E402

LOSS = "softmax_cross_entropy"
T = 10  # inverse_update_period of every K-FAC arm
LR, DAMPING = 1e-3, 0.1  # small steps keep the carried params finite over many timed steps
BLAS = {"default": None, "1 thread": 1}  # OpenBLAS threads (threadpoolctl), each round under both
MNIST_KFAC_ARMS = ("adam", "adam (2nd copy)", "kfac MC-1 pi", "kfac MC-1 exact", "kfac-jax fisher-1 pi")
MNIST_KFAC = "--mnist-kfac" in sys.argv  # the flag is this script's own, taken out before common.main
if MNIST_KFAC:
    sys.argv.remove("--mnist-kfac")


def _fnn_arms(quick: bool) -> dict:
    kfac = lambda **kw: fnn.get_optimizer("kfac", LR, damping=DAMPING, inverse_update_period=T, **kw)  # noqa: E731
    arms = {"adam": fnn.get_optimizer("adam", LR),
            "kfac KFLR exact": kfac(),
            "kfac KFLR pi": kfac(damping_mode="pi"),
            "kfac MC-1 exact": kfac(mc_samples=1),
            "kfac MC-1 pi": kfac(mc_samples=1, damping_mode="pi"),
            "ekfac KFLR": kfac(ekfac=True),
            "ggn_diag": fnn.get_optimizer("ggn_diag", LR),
            "gauss_newton (10 CG)": fnn.get_optimizer("gauss_newton", 1.0, cg_iterations=10, cg_tol=1e-30)}
    if quick:
        return {"adam": arms["adam"], "kfac MC-1 pi": arms["kfac MC-1 pi"]}
    arms = {"adam": arms["adam"], "adam (2nd copy)": fnn.get_optimizer("adam", LR), **arms}
    return {k: a for k, a in arms.items() if k in MNIST_KFAC_ARMS} if MNIST_KFAC else arms


def _fnn_step(net, opt, params, x, v, key):
    """``carry -> carry`` with ``carry = (params, state, t)``: one jitted, donating fnn step."""
    step = fnn.make_update_step(net, LOSS, opt)

    def run(carry):
        p, s, t = carry
        p, s, _ = step(p, s, x, v, jax.random.fold_in(key, t))
        return p, s, t + 1
    return run, (jax.tree.map(jnp.copy, params), opt.init(params), 0)


def _kfac_jax_shim(kfac_jax) -> bool:
    """kfac-jax 0.0.8 unpacks ``Primitive.get_bind_params`` as ``(subfuns, params)``, as jax
    returned it before 0.7; newer jax returns the params alone. Where so, its tracer's one-equation
    evaluator is replaced by the same code for the new convention (no numbers change). Returns
    whether the shim was applied."""
    if isinstance(jax.lax.add_p.get_bind_params({}), tuple):
        return False
    import jax.extend as jex
    from kfac_jax._src import tag_graph_matcher

    def eval_jaxpr_eqn(eqn, in_values):
        with jex.source_info_util.user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*in_values, **dict(eqn.primitive.get_bind_params(eqn.params)))
        return out if isinstance(out, list) else [out]
    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn
    return True


def _kfac_jax_step(kfac_jax, net, mode: str, params, x, v, key):
    """kfac-jax's K-FAC on the same network (its dense layers found by its own tracer)."""
    def loss_fn(p, batch):
        h, labels = batch
        for l, layer in enumerate(p):
            h = h @ layer["W"] + layer["b"]
            h = jax.nn.relu(h) if l < len(p) - 1 else h
        kfac_jax.register_softmax_cross_entropy_loss(h, labels)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h, labels))

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn), l2_reg=0.0, estimation_mode=mode,
        use_adaptive_learning_rate=False, learning_rate_schedule=lambda t: jnp.asarray(LR),
        use_adaptive_momentum=False, momentum_schedule=lambda t: jnp.asarray(0.0),
        use_adaptive_damping=False, damping_schedule=lambda t: jnp.asarray(DAMPING),
        curvature_ema=0.95, inverse_update_period=T, num_burnin_steps=0, multi_device=False)
    params = jax.tree.map(jnp.copy, params)
    state = opt.init(params, jax.random.fold_in(key, 0), (x, v))

    def run(carry):
        p, s, t = carry
        p, s, _ = opt.step(p, s, jax.random.fold_in(key, t), batch=(x, v), global_step_int=t)
        return p, s, t + 1
    return run, (params, state, 0)


def _arms(sizes, batch: int, quick: bool) -> dict:
    net = fnn.MLP(sizes, ("relu",) * (len(sizes) - 2) + ("identity",))
    kx, kv = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, sizes[0]))
    v = jax.random.randint(kv, (batch,), 0, sizes[-1])
    params, key = fnn.init(jax.random.key(1), net, "he"), jax.random.key(2)
    arms = {name: _fnn_step(net, opt, params, x, v, key) for name, opt in _fnn_arms(quick).items()}
    try:
        import kfac_jax
    except ImportError:
        return arms
    _kfac_jax_shim(kfac_jax)
    for name, mode in (("kfac-jax fisher-1 pi", "fisher_gradients"), ("kfac-jax GGN exact pi", "ggn_exact")):
        if MNIST_KFAC and name not in MNIST_KFAC_ARMS:
            continue
        arms[name] = _kfac_jax_step(kfac_jax, net, mode, params, x, v, key)
    return arms


def _flops(sizes, batch: int) -> dict:
    """GFLOP of each part of a K-FAC step (one multiply-add = 2), from the layer sizes alone."""
    pairs = list(pairwise(sizes))
    inner = sum(i * o for i, o in pairs)
    back = 2 * batch * sum(i * o for i, o in pairs[1:])  # δ through every layer but the first
    cube = sum((i + 1) ** 3 + o ** 3 for i, o in pairs)
    parts = {"forward + backward (the gradient)": 4 * batch * inner + back,
             "one sampled column backward (MC-1)": back,
             "C − 1 exact columns backward (KFLR)": (sizes[-1] - 1) * back,
             "A = ȳᵀȳ/B": 2 * batch * sum((i + 1) ** 2 for i, _ in pairs),
             "G from one column (MC-1)": 2 * batch * sum(o * o for _, o in pairs),
             "G from C − 1 columns (KFLR)": 2 * batch * (sizes[-1] - 1) * sum(o * o for _, o in pairs),
             "precondition, pi: A⁻¹ Ḡ G⁻¹": sum(2 * (i + 1) * o * (i + 1 + o) for i, o in pairs),
             "precondition, exact: 4 rotations": sum(4 * (i + 1) * o * (i + 1 + o) for i, o in pairs),
             "precondition, pi, as fnn takes it (ȳᵀδ where cheaper)": sum(
                 sandwich_flops(order(i + 1, o, batch), i + 1, o, batch) for i, o in pairs),
             "precondition, exact, as fnn takes it (rotation in from ȳᵀδ where cheaper)": sum(
                 sandwich_flops(order(i + 1, o, batch), i + 1, o, batch) + 2 * (i + 1) * o * (i + 1 + o)
                 for i, o in pairs),
             "pi inverses (Cholesky, L⁻¹, L⁻ᵀL⁻¹) / T": 10 / 3 * cube / T,
             "eigh (about 9n³) / T": 9 * cube / T}
    return {k: v / 1e9 for k, v in parts.items()}


def _timed_round(steps: dict, carry: dict, times: dict, reps: int) -> None:
    """One round: every arm ``reps`` steps under each BLAS thread setting, times appended."""
    for blas, threads in BLAS.items():
        with threadpool_limits(threads, user_api="blas") if threads else nullcontext():
            for k, step in steps.items():
                start = time.perf_counter()
                for _ in range(reps):
                    carry[k] = step(carry[k])
                jax.block_until_ready(carry[k][:2])
                times[blas][k].append((time.perf_counter() - start) / reps)


def _step_costs(sizes, batch: int, rounds: int, reps: int, quick: bool) -> dict:
    """Median seconds per step of each arm over interleaved rounds, and the ratio to Adam, per
    BLAS thread setting (``seconds``/``ratio_to_adam``: the default; ``one_blas_thread``: one)."""
    arms = _arms(sizes, batch, quick)
    steps = {k: a[0] for k, a in arms.items()}
    carry = {k: a[1] for k, a in arms.items()}
    for k in arms:  # compile, and one full refresh period, outside the clock
        for _ in range(T):
            carry[k] = steps[k](carry[k])
        jax.block_until_ready(carry[k][:2])
    times = {blas: {k: [] for k in arms} for blas in BLAS}
    for _ in range(rounds):
        _timed_round(steps, carry, times, reps)
    finite = {k: bool(all(np.all(np.isfinite(a)) for a in jax.tree.leaves(c[0]))) for k, c in carry.items()}
    median = {blas: {k: float(np.median(t)) for k, t in ts.items()} for blas, ts in times.items()}
    ratio = {blas: {k: m / med["adam"] for k, m in med.items()} for blas, med in median.items()}
    return {"sizes": list(sizes), "batch": batch, "rounds": rounds, "steps_per_round": reps,
            "seconds": median["default"], "ratio_to_adam": ratio["default"], "seconds_all": times["default"],
            "one_blas_thread": {"seconds": median["1 thread"], "ratio_to_adam": ratio["1 thread"],
                                "seconds_all": times["1 thread"]},
            "params_finite": finite, "gflop": _flops(sizes, batch)}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run(quick: bool) -> dict:
    sizes = [((64, 64, 10), 64)] if quick else [((64, 64, 10), 64), ((784, 1024, 1024, 10), 256)]
    sizes = sizes[1:] if MNIST_KFAC and not quick else sizes
    rounds, reps = (2, T) if quick else (3, T)  # 3 rounds: a round at the MNIST size is minutes on a loaded CPU
    return {"inverse_update_period": T, "learning_rate": LR, "damping": DAMPING, "mnist_kfac_only": MNIST_KFAC,
            "jax": jax.__version__, "cpu_threads": os.cpu_count(), "kfac_jax": _version("kfac-jax"),
            "step_cost": [_step_costs(s, b, rounds, reps, quick) for s, b in sizes]}


def report(results: dict):
    lines = [__doc__.strip().splitlines()[0], ""]
    if results.get("mnist_kfac_only"):
        lines += ["This run (`--mnist-kfac`): the MNIST size and the arms Adam, K-FAC MC-1 and kfac-jax fisher-1 only.",
                  ""]
    for cost in results["step_cost"]:
        one = cost["one_blas_thread"]
        lines += [f"## {'-'.join(map(str, cost['sizes']))}, B = {cost['batch']} "
                  f"(median of {cost['rounds']} interleaved rounds of {cost['steps_per_round']} steps, T = "
                  f"{results['inverse_update_period']})", "",
                  table(["optimizer", "ms / step", "/ Adam", "ms / step, 1 BLAS thread", "/ Adam, 1 BLAS thread"],
                        [[k, 1e3 * s, cost["ratio_to_adam"][k], 1e3 * one["seconds"][k], one["ratio_to_adam"][k]]
                         for k, s in cost["seconds"].items()]), ""]
        grad = cost["gflop"]["forward + backward (the gradient)"]
        lines += ["GFLOP per step of each part (from the sizes):", "",
                  table(["part", "GFLOP", "/ gradient"], [[k, g, g / grad] for k, g in cost["gflop"].items()]), ""]
    plt = figure()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, len(results["step_cost"]), figsize=(6 * len(results["step_cost"]), 4.4))
    for ax, cost in zip(np.atleast_1d(axes), results["step_cost"]):
        names = list(cost["ratio_to_adam"])
        y = np.arange(len(names))
        ax.barh(y + 0.2, [cost["ratio_to_adam"][k] for k in names], 0.4, label="BLAS default threads")
        ax.barh(y - 0.2, [cost["one_blas_thread"]["ratio_to_adam"][k] for k in names], 0.4, label="1 BLAS thread")
        ax.set_yticks(y, names)
        ax.axvline(1.5, color="k", ls="--", lw=1, label="1.5× Adam's step (the goal)")
        ax.set(xscale="log", xlabel="step time / Adam's", title=f"{'-'.join(map(str, cost['sizes']))}, B = {cost['batch']}")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1×, 2×, 5×, 10×, ...: no crowded labels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, axis="x", which="major")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return "\n".join(lines), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
