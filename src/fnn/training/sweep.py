"""Many runs of one architecture as one compiled program: seed and hyperparameter sweeps.

:func:`sweep` trains every combination of ``seeds`` and a ``grid`` of settings. Settings
that can be traced (:data:`SWEEPABLE`: learning rate, momentum, L2, dropout rate, init
scale, a second-order optimizer's damping) become arrays with a run axis, and the whole
training step is ``vmap``-ped over the runs inside the ``lax.scan`` of an epoch (K-FAC's
periodic refresh stays conditional: the runs share their step count, unbatched). Settings
that change the program (:data:`GROUPED`: optimizer, batch size, schedule, warmup, gradient
method, init scheme, epochs, and the second-order optimizers' ``inverse_update_period``,
``curvature_ema``, ``mc_samples`` and ``cg_iterations``) split the grid into groups, one
program each.

Runs of one seed share their batches (their shuffle comes from the seed), so the first
layer's products of all grid points of a seed are one wide matrix product; the runs of
different seeds are ``vmap``-ped on the outside, with their own data when each seed has
its own split.

Run ``(seed s, grid point g)`` equals the one-run training with the same settings, which is
what ``fnn train --seed s`` does::

    k_init, k_run, _ = jax.random.split(jax.random.key(s), 3)
    params = fnn.init(k_init, net, init)                       # weights × init_scale
    fnn.fit(net, loss, params, x, v, key=k_run, optimizer=..., batch_size=..., l2=..., dropout=...)

A run diverges at its first step with a non-finite batch loss, new parameters or new optimizer
state (not applied: the run keeps the finite state before it), or when its training loss is
not finite after an epoch (it keeps that epoch's last state). It is marked ``diverged`` from
that epoch, trains no further, and its metrics from then on are NaN; the summary leaves it out.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn.training.epoch import check_batch_size
from fnn.core.losses import Loss, get_loss
from fnn.core.metrics import _to_device
from fnn.core.network import MLP, Params, init
from fnn.training.optim import (DEFAULT_LEARNING_RATE, DEFAULT_MOMENTUM, DEFAULT_OPTIMIZER, OPTIMIZERS,
                                check_learning_rate, default_learning_rate)
from fnn.training.schedules import learning_rates
from fnn.analysis.stats import summarise
from fnn.training.sweepprograms import SECOND_ORDER, Recipe, epoch_program, metrics_program
from fnn.core.validation import check_coefficient, validate

SWEEPABLE = ("lr", "momentum", "l2", "dropout", "init_scale", "damping")
GROUPED = ("optimizer", "batch_size", "schedule", "warmup_epochs", "method", "init", "epochs",
           "inverse_update_period", "curvature_ema", "mc_samples", "cg_iterations", "norm_constraint",
           "damping_mode", "kfac_momentum")
# damping and the second-order settings after it: None is the optimizer's own default.
DEFAULTS = dict(lr=DEFAULT_LEARNING_RATE, momentum=DEFAULT_MOMENTUM, l2=0.0, dropout=0.0, init_scale=1.0,
                optimizer=DEFAULT_OPTIMIZER, batch_size=32,
                schedule="constant", warmup_epochs=None, method="manual", init="he", epochs=10,
                damping=None, inverse_update_period=None, curvature_ema=None, mc_samples=None, cg_iterations=None,
                norm_constraint=None, damping_mode=None, kfac_momentum=None)
# Settings of the whole sweep, given by keyword like DEFAULTS' but never swept.
RUN_OPTIONS = dict(progress=False, clip_norm=None, noise_multiplier=0.0, mesh=None)


@dataclasses.dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
      configs: one dict per run: ``seed``, ``point`` (the grid point's index) and every setting.
      params: the runs' final parameters, each leaf with a leading run axis ``(runs, ...)``.
      history: per-epoch arrays ``(runs, epochs)``: ``batch_loss``, ``train_*``, ``val_*``, ``test_*``
        (and ``lr`` under a schedule), as in :func:`fnn.fit`; NaN after a run diverged.
      diverged: ``(runs,)``: the epoch (1-based) in which each run diverged (0: never).
      summary: one dict per grid point: its settings, ``n`` seeds, ``diverged`` runs, and for
        every final metric ``m``: ``m_mean``, ``m_std``, ``m_ci95`` (half-width of the 95%
        t-interval over the seeds that did not diverge).
      best: the summary row with the best mean of ``select`` among points none of whose runs
        diverged (``None`` without validation or test data, or when every point diverged). When
        a second such point exists, ``best["runner_up"]`` compares it with the best, paired over
        their shared seeds (:func:`fnn.analysis.stats.runner_up`): ``difference`` (the best's
        lead: best − runner-up for accuracy/R², runner-up − best for a loss; positive when the
        best is ahead), ``ci95``, ``p_value``, ``wins``/``ties``/``losses`` (seeds where the best
        is better/equal/worse), ``sign_p`` and ``distinguishable`` (paired t-test at 5%; never
        with one seed).
    """

    configs: list[dict]
    params: Params
    history: dict[str, np.ndarray]
    diverged: np.ndarray
    summary: list[dict]
    best: dict | None

    def run_params(self, run: int) -> Params:
        """The parameters of run ``run``."""
        return jax.tree.map(lambda a: a[run], self.params)


def sweep(net: MLP, loss: str | Loss, x, v, *, seeds: int | list[int] = 1, grid: dict | None = None,
          test: tuple | None = None, validation: tuple | None = None, select: str | None = None,
          **settings) -> SweepResult:
    """Trains ``seeds × grid`` runs of ``net``, each group of the grid as one compiled program.

    Args:
      net, loss: the architecture and loss every run shares.
      x, v: training data ``(N, d_0)`` and targets shared by every seed, or with a leading seed
        axis ``(S, N, d_0)`` (each seed its own split, as ``fnn train --seed`` loads them).
      seeds: how many seeds (``0 .. seeds-1``) or a list of them.
      grid: ``{setting: [values]}``; the grid is their Cartesian product. Settings are
        :data:`SWEEPABLE` (traced, one program) or :data:`GROUPED` (one program each).
      test: ``(x_test, v_test)``, shared or per seed like ``x``; evaluated after every epoch
        (history ``test_*``).
      validation: ``(x_val, v_val)``, shared or per seed like ``x`` (e.g. from
        :func:`fnn.data.validation_split`); evaluated after every epoch (history ``val_*``).
        Choose settings on it, and keep ``test`` for the chosen point's final runs.
      select: the metric that picks ``best`` (default ``val_accuracy`` with ``validation``, else
        ``test_accuracy``; ``*_loss`` for a regression); a name ending in accuracy or r2 is
        maximised, others minimised. Raises ``ValueError`` before training for a name the
        history will not have.
      **settings: the values of :data:`DEFAULTS` every run shares unless the grid says
        otherwise (``lr``, ``optimizer``, ``epochs``, ``batch_size``, ...; ``lr=None``: each point's
        optimizer's own rate, e.g. 1.0 for ``gauss_newton``), and the settings of
        the whole sweep (:data:`RUN_OPTIONS`), which the grid cannot vary:

        - ``progress`` (``False``): show a progress bar over epochs;
        - ``clip_norm`` (``None``), ``noise_multiplier`` (0): DP-SGD for every run (see
          :func:`fnn.make_update_fn`);
        - ``mesh`` (``None``): a 1-D ``jax.sharding.Mesh`` (:func:`fnn.training.parallel.make_mesh`)
          to split the runs over: each program's grid points (or, when they do not divide
          evenly, its seeds) are sharded over the devices, which then train their runs without
          talking to each other. The results are those of one device.

        An unknown name is a ``ValueError`` naming the closest one.

    Returns:
      A :class:`SweepResult` (runs ordered grid point by grid point, seeds within each).
    """
    loss = get_loss(loss)
    options = {k: settings.pop(k, default) for k, default in RUN_OPTIONS.items()}
    seeds, points = _plan(seeds, grid or {}, settings)
    per_seed = np.ndim(x) == 3
    held = {name: pair for name, pair in (("val", validation), ("test", test)) if pair is not None}
    select = select or (f"{next(iter(held), 'test')}_accuracy" if loss.kind != "regression"
                        else f"{next(iter(held), 'test')}_loss")
    if held:
        check_select(select, loss, list(held))
    data = _Data(net, loss, x, v, held, len(seeds), per_seed)
    groups: dict[tuple, list[int]] = {}
    for g, point in enumerate(points):
        groups.setdefault(tuple(point[k] for k in GROUPED), []).append(g)
    results = {}
    for members in groups.values():
        group = _Group(net, loss, data, seeds, [points[g] for g in members], options["clip_norm"],
                       options["noise_multiplier"], options["mesh"])
        for (s, i), run in group.train(options["progress"]).items():
            results[(members[i], s)] = run
    order = [(g, s) for g in range(len(points)) for s in range(len(seeds))]
    configs = [{"seed": seeds[s], "point": g, **points[g]} for g, s in order]
    runs = [results[k] for k in order]
    keys = list(runs[0]["history"])
    history = {k: np.stack([r["history"][k] for r in runs]) for k in keys}
    params = jax.tree.map(lambda *a: jnp.stack(a), *[r["params"] for r in runs])
    diverged = np.array([r["diverged"] for r in runs])
    summary, best = summarise(configs, history, diverged, points, select if held else None)
    return SweepResult(configs, params, history, diverged, summary, best)


def _plan(seeds, grid: dict, settings: dict) -> tuple[list[int], list[dict]]:
    """The seeds and the grid points (each a full settings dict), checked."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        known = [*DEFAULTS, *RUN_OPTIONS]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"Unknown sweep settings: {', '.join(unknown)}{guess}; known: {', '.join(known)}.")
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}.")
        seeds = list(range(int(seeds)))
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds must be a count or a list of distinct integers in [0, 2**63), got {seeds!r}.")
    for key, values in grid.items():
        if key not in DEFAULTS:
            raise ValueError(f"{key!r} cannot be swept: sweepable settings are {', '.join(SWEEPABLE)} (one "
                             f"program) and {', '.join(GROUPED)} (one program each).")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
            raise ValueError(f"The grid's {key!r} must be a non-empty list of values, got {values!r}.")
    base = {**DEFAULTS, **settings}
    names = list(grid)
    points = [{**base, **dict(zip(names, combo))} for combo in itertools.product(*(grid[k] for k in names))]
    for point in points:
        if point["lr"] is None:  # the optimizer's own rate
            point["lr"] = default_learning_rate(point["optimizer"])
        _check_point(point)
    return [int(s) for s in seeds], points


def _check_point(point: dict) -> None:
    check_learning_rate(point["lr"])
    check_coefficient(point["momentum"], "momentum", upper=1.0)
    check_coefficient(point["l2"], "l2")
    check_coefficient(point["dropout"], "dropout rate", upper=1.0)
    if not (isinstance(point["init_scale"], (int, float)) and math.isfinite(point["init_scale"])
            and point["init_scale"] > 0):
        raise ValueError(f"init_scale must be a positive finite number, got {point['init_scale']!r}.")
    if isinstance(point["epochs"], bool) or not isinstance(point["epochs"], int) or point["epochs"] < 1:
        raise ValueError(f"epochs must be a positive integer, got {point['epochs']!r}.")
    own = [k for k in SECOND_ORDER if point[k] is not None]
    if own and not getattr(OPTIMIZERS.lookup(point["optimizer"]), "takes_settings", False):
        raise ValueError(f"{', '.join(own)} is a setting of the second-order optimizers (kfac, ekfac, ggn_diag, "
                         f"gauss_newton, newton), not of {point['optimizer']!r}: leave it out or choose one.")
    if point["damping"] is not None:
        check_coefficient(point["damping"], "damping")


def check_select(select: str, loss: Loss, held: list[str]) -> None:
    """Raises one ``ValueError`` unless ``select`` names a final metric the sweep records:
    ``PREFIX_METRIC`` with ``PREFIX`` ``train`` or one of ``held`` (``val``, ``test``)."""
    names = ("loss", "mse", "r2") if loss.kind == "regression" else ("loss", "accuracy")
    known = [f"{p}_{m}" for p in ("train", *held) for m in names]
    if select not in known:
        hint = (" (this sweep evaluates a validation split: its metrics are val_*)"
                if "val" in held and "test" not in held and select.startswith("test_") else "")
        raise ValueError(f"Cannot select on {select!r}{hint}: choose from {', '.join(known)}.")


class _Data:
    """The training and held-out data (``{"val": ..., "test": ...}``) on the device, shared by all
    seeds or one split per seed."""

    def __init__(self, net, loss, x, v, held, num_seeds, per_seed):
        sets = [(x, v)] + [tuple(pair) for pair in held.values()]
        probe = init(jax.random.key(0), net)
        for xs, vs in sets:
            if per_seed != (np.ndim(xs) == 3) or (per_seed and len(xs) != num_seeds):
                raise ValueError(f"Per-seed data need a leading axis of one split per seed ({num_seeds}); give "
                                 "every array (train and test) per seed, or share them all.")
            for s in range(num_seeds if per_seed else 1):
                validate(net, loss, probe, xs[s] if per_seed else xs, vs[s] if per_seed else vs)
        self.per_seed, self.n = per_seed, int(np.shape(x)[-2])
        self.train = _to_device(probe, x, v)
        self.held = {name: _to_device(probe, *pair) for name, pair in held.items()}
        self.axis = 0 if per_seed else None


class _Group:
    """One program: the grid points that share every :data:`GROUPED` setting."""

    def __init__(self, net, loss, data: _Data, seeds, points, clip_norm, noise_multiplier, mesh=None):
        self.net, self.loss, self.data, self.seeds, self.points = net, loss, data, seeds, points
        self.mesh = mesh
        if mesh is not None and len(points) % mesh.size and len(seeds) % mesh.size:
            raise ValueError(f"{len(seeds)} seeds × {len(points)} grid points cannot be split evenly over "
                             f"{mesh.size} devices: make the seeds or a program's grid points a multiple of it.")
        self.static = points[0]
        check_batch_size(self.static["batch_size"], data.n)
        self.batches = data.n // self.static["batch_size"]
        # Settings the points share stay Python numbers (the program is then exactly the
        # one-run program); those that differ become arrays with a run axis.
        self.varying = [k for k in SWEEPABLE if len({p[k] for p in points}) > 1]
        self.recipe = Recipe.of(net, loss, self.static, self.varying, clip_norm, noise_multiplier, self.batches)
        self.recipe.update({k: self.static[k] for k in self.varying})  # checks method and DP settings

    def _optimizer(self, hyper):
        return self.recipe.optimizer(hyper)

    def _start(self):
        """Parameters, optimizer states ``(S, G, ...)``, hyperparameter arrays ``(G,)``, run keys ``(S,)``."""
        dtype = jnp.result_type(self.data.train[0])
        hyper = {k: jnp.asarray([p[k] for p in self.points], dtype) for k in self.varying}
        keys = [jax.random.split(jax.random.key(s), 3) for s in self.seeds]
        params = [init(k[0], self.net, self.static["init"], dtype=dtype) for k in keys]
        scales = jnp.asarray([p["init_scale"] for p in self.points], dtype)

        def scaled(p):  # weights × init_scale per point (× 1 is exact)
            return jax.vmap(lambda s: [{"W": l["W"] * s, "b": l["b"]} for l in p])(scales)

        params = jax.tree.map(lambda *a: jnp.stack(a), *[scaled(p) for p in params])
        opt_state = jax.vmap(jax.vmap(lambda p, h: self._optimizer(h).init(p), in_axes=(0, 0)),
                             in_axes=(0, None))(params, hyper)
        return params, opt_state, hyper, jnp.stack([k[1] for k in keys])

    def _epoch_fn(self):
        """The group's epoch program: the same jitted function for an equal group of a later sweep."""
        return epoch_program(self.recipe, self.data.axis)

    def _metrics_fn(self):
        return metrics_program(self.net, self.loss, self.data.axis)

    def _place(self, params, opt_state, hyper, keys):
        """Shards the run axis over the mesh: the grid points' axis when it divides evenly, else the seeds'."""
        if self.mesh is None:
            return params, opt_state, hyper, keys, self.data.train, self.data.held
        from jax.sharding import NamedSharding, PartitionSpec as P

        axis = self.mesh.axis_names[0]
        by_point = len(self.points) % self.mesh.size == 0
        put = lambda tree, spec: jax.device_put(tree, NamedSharding(self.mesh, spec))
        runs = P(None, axis) if by_point else P(axis)
        data_spec = P(axis) if (self.data.per_seed and not by_point) else P()
        held = {name: put(d, data_spec) for name, d in self.data.held.items()}
        return (put(params, runs), put(opt_state, runs), put(hyper, P(axis) if by_point else P()),
                put(keys, P() if by_point else P(axis)), put(self.data.train, data_spec), held)

    def train(self, progress: bool) -> dict:
        """``{(seed index, point index): {"params", "history", "diverged"}}``."""
        params, opt_state, hyper, keys, train, held = self._place(*self._start())
        epoch_fn, metrics_fn, epochs = self._epoch_fn(), self._metrics_fn(), self.static["epochs"]
        S, G = len(self.seeds), len(self.points)
        history: dict[str, list] = {"batch_loss": []}
        diverged = np.zeros((S, G), int)
        bar = _bar(epochs, f"{S}×{G} runs") if progress else None
        for e in range(epochs):
            epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, e)
            # A diverged run stays frozen: its steps are not applied in any later epoch.
            params, opt_state, losses, ok = epoch_fn(params, opt_state, hyper, *train, epoch_keys, e * self.batches,
                                                     diverged == 0)
            losses = np.asarray(losses)
            metrics = {f"train_{k}": a for k, a in metrics_fn(params, *train).items()}
            for name, arrays in held.items():
                metrics.update({f"{name}_{k}": a for k, a in metrics_fn(params, *arrays).items()})
            rates = learning_rates(opt_state)
            if rates is not None:
                metrics["lr"] = rates
            bad = ~np.asarray(ok) | ~np.isfinite(np.asarray(metrics["train_loss"]))
            diverged = np.where((diverged == 0) & bad, e + 1, diverged)
            gone = diverged > 0
            history["batch_loss"].append(np.where(gone, np.nan, losses.mean(-1)))
            for k, a in metrics.items():
                history.setdefault(k, []).append(np.where(gone, np.nan, np.broadcast_to(np.asarray(a), (S, G))))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        history = {k: np.stack(a, -1) for k, a in history.items()}  # (S, G, epochs)
        return {(s, g): {"params": jax.tree.map(lambda a: a[s, g], params),
                         "history": {k: a[s, g] for k, a in history.items()}, "diverged": int(diverged[s, g])}
                for s in range(S) for g in range(G)}


def _bar(total: int, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sweep ({what})", unit="epoch", leave=True, disable=None)
