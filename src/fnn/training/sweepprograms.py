"""The compiled programs of one group of :func:`fnn.sweep`, built once per equal recipe.

A group's epoch program depends on the network, the loss, the settings its grid points share
and which settings vary over them, never on the data's values, the seeds or the values of the
varying settings (those are traced arrays). :class:`Recipe` holds exactly that as one
hashable value, and :func:`epoch_program` and :func:`metrics_program` are memoised on it
(:func:`fnn.core.programs.program_cache`): a second sweep with an equal configuration, in the same
process, compiles nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fnn.training.epoch import _guarded_step, epoch_order
from fnn.core.losses import Loss
from fnn.core.metrics import _metrics
from fnn.core.network import MLP
from fnn.analysis.curvature import attach, curvature_of
from fnn.training.optim import OPTIMIZERS, get_optimizer, make_update_fn, two_argument
from fnn.core.programs import program_cache
from fnn.training.schedules import make_schedule, with_schedule
from fnn.training.second_order import with_shared_step

# The second-order optimizers' own settings a sweep passes on (None: the optimizer's default).
SECOND_ORDER = ("damping", "inverse_update_period", "curvature_ema", "mc_samples", "cg_iterations",
                "norm_constraint", "damping_mode", "kfac_momentum")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a group's epoch program is built from.

    Attributes:
      net, loss: the architecture and loss.
      settings: ``(name, value)`` pairs, sorted, of the settings the group's points share and
        the program uses (the init scheme and scale are not; nor the epochs, unless a schedule
        or a warmup spans them).
      varying: the sweepable settings that differ over the points: traced, with a run axis.
      clip_norm, noise_multiplier: DP-SGD settings of every run.
      batches: batches per epoch (a schedule counts its steps in them).
    """

    net: MLP
    loss: Loss
    settings: tuple
    varying: tuple
    clip_norm: float | None
    noise_multiplier: float
    batches: int

    @classmethod
    def of(cls, net, loss, point: dict, varying, clip_norm, noise_multiplier, batches: int) -> "Recipe":
        """The recipe of a group whose first point is ``point``."""
        unused = {"init", "init_scale", *varying}
        if point["schedule"] == "constant" and not point["warmup_epochs"]:
            unused.add("epochs")
        shared = tuple(sorted((k, a) for k, a in point.items() if k not in unused))
        return cls(net, loss, shared, tuple(varying), clip_norm, noise_multiplier, batches)

    def value(self, hyper: dict, key: str):
        """A setting: the run's traced value when it varies, else the shared one."""
        return hyper[key] if key in hyper else dict(self.settings)[key]

    def optimizer(self, hyper: dict):
        """The optimizer of the runs whose varying settings are ``hyper``."""
        p, lr, momentum = dict(self.settings), self.value(hyper, "lr"), self.value(hyper, "momentum")
        own = {k: self.value(hyper, k) for k in SECOND_ORDER if self.value(hyper, k) is not None}
        build = OPTIMIZERS.lookup(p["optimizer"])
        if own:  # the second-order optimizers' own settings (None: the optimizer's default)
            build = functools.partial(build, **own)
        if p["schedule"] == "constant" and not p["warmup_epochs"]:
            if any(isinstance(a, jax.Array) for a in (lr, momentum, *own.values())):
                return build(lr, momentum)
            return get_optimizer(p["optimizer"], lr, momentum, **own)
        warmup = None if p["warmup_epochs"] is None else p["warmup_epochs"] * self.batches
        schedule = make_schedule(p["schedule"], lr, p["epochs"] * self.batches, warmup)
        scheduled = with_schedule(two_argument(build), schedule, momentum=momentum)
        curvature = curvature_of(build(1.0, 0.0))
        return scheduled if curvature is None else attach(scheduled, curvature)

    def update(self, hyper: dict, step=None):
        """The update step (:func:`fnn.make_update_fn`) of the runs whose varying settings are ``hyper``;
        ``step`` (unbatched) is the steps every run has taken, given to a second-order optimizer
        (:func:`fnn.training.second_order.with_shared_step`) so that K-FAC's refresh stays a
        ``lax.cond`` under the runs' ``vmap``."""
        optimizer = self.optimizer(hyper)
        if step is not None and curvature_of(optimizer) is not None:
            optimizer = with_shared_step(optimizer, step)
        return make_update_fn(self.net, self.loss, optimizer, self.value(hyper, "method"),
                              l2=self.value(hyper, "l2"), dropout=self.value(hyper, "dropout"),
                              clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier)

    @property
    def needs_key(self) -> bool:
        """Whether a step draws random numbers (dropout masks or DP noise)."""
        return "dropout" in self.varying or self.value({}, "dropout") > 0 or self.noise_multiplier > 0 or (
            (self.value({}, "mc_samples") or 0) > 0)


@program_cache
def epoch_program(recipe: Recipe, axis: int | None):
    """``epoch(params, opt_state, hyper, x, v, keys, start=0, ok=None) -> (params, opt_state, losses, ok)``:
    one epoch of every run, ``(S, G, ...)`` states, ``hyper`` ``{setting: (G,)}``, ``keys`` ``(S,)``,
    data per seed (``axis=0``) or shared (``None``), ``start`` the steps taken before the epoch
    (an integer, the same for every run); ``losses`` ``(S, G, batches)``. ``ok`` ``(S, G)`` bool
    (default all ``True``) says which runs train: a run with ``ok`` false stays as it is, and
    one whose step gives a non-finite batch loss, parameters or optimizer state keeps the
    state before that step and comes back with ``ok`` false. One jitted function per equal
    ``(recipe, axis)``."""
    batch_size, needs_key = recipe.value({}, "batch_size"), recipe.needs_key

    def one_seed(params, opt_state, hyper, x, v, key, start, ok):
        batches, dropout_key = epoch_order(key, x.shape[0], batch_size)

        def step(carry, inputs):
            def one_run(params, opt_state, ok, hyper):
                update = recipe.update(hyper, start + inputs[1].astype(jnp.int32))  # unbatched: the runs share it
                update.needs_key = needs_key
                guarded = _guarded_step(update, None, x, v, dropout_key, 0, batches.shape[0], check_state=True)
                (params, opt_state, ok), loss = guarded((params, opt_state, ok), inputs)
                return params, opt_state, ok, loss

            params, opt_state, ok, loss = jax.vmap(one_run)(*carry, hyper)
            return (params, opt_state, ok), loss

        (params, opt_state, ok), losses = jax.lax.scan(step, (params, opt_state, ok),
                                                       (batches, jnp.arange(batches.shape[0])))
        return params, opt_state, losses.T, ok

    program = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None, axis, axis, 0, None, 0)))

    def epoch(params, opt_state, hyper, x, v, keys, start=0, ok=None):
        ok = jnp.ones(jax.tree.leaves(params)[0].shape[:2], bool) if ok is None else jnp.asarray(ok, bool)
        return program(params, opt_state, hyper, x, v, keys, jnp.asarray(start, jnp.int32), ok)
    return epoch


@program_cache
def metrics_program(net: MLP, loss: Loss, axis: int | None):
    """``metrics(params, x, v) -> {name: (S, G)}``: :func:`fnn.evaluate`'s metrics of every run."""
    per_run = jax.vmap(lambda p, x, v: _metrics(net, loss, p, x, v), in_axes=(0, None, None))
    return jax.jit(jax.vmap(per_run, in_axes=(0, axis, axis)))
