"""fnn: feedforward neural networks in JAX with a hand-written backward pass.

``import fnn`` exports the functions and classes a research script uses (the names below,
listed in ``__all__``) and the modules a user reaches into by name: ``fnn.layers`` (the
forward/backward pairs), ``fnn.data``, ``fnn.checkpoint``, ``fnn.parallel``, ``fnn.plots``
and ``fnn.validation``. It needs only jax, optax and numpy; scikit-learn, matplotlib and
tqdm are imported when a dataset, a figure or a progress bar first needs them. The command
line (``fnn.cli``), the run folder (``fnn.runs``) and the benchmark (``fnn.bench``) are
not imported here: they are applications of the library, not part of it.
"""

import time as _time

# When fnn's import began (perf_counter): the command line measures its timings from here.
_IMPORT_STARTED = _time.perf_counter()

__version__ = "0.2.0"

from fnn.activations import ACTIVATIONS, Activation, get_activation, leaky_relu
from fnn.backprop import (
    LayerBackward,
    Objective,
    backward,
    backward_step,
    backward_with_input_grad,
    bridge,
    bridged_loss,
    l2_penalty,
    value_and_grad,
)
from fnn.curvature import Curvature, curvature_pass
from fnn.gradcheck import GradcheckReport, gradcheck
from fnn.hessian_free import gauss_newton, newton
from fnn.losses import LOSSES, Loss, get_loss, huber, risk, risk_grad
from fnn.network import MLP, Cache, forward, forward_with_cache, init
from fnn.optim import get_optimizer, make_update_fn, make_update_step, plain_gd
from fnn.plots import plot_history
from fnn.programs import clear_programs, enable_compile_cache
from fnn.quantities import (
    ggn_diagonal,
    ggn_vp,
    gradient_moments,
    hvp,
    kfac_factors,
    per_example_grad_norms,
    per_example_grads,
)
from fnn.schedules import SCHEDULES, make_schedule
from fnn.second_order import ggn_diag_precond, kfac
from fnn.spectrum import Eigenpairs, LanczosResult, SpectralDensity, lanczos, spectral_density, top_eigenpairs
from fnn.sweep import SweepResult, sweep
from fnn.trace import BackpropTrace, trace
from fnn.traces import hutchinson_trace, hutchpp_trace
from fnn.train import EarlyStopping, NonFiniteLossError, TrainState, evaluate, fit, fit_parallel, gradient_descent
from fnn.validation import check_inputs, check_params, check_targets, check_weights
from fnn import checkpoint, data, layers, parallel, plots, privacy, quantities, schedules, tables, validation
from fnn import spectrum, traces

__all__ = [
    "ACTIVATIONS", "Activation", "BackpropTrace", "Cache", "GradcheckReport", "LOSSES", "LayerBackward", "Loss", "MLP",
    "EarlyStopping", "NonFiniteLossError", "Objective", "SCHEDULES", "SweepResult", "TrainState",
    "backward", "backward_step", "backward_with_input_grad", "bridge", "bridged_loss", "check_inputs",
    "check_params", "check_targets", "check_weights", "clear_programs", "enable_compile_cache", "evaluate",
    "fit", "fit_parallel", "forward",
    "forward_with_cache", "get_activation", "get_loss", "get_optimizer", "gradcheck", "gradient_descent",
    "huber", "init", "l2_penalty", "leaky_relu", "make_schedule", "make_update_fn", "make_update_step", "plain_gd",
    "plot_history", "risk", "risk_grad", "sweep", "trace", "value_and_grad",
    "per_example_grads", "per_example_grad_norms", "gradient_moments", "ggn_diagonal", "kfac_factors", "hvp",
    "ggn_vp", "Curvature", "curvature_pass", "kfac", "ggn_diag_precond", "gauss_newton", "newton",
    "Eigenpairs", "LanczosResult", "SpectralDensity", "lanczos", "top_eigenpairs", "spectral_density",
    "hutchinson_trace", "hutchpp_trace", "spectrum", "traces",
    "checkpoint", "data", "layers", "parallel", "plots", "privacy", "quantities", "schedules", "tables", "validation",
]
