"""Experiment 2c: two cons the lecture lists for activations, provoked and measured.

Deck 001 lists "dead neurons when x ≤ 0" as a con of ReLU (leaky ReLU as the fix) and "not
zero-centred" as a con of the sigmoid (tanh as the zero-centred alternative). Neither is
visible in ``activations``, whose small, tuned settings never provoke them. Here both are
provoked and measured on digits (64-64-64-10, SGD batch 32, a fresh shuffle per epoch; seed
s: split s, initial weights from key s, batch order from s; the arms of a seed share all three).

A. **Dead ReLUs.** A hidden unit is *dead* when its pre-activation is ≤ 0 on every example of
   the training split: a ReLU unit then gets exactly zero gradient on its incoming weights and
   bias from every example (only changes in the layers below it can bring it back; a unit of
   the first hidden layer, whose inputs are the fixed data, stays dead for good). The share of
   dead hidden units is measured every 10 steps, for relu and leaky_relu (slope 0.01, same
   criterion; its units keep a gradient α δ) under the same settings: a usual one (He init,
   zero bias, lr 0.1, fixed beforehand) and three that provoke dying, chosen by a stated rule
   on separate selection seeds (:func:`select_settings`): the onset rate, the largest rate
   below it where no unit dies, and a negative bias init. relu − leaky_relu is then compared
   paired over all measurement seeds (dead share and test accuracy at the end, Holm over the
   rows; a diverged run counts as a failure, ``common.counted``, and divergence itself is
   compared by an exact McNemar test). Whether a failure comes from dead units is checked by
   what the units do: the share of (example, unit) pairs that are on, the share of examples on
   which a whole layer is off, and the size of the gradient reaching the first layer; the
   negative-bias setting fails by the second (almost every unit off on almost every example,
   for leaky_relu too), not by dead units, and is reported as that.

B. **Non-zero-centred sigmoid outputs.** The consequence (LeCun et al. 1998, "Efficient
   BackProp", §4.3; the lecture names only the con): a unit whose inputs are all positive has
   ∂ℓ/∂W[:, j] = δ_j · y_{l−1}, so every entry of its incoming weights' gradient has the sign
   of δ_j, per example; the weights can then only all grow or all shrink together in one
   example's step, and a mixed target direction is reached by zig-zagging. Measured for the
   layers whose inputs are activations (hidden layer 2 and the output layer), from
   ``fnn.per_example_grads``: the share of (example, unit) pairs whose gradient column has one
   sign, and the same share for the minibatch gradient the step uses. Three arms: sigmoid,
   tanh, and the *centred sigmoid* σ(z) − ½ (= ½ tanh(z/2)), which has exactly the sigmoid's
   derivative and only differs in its mean, so sigmoid vs centred sigmoid isolates centring
   from the derivative's size. Each arm's learning rate is chosen on separate tuning seeds
   (the mean training error over the steps, grid extended off its edge) and its steps to 25%
   and 5% training error are then compared paired over the measurement seeds on log steps.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import binomtest

import fnn
from common import counted, figure, interior_choice, main, pm, table
from fnn.analysis.stats import holm, mean_ci, paired

SIZES, BATCH = (64, 64, 64, 10), 32
LOSS = "softmax_cross_entropy"
CENTRED_SIGMOID = fnn.Activation("centred_sigmoid", lambda z: jax.nn.sigmoid(z) - 0.5,
                                 lambda z, y: (y + 0.5) * (0.5 - y), None, ())
THRESHOLDS = (0.25, 0.05)
USUAL = {"lr": 0.1, "bias": 0.0}  # the usual setting, fixed beforehand
PROVOKED = 0.1  # a setting provokes dying when relu's max dead share reaches this (median over selection seeds)
DEAD_EVERY = 10  # steps between two dead-unit counts (each count is a forward pass over the training split)


def _data(seeds):
    splits = [fnn.data.digits(seed=s) for s in seeds]
    stack = lambda name: jnp.stack([getattr(d, name) for d in splits])
    return stack("x_train"), stack("y_train"), stack("x_test"), stack("y_test")


def _train(net, lr, seeds, steps, probe, *, scheme="glorot", bias=0.0, every=1):
    """SGD on every seed at once (one vmapped scan). ``probe(params, x, v, xb, vb)`` is recorded
    after steps ``t = 0, every, 2 every, .. steps`` (``xb, vb``: the batch the next step uses).
    Returns the probes with axes ``(seeds, steps // every + 1, ...)``, the final test error per
    seed and whether each seed's parameters stayed finite. Hidden biases start at ``bias``."""
    x, v, xt, vt = _data(seeds)
    program = _program(net, probe, steps, every, scheme, x.shape[1])
    probes, test_error, finite = program(jnp.asarray(seeds), x, v, xt, vt, jnp.asarray(lr, x.dtype),
                                         jnp.asarray(bias, x.dtype))
    return jax.tree.map(np.asarray, probes), np.asarray(test_error), np.asarray(finite)


@functools.lru_cache(maxsize=None)
def _program(net, probe, steps, every, scheme, n):
    """The compiled training program; the rate and the bias are traced, so a grid reuses it."""
    per_epoch = n // BATCH

    def one(seed, x, v, xt, vt, lr, bias):
        opt = optax.sgd(lr)
        update = fnn.make_update_fn(net, LOSS, opt)
        k_init, k_run, _ = jax.random.split(jax.random.key(seed), 3)
        params = fnn.init(k_init, net, scheme)
        params = [dict(p, b=p["b"] + (bias if l < net.num_layers - 1 else 0.0)) for l, p in enumerate(params)]
        batch = lambda t: jax.lax.dynamic_slice(jax.random.permutation(
            jax.random.fold_in(k_run, t // per_epoch), n), ((t % per_epoch) * BATCH,), (BATCH,))

        def step(carry, t):
            i = batch(t)
            return update(*carry, x[i], v[i])[:2], None

        def chunk(carry, c):
            i = batch(c * every)
            out = probe(carry[0], x, v, x[i], v[i])
            return jax.lax.scan(step, carry, c * every + jnp.arange(every))[0], out

        carry, probes = jax.lax.scan(chunk, (params, opt.init(params)), jnp.arange(steps // every))
        p = carry[0]
        last = jax.tree.map(lambda a: a[None], probe(p, x, v, x[:BATCH], v[:BATCH]))
        probes = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), probes, last)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p)]))
        return probes, jnp.mean(jnp.argmax(fnn.forward(net, p, xt), -1) != vt), finite

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None, None)))


@functools.lru_cache(maxsize=None)
def _dead_probe(net):
    def probe(p, x, v, xb, vb):
        out, cache = fnn.forward_with_cache(net, p, x)
        z = cache.pre_activations[:-1]
        grads = fnn.value_and_grad(net, LOSS, p, x, v)[1]  # full training split
        return {"error": jnp.mean(jnp.argmax(out, -1) != v), "dead": jnp.concatenate([jnp.all(q <= 0, 0) for q in z]),
                "active": jnp.stack([jnp.mean(q > 0) for q in z]),  # share of (example, unit) pairs on, per layer
                "all_off": jnp.stack([jnp.mean(jnp.all(q <= 0, 1)) for q in z]),  # share of examples, per layer
                "grad_first": jnp.linalg.norm(grads[0]["W"]), "finite": jnp.all(jnp.isfinite(out))}
    return probe


@functools.lru_cache(maxsize=None)
def _sign_probe(net):
    def probe(p, x, v, xb, vb):
        g = fnn.per_example_grads(net, LOSS, p, xb, vb)
        one_sign = lambda G, axis: jnp.all(G > 0, axis) | jnp.all(G < 0, axis)
        per_example = [jnp.mean(one_sign(layer["W"], 1)) for layer in g[1:]]  # (B, d_in, d_out): column j
        batch = [jnp.mean(one_sign(layer["W"].mean(0), 0)) for layer in g[1:]]
        error = jnp.mean(jnp.argmax(fnn.forward(net, p, x), -1) != v)
        return {"error": error, "per_example": jnp.stack(per_example), "batch": jnp.stack(batch)}
    return probe


def _first(curve, threshold):
    hit = np.flatnonzero(curve <= threshold)
    return float(hit[0]) if len(hit) else np.nan


def _row(name, a, b, **extra):
    c = paired(a, b)
    return {"comparison": name, **extra, "difference": c.mean, "ci95": c.half_width, "p_value": c.p_value,
            "n": c.n, "wins": c.wins, "ties": c.ties, "losses": c.losses}


def _with_holm(rows):
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
    return rows


def _majority(seeds, split):
    """The share of the most frequent class of each seed's ``split``: what a diverged run scores."""
    labels = _data(seeds)[1 if split == "train" else 3]
    return np.array([np.bincount(np.asarray(v)).max() / len(v) for v in labels])


def _dead_arm(act, setting, s, seeds, steps) -> dict:
    """One arm of part A. A diverged run counts as a failure (``counted``): its test accuracy is
    the test split's majority-class share, its training error 1 − the training split's; its dead
    shares are those of the counts before its outputs went non-finite (the last such for "end")."""
    net = fnn.MLP(SIZES, act)
    probes, test_error, finite = _train(net, s["lr"], seeds, steps, _dead_probe(net), scheme="he",
                                        bias=s["bias"], every=DEAD_EVERY)
    ok = probes["finite"].copy()  # (seeds, counts): the outputs finite, and at the end the parameters too
    ok[:, -1] &= finite
    last = np.where(ok.any(1), ok.shape[1] - 1 - np.argmax(ok[:, ::-1], 1), 0)
    dead = probes["dead"] & ok[..., None]  # (seeds, counts, hidden units): never positive on the training split
    at_last = lambda a: a[np.arange(len(a)), last]
    layers = np.split(at_last(dead), np.cumsum(SIZES[1:-2]), axis=-1)
    ever = dead.any(1)
    revived = np.where(ever.any(-1), (ever & ~at_last(dead)).sum(-1) / np.maximum(ever.sum(-1), 1), np.nan)
    accuracy, diverged = counted(np.where(finite, 1 - test_error, np.nan), _majority(seeds, "test"))
    train_error = counted(np.where(finite, probes["error"][:, -1], np.nan), 1 - _majority(seeds, "train"))[0]
    masked = lambda key: np.where(ok[..., None] if probes[key].ndim == 3 else ok, probes[key], np.nan)
    return {"setting": setting, "activation": act, **s, "dead_share_mean": np.where(ok.any(0), dead.mean(-1).sum(0) / np.maximum(ok.sum(0), 1),
                                                                     np.nan).tolist(),
            "dead_share_final": at_last(dead).mean(-1).tolist(), "dead_share_max": dead.mean(-1).max(1).tolist(),
            "dead_share_final_by_layer": np.stack([d.mean(-1) for d in layers], 1).tolist(),
            "revived_share": revived.tolist(), "collapsed": int(np.any([d.all(-1) for d in layers], 0).sum()),
            "diverged": diverged, "diverged_seeds": (~finite).tolist(),
            "active_share": masked("active")[:, [0, -1]].tolist(),  # (seeds, init/end, layers)
            "all_off_share": masked("all_off")[:, [0, -1]].tolist(),
            "grad_first_norm": masked("grad_first")[:, [0, -1]].tolist(),  # (seeds, init/end)
            "train_error_final": train_error.tolist(), "test_accuracy": accuracy.tolist()}


def select_settings(seeds, steps, lr_grid, bias_grid) -> dict:
    """The provoking settings of part A, chosen on the selection ``seeds`` only (relu, He init).

    A setting provokes dying when the median over the selection seeds of relu's largest dead
    share during training reaches ``PROVOKED``, every seed finite. ``onset``: the smallest such
    rate of ``lr_grid`` (zero bias); ``below onset``: the largest smaller rate at which no unit
    is dead at any count on any selection seed; ``negative bias``: the least negative hidden
    bias of ``bias_grid`` (at the usual rate) that provokes. Scans stop at their first hit.
    Returns the settings and every scanned value's per-seed figures (``scan``).
    """
    scan, chosen = [], {"usual": dict(USUAL)}

    def probe(kind, values, lr, bias):
        for value in values:
            a = _dead_arm("relu", kind, {"lr": lr(value), "bias": bias(value)}, seeds, steps)
            scan.append({"scan": kind, "lr": a["lr"], "bias": a["bias"], "dead_share_max": a["dead_share_max"],
                         "diverged": a["diverged"]})
            if a["diverged"] == 0 and np.median(a["dead_share_max"]) >= PROVOKED:
                return {"lr": a["lr"], "bias": a["bias"]}
        return None

    onset = probe("lr", sorted(lr_grid), lambda v: v, lambda v: 0.0)
    if onset:
        quiet = [r["lr"] for r in scan if r["lr"] < onset["lr"] and r["diverged"] == 0 and max(r["dead_share_max"]) == 0]
        if quiet:
            chosen["below onset"] = {"lr": max(quiet), "bias": 0.0}
        chosen["onset"] = onset
    bias = probe("bias", sorted(bias_grid, reverse=True), lambda v: USUAL["lr"], lambda v: v)
    if bias:
        chosen["negative bias"] = bias
    return {"seeds": list(seeds), "rule": f"median max dead share ≥ {PROVOKED:g}, every seed finite",
            "settings": chosen, "scan": scan}


def _divergence_test(a, b) -> dict:
    """Exact McNemar test of paired divergence: the seeds where only one arm diverged, two-sided
    binomial test at ½ (p = 1 with no such seed)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"only_relu": only_a, "only_leaky_relu": only_b, "both": int((a & b).sum()), "p_value": float(p)}


def dead_units(seeds, steps, settings) -> dict:
    """Part A: dead-unit share every ``DEAD_EVERY`` steps, the activity and first-layer gradient
    at init and end, and test accuracy, relu and leaky_relu per setting; relu − leaky_relu paired
    over every seed (a diverged run counts as a failure, see :func:`_dead_arm`), and paired
    divergence by an exact McNemar test."""
    arms, rows, divergence = {}, [], {}
    for setting, s in settings.items():
        for act in ("relu", "leaky_relu"):
            arms[f"{setting}/{act}"] = _dead_arm(act, setting, s, seeds, steps)
        r, k = arms[f"{setting}/relu"], arms[f"{setting}/leaky_relu"]
        rows.append(_row("dead share at the end: relu − leaky_relu", r["dead_share_final"], k["dead_share_final"],
                         setting=setting))
        rows.append(_row("test accuracy: relu − leaky_relu", r["test_accuracy"], k["test_accuracy"], setting=setting))
        divergence[setting] = _divergence_test(r["diverged_seeds"], k["diverged_seeds"])
    return {"every": DEAD_EVERY, "arms": arms, "comparisons": _with_holm(rows), "divergence": divergence}


def _tune(net, seeds, steps, grid, extend):
    """The rate with the lowest mean training error over the steps, on the tuning ``seeds``."""
    def score(values):
        out = []
        for lr in values:
            probes, _, finite = _train(net, lr, seeds, steps, _sign_probe(net))  # the measuring program, reused
            out.append((np.where(finite, probes["error"].mean(1), np.nan), int((~finite).sum())))
        return out
    return interior_choice(score, grid, larger_is_better=False, extend=extend)


def centring(seeds, tune_seeds, steps, grid, extend) -> dict:
    """Part B: same-sign shares of the weight gradients and steps to a training error."""
    arms = {}
    for act in ("sigmoid", CENTRED_SIGMOID, "tanh"):
        net = fnn.MLP(SIZES, act)
        name = net.activations[0].name
        choice = _tune(net, tune_seeds, steps, grid, extend)
        probes, test_error, finite = _train(net, choice["value"], seeds, steps, _sign_probe(net))
        arms[name] = {"lr": choice["value"], "lr_grid": choice["grid"], "tuning_score": choice["mean"],
                      "lr_at_grid_edge": choice["at_edge"], "grid_note": choice["note"],
                      "runner_up": choice["runner_up"], "error_mean": probes["error"].mean(0).tolist(),
                      "per_example_same_sign": probes["per_example"].mean(1).tolist(),  # (seeds, layers)
                      "per_example_same_sign_init": probes["per_example"][:, 0].tolist(),
                      "batch_same_sign": probes["batch"].mean(1).tolist(),
                      "batch_same_sign_curve": probes["batch"].mean(0).tolist(),
                      "steps_to": {str(t): [_first(c, t) for c in probes["error"]] for t in THRESHOLDS},
                      "test_accuracy": np.where(finite, 1 - test_error, np.nan).tolist()}
    rows = []
    for a, b in (("sigmoid", "centred_sigmoid"), ("sigmoid", "tanh"), ("centred_sigmoid", "tanh")):
        for t in THRESHOLDS:  # log10(steps of a / steps of b): > 0 when a is slower
            rows.append(_row(f"log10 steps: {a} / {b}", np.log10(arms[a]["steps_to"][str(t)]),
                             np.log10(arms[b]["steps_to"][str(t)]), threshold=t))
        rows.append(_row(f"batch same-sign share: {a} − {b}", np.mean(arms[a]["batch_same_sign"], 1),
                         np.mean(arms[b]["batch_same_sign"], 1)))
    return {"arms": arms, "comparisons": _with_holm(rows)}


def run(quick: bool = False) -> dict:
    seeds = [0, 1] if quick else list(range(10))
    tune_seeds = [100, 101] if quick else list(range(100, 105))
    steps = (60, 40) if quick else (1000, 600)
    grid = [0.3, 1.0, 3.0] if quick else [0.1, 0.3, 1.0, 3.0, 10.0]
    lr_grid = [0.5, 1.4, 2.0] if quick else [0.2, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0]
    bias_grid = [-1.0, -3.0] if quick else [-0.5, -1.0, -1.5, -2.0, -3.0]
    selection = select_settings(tune_seeds, steps[0], lr_grid, bias_grid)
    return {"seeds": seeds, "tune_seeds": tune_seeds, "steps": {"dead": steps[0], "centring": steps[1]},
            "thresholds": list(THRESHOLDS), "selection": selection,
            "dead": dead_units(seeds, steps[0], selection["settings"]),
            "centring": centring(seeds, tune_seeds, steps[1], grid, extend=0 if quick else 3)}


def _stat(values, digits=3):
    m = mean_ci([a for a in values if a == a])
    return pm(m[0], m[2], digits) if m[3] else "n/a"


def _steps(a, steps):
    a = np.asarray(a, float)
    never = f" ({np.isnan(a).sum()} never)" if np.isnan(a).any() else ""
    if not np.isfinite(a).any():
        return f"> {steps}"
    return f"{np.nanmedian(a):.0f} [{np.nanmin(a):.0f}–{np.nanmax(a):.0f}]{never}"


def _compare_table(rows):
    ratio = lambda r: (f" (ratio {10 ** r['difference']:.2f}× [{10 ** (r['difference'] - r['ci95']):.2f}, "
                       f"{10 ** (r['difference'] + r['ci95']):.2f}])" if r["comparison"].startswith("log10") else "")
    body = [[r.get("setting", f"{r['threshold']:.0%}" if "threshold" in r else ""), r["comparison"],
             pm(r["difference"], r["ci95"], 3) + ratio(r), f"{r['wins']}/{r['ties']}/{r['losses']}", r["n"],
             f"{r['p_holm']:.2g}"] for r in rows]
    return table(["setting / threshold", "comparison (a − b)", "paired mean ± 95%", "W/T/L (a > b)", "n",
                  "p (Holm)"], body)


def _report_dead(res):
    d, n = res["dead"], len(res["seeds"])
    rows = [[a["setting"], a["activation"], f"{a['lr']:g}", f"{a['bias']:g}", _stat(a["dead_share_final"]),
             _stat(np.asarray(a["dead_share_final_by_layer"])[:, 1]), _stat(a["dead_share_max"]),
             _stat(a["revived_share"]), f"{a['collapsed']}/{n}", f"{a['diverged']}/{n}", _stat(a["test_accuracy"])]
            for a in d["arms"].values()]
    div = [[k, t["only_relu"], t["only_leaky_relu"], t["both"], f"{t['p_value']:.2g}"]
           for k, t in d["divergence"].items() if t["only_relu"] + t["only_leaky_relu"] + t["both"]]
    return ["## A. Dead ReLUs", "", *_report_selection(res), "",
            f"64-64-64-10 on digits, He init, SGD batch 32, {res['steps']['dead']} steps (one epoch is 44), "
            f"{n} seeds. Dead = pre-activation ≤ 0 on every one of the training split's examples, counted every "
            f"{d['every']} steps over both hidden layers (128 units). lr 0.1 with zero bias is the usual setting, fixed "
            "beforehand; the provoking settings were chosen on the selection seeds (above), disjoint from the "
            "measurement seeds. Mean ± 95% t-interval over all seeds: a diverged run (non-finite parameters) counts "
            "as a failure, its test accuracy the test split's majority-class share, its dead shares those of its last "
            "count with finite outputs; revived = share of the units dead at some count that were alive at the end; "
            "collapsed = a whole hidden layer dead at the end (the output is then constant).", "",
            table(["setting", "activation", "lr", "hidden bias at init", "dead share, end", "layer 2 dead, end",
                   "dead share, max over training", "revived", "collapsed", "diverged", "test accuracy"], rows), "",
            *_report_activity(res), "",
            "relu − leaky_relu, paired over all seeds (a diverged run counted as a failure, as above):", "",
            _compare_table(d["comparisons"]),
            *(["", "Divergence, paired over seeds (exact McNemar test: two-sided binomial at ½ on the seeds where "
               "only one arm diverged):", "",
               table(["setting", "only relu diverged", "only leaky_relu diverged", "both", "p"], div)] if div else [])]


def _report_activity(res):
    """What each setting does to the units' activity and to the gradient reaching the first layer."""
    d, n = res["dead"], len(res["seeds"])
    both = lambda a, l: " → ".join(_stat(np.asarray(a, float)[:, t, l]) for t in (0, 1))
    rows = [[a["setting"], a["activation"], both(a["active_share"], 0), both(a["active_share"], 1),
             both(a["all_off_share"], 1), " → ".join(_stat(np.asarray(a["grad_first_norm"])[:, t], 3)
                                                     for t in (0, 1))] for a in d["arms"].values()]
    return ["What the units do, at init → at the end, over the training split (runs finite at that count): the "
            "share of (example, unit) pairs with a positive pre-activation per hidden layer; the share of "
            "examples on which every unit of hidden layer 2 is off (pre-activation ≤ 0: the output is then the "
            "output bias plus, for leaky_relu, 0.01 × the negative pre-activations); the norm of the full-batch "
            "risk gradient of the first layer's weights:", "",
            table(["setting", "activation", "layer 1 on", "layer 2 on", "examples with layer 2 all off",
                   "‖∂R/∂W₁‖"], rows)]


def _report_selection(res):
    sel = res["selection"]
    rows = [[r["scan"], f"{r['lr']:g}", f"{r['bias']:g}", ", ".join(f"{a:.0%}" for a in r["dead_share_max"]),
             f"{np.median(r['dead_share_max']):.1%}", r["diverged"]] for r in sel["scan"]]
    chosen = "; ".join(f"{k}: lr {s['lr']:g}, bias {s['bias']:g}" for k, s in sel["settings"].items())
    missing = [k for k in ("below onset", "onset", "negative bias") if k not in sel["settings"]]
    return [f"Selection on seeds {sel['seeds']} (relu, He init, the measurement's steps), scans in order, each "
            f"stopping at its first hit; provoking = {sel['rule']}; below onset = the largest smaller rate with no "
            "dead unit at any count on any selection seed:", "",
            table(["scan", "lr", "hidden bias", "max dead share per selection seed", "median", "diverged"], rows), "",
            f"Chosen: {chosen}." + (f" Not found on the grids: {', '.join(missing)}." if missing else "")]


def _report_centring(res):
    c, n = res["centring"], len(res["seeds"])
    first = lambda a, l: _stat(np.asarray(a)[:, l])
    rows = [[name, f"{a['lr']:g}" + (" (grid edge)" if a["lr_at_grid_edge"] else ""),
             first(a["per_example_same_sign_init"], 0), first(a["per_example_same_sign"], 0),
             first(a["per_example_same_sign"], 1), first(a["batch_same_sign"], 0), first(a["batch_same_sign"], 1),
             *(_steps(a["steps_to"][str(t)], res["steps"]["centring"]) for t in res["thresholds"]),
             _stat(a["test_accuracy"])] for name, a in c["arms"].items()]
    notes = [f"{k}: {a['grid_note']}" for k, a in c["arms"].items() if a["grid_note"]]
    return ["## B. Sigmoid's non-zero-centred outputs", "",
            f"64-64-64-10 on digits, Glorot init, SGD batch 32, {res['steps']['centring']} steps, {n} seeds; each "
            f"arm's rate chosen on tuning seeds {res['tune_seeds']} (lowest mean training error over the steps, "
            "grid extended off its edge). Same-sign share: of the (example, unit) pairs, the share whose gradient "
            "column ∂ℓ/∂W[:, j] (unit j's incoming weights) has one sign, from `fnn.per_example_grads` on each "
            "step's batch; 'batch' is the same share for the minibatch gradient the step applies. Shares are means "
            "over the steps (init: before the first step); layer 2 = the second hidden layer, out = the output "
            "layer (both receive activations). Steps: median [min–max] over seeds.", "",
            table(["activation", "lr", "per-example same-sign, layer 2, init", "per-example, layer 2",
                   "per-example, out", "batch, layer 2", "batch, out",
                   *(f"steps to {t:.0%} train error" for t in res["thresholds"]), "test accuracy"], rows), "",
            "Paired over seeds: log10 steps of a / steps of b (> 0: a is slower; 10^x is the ratio), and the "
            "difference of the batch same-sign share (mean of both layers):", "",
            _compare_table(c["comparisons"]), *([""] + ["Grid notes: " + "; ".join(notes)] if notes else [])]


def _points(ax, groups, ylabel, title):
    """Per-seed points, one column per (setting, activation), jittered so no point hides another."""
    rng = np.random.default_rng(0)
    for i, (label, values, colour) in enumerate(groups):
        v = np.asarray(values, float)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=22, color=colour, alpha=0.75, edgecolors="none")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=9)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")


COLOUR = {"relu": "tab:red", "leaky_relu": "tab:blue", "sigmoid": "tab:orange", "centred_sigmoid": "tab:green",
          "tanh": "tab:purple"}
SHORT = {"leaky_relu": "leaky", "centred_sigmoid": "centred σ"}


def _setting_label(s, name):
    return f"{name}\nlr {s['lr']:g}" + (f", bias {s['bias']:g}" if s["bias"] else "")


def _by_setting(ax, res, key, ylabel, title):
    """Per-seed points, one column pair per setting (relu left, leaky_relu right); a diverged
    seed is drawn as a cross at its counted value."""
    rng, settings = np.random.default_rng(0), res["selection"]["settings"]
    for i, name in enumerate(settings):
        for act, dx in (("relu", -0.2), ("leaky_relu", 0.2)):
            a = res["dead"]["arms"][f"{name}/{act}"]
            v, bad = np.asarray(a[key], float), np.asarray(a["diverged_seeds"], bool)
            x = i + dx + rng.uniform(-0.12, 0.12, len(v))
            ax.scatter(x[~bad], v[~bad], s=22, color=COLOUR[act], alpha=0.75, edgecolors="none",
                       label=act if i == 0 else None)
            ax.scatter(x[bad], v[bad], s=30, color=COLOUR[act], marker="x", label=f"{act}, diverged" if (
                bad.any() and not any(t.get_label() == f"{act}, diverged" for t in ax.collections)) else None)
    ax.set_xticks(range(len(settings)), [_setting_label(s, k) for k, s in settings.items()], fontsize=9)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")


def _figure_dead(ax, res):
    arms = res["dead"]["arms"]
    _by_setting(ax[0], res, "dead_share_final", "dead share of hidden units, end", "A. dead units per seed")
    _by_setting(ax[1], res, "test_accuracy", "test accuracy",
                "A. test accuracy per seed (diverged: majority-class share)")
    onset = res["selection"]["settings"].get("onset", USUAL)
    key = "onset" if "onset" in res["selection"]["settings"] else "usual"
    steps = np.arange(len(arms[f"{key}/relu"]["dead_share_mean"])) * res["dead"]["every"]
    for act, ls in (("relu", "-"), ("leaky_relu", "--")):  # the other settings' curves are in the table
        ax[2].plot(steps, arms[f"{key}/{act}"]["dead_share_mean"], ls, color=COLOUR[act],
                   label=f"{act}, lr {onset['lr']:g}")
    ax[2].set(xlabel="SGD step", ylabel="dead share (mean over seeds finite there)",
              title=f"A. dead share during training at lr {onset['lr']:g} ({key})")


def _figure_centring(ax, res):
    c = res["centring"]["arms"]
    zero = [k for k, a in c.items() if k != "sigmoid" and not np.asarray(a["batch_same_sign_curve"]).any()]
    for name, a in c.items():
        ax[0].plot(np.arange(len(a["error_mean"])), a["error_mean"], color=COLOUR[name],
                   label=f"{name} (lr {a['lr']:g})")
        if name not in zero:  # all-zero curves coincide: drawn once below
            for layer, ls, where in ((0, "-", "layer 2"), (1, ":", "output")):
                curve = np.asarray(a["batch_same_sign_curve"])[:, layer]
                smooth = np.convolve(curve, np.ones(15) / 15, mode="valid")  # the step-to-step noise hides the gap
                ax[1].plot(np.arange(len(smooth)) + 7, smooth, ls, color=COLOUR[name], label=f"{name}, {where}")
    if zero:
        ax[1].axhline(0, color="gray", lw=2, label=" and ".join(zero) + ": 0 at every step, both layers")
    for t in res["thresholds"]:
        ax[0].axhline(t, color="gray", ls=":", lw=1)
    steps = len(next(iter(c.values()))["error_mean"]) - 1
    ax[0].set(xscale="symlog", yscale="log", xlabel="SGD step (symlog)", ylabel="training error (mean over seeds)",
              xlim=(0, steps), ylim=(5e-4, 1.5),
              title="B. training error after every step")
    ax[1].set(xscale="symlog", xlabel="SGD step (symlog)", ylabel="share of units (mean over seeds, 15-step mean)",
              ylim=(-0.05, 1.35), xlim=(0, steps),
              title="B. minibatch gradient columns of one sign")
    _points(ax[2], [(f"{SHORT.get(k, k)}\n{t:.0%}", a["steps_to"][str(t)], COLOUR[k]) for t in res["thresholds"]
                    for k, a in c.items()], "steps (log)", "B. steps to 25% / 5% train error (never: absent)")
    ax[2].set_yscale("log")


def _figure(res):
    plt = figure()
    fig, ax = plt.subplots(2, 3, figsize=(17, 9.5))
    _figure_dead(ax[0], res)
    _figure_centring(ax[1], res)
    ax[1, 2].yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax[1, 2].yaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    for a, where in ((ax[0, 0], "upper left"), (ax[0, 2], "best"), (ax[1, 0], "best"), (ax[1, 1], "upper right")):
        a.grid(alpha=0.3)
        a.legend(fontsize=9.5, loc=where)
    fig.tight_layout()
    return fig


def report(res):
    md = ["# Mechanisms: dead ReLUs and sigmoid's non-zero-centred outputs, provoked and measured", "",
          *_report_dead(res), "", *_report_centring(res)]
    return "\n".join(md), _figure(res)


if __name__ == "__main__":
    main(sys.modules[__name__])
