"""fnn: feedforward neural networks in JAX with a hand-written backward pass.

``import fnn`` exports the functions and classes a research script uses (the names below,
listed in ``__all__``) and the modules a user reaches into by name: ``fnn.layers`` (the
forward/backward pairs), ``fnn.data``, ``fnn.checkpoint``, ``fnn.parallel``, ``fnn.plots``
and ``fnn.validation``. It needs only jax, optax and numpy; scikit-learn, matplotlib and
tqdm are imported when a dataset, a figure or a progress bar first needs them. The command
line (``fnn.cli``), the run folder (``fnn.cli.runs``) and the benchmark (``fnn.bench``) are
not imported here: they are applications of the library, not part of it.
"""

import importlib as _importlib
import importlib.abc as _importlib_abc
import importlib.util as _importlib_util
import sys as _sys
import time as _time
import types as _types
import warnings as _warnings

# When fnn's import began (perf_counter): the command line measures its timings from here.
_IMPORT_STARTED = _time.perf_counter()

__version__ = "0.2.0"

from fnn.core.activations import ACTIVATIONS, Activation, get_activation, leaky_relu
from fnn.core.backprop import (
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
from fnn.analysis.curvature import Curvature, chain, curvature_pass
from fnn.core.gradcheck import GradcheckReport, gradcheck
from fnn.training.hessian_free import gauss_newton, newton
from fnn.core.losses import LOSSES, Loss, get_loss, huber, risk, risk_grad
from fnn.core.network import MLP, Cache, forward, forward_with_cache, init
from fnn.training.optim import get_optimizer, make_update_fn, make_update_step, plain_gd
from fnn.io.plots import plot_history
from fnn.core.programs import clear_programs, enable_compile_cache
from fnn.analysis.quantities import (
    ggn_diagonal,
    ggn_vp,
    gradient_moments,
    hvp,
    kfac_factors,
    per_example_grad_norms,
    per_example_grads,
)
from fnn.training.schedules import SCHEDULES, make_schedule
from fnn.training.second_order import ggn_diag_precond, kfac
from fnn.analysis.spectrum import Eigenpairs, LanczosResult, SpectralDensity, lanczos, spectral_density, top_eigenpairs
from fnn.training.sweep import SweepResult, sweep
from fnn.core.trace import BackpropTrace, trace
from fnn.analysis.traces import hutchinson_trace, hutchpp_trace
from fnn.training.config import TrainConfig
from fnn.training.train import EarlyStopping, NonFiniteLossError, TrainState, evaluate, fit, fit_parallel, gradient_descent
from fnn.core.validation import check_inputs, check_params, check_targets, check_weights
from fnn import data
from fnn.io import checkpoint
from fnn.core import layers
from fnn.training import parallel
from fnn.io import plots
from fnn.analysis import privacy
from fnn.analysis import quantities
from fnn.training import schedules
from fnn.data import tables
from fnn.core import validation
from fnn.analysis import spectrum
from fnn.analysis import traces

__all__ = [
    "ACTIVATIONS", "Activation", "BackpropTrace", "Cache", "GradcheckReport", "LOSSES", "LayerBackward", "Loss", "MLP",
    "EarlyStopping", "NonFiniteLossError", "Objective", "SCHEDULES", "SweepResult", "TrainConfig", "TrainState",
    "backward", "backward_step", "backward_with_input_grad", "bridge", "bridged_loss", "check_inputs",
    "check_params", "check_targets", "check_weights", "clear_programs", "enable_compile_cache", "evaluate",
    "fit", "fit_parallel", "forward",
    "forward_with_cache", "get_activation", "get_loss", "get_optimizer", "gradcheck", "gradient_descent",
    "huber", "init", "l2_penalty", "leaky_relu", "make_schedule", "make_update_fn", "make_update_step", "plain_gd",
    "plot_history", "risk", "risk_grad", "sweep", "trace", "value_and_grad",
    "per_example_grads", "per_example_grad_norms", "gradient_moments", "ggn_diagonal", "kfac_factors", "hvp",
    "ggn_vp", "Curvature", "chain", "curvature_pass", "kfac", "ggn_diag_precond", "gauss_newton", "newton",
    "Eigenpairs", "LanczosResult", "SpectralDensity", "lanczos", "top_eigenpairs", "spectral_density",
    "hutchinson_trace", "hutchpp_trace", "spectrum", "traces",
    "checkpoint", "data", "layers", "parallel", "plots", "privacy", "quantities", "schedules", "tables", "validation",
]

# Modules that lived directly under fnn before the subpackages: ``import fnn.gradcheck`` (and
# ``from fnn.sweep import sweep``) keep working and give the module at its new place, with a
# DeprecationWarning that names it. The table is the whole list; fnn.cli and fnn.data kept their names.
_MOVED = {
    'activations': 'core.activations',
    'backprop': 'core.backprop',
    'cache': 'io.cache',
    'checkpoint': 'io.checkpoint',
    'cliargs': 'cli.args',
    'columns': 'analysis.columns',
    'config': 'cli.config',
    'curvature': 'analysis.curvature',
    'descent': 'training.descent',
    'epoch': 'training.epoch',
    'files': 'io.files',
    'folders': 'io.folders',
    'gradcheck': 'core.gradcheck',
    'hessian_free': 'training.hessian_free',
    'kinks': 'core.kinks',
    'layers': 'core.layers',
    'losses': 'core.losses',
    'metrics': 'core.metrics',
    'network': 'core.network',
    'optim': 'training.optim',
    'parallel': 'training.parallel',
    'plots': 'io.plots',
    'privacy': 'analysis.privacy',
    'programs': 'core.programs',
    'quantities': 'analysis.quantities',
    'records': 'cli.records',
    'registry': 'core.registry',
    'runs': 'cli.runs',
    'schedules': 'training.schedules',
    'second_order': 'training.second_order',
    'spectrum': 'analysis.spectrum',
    'splits': 'data.splits',
    'stats': 'analysis.stats',
    'sweep': 'training.sweep',
    'sweepfolder': 'cli.sweepfolder',
    'sweepprograms': 'training.sweepprograms',
    'sweeprun': 'cli.sweeprun',
    'tables': 'data.tables',
    'trace': 'core.trace',
    'traces': 'analysis.traces',
    'train': 'training.train',
    'trainer': 'training.trainer',
    'validation': 'core.validation',
}


class _MovedModules(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """Import hook: an old flat module path resolves to the module at its new place."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("fnn.") and name[4:] in _MOVED:
            return _importlib_util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = f"fnn.{_MOVED[spec.name[4:]]}"
        _warnings.warn(f"{spec.name} is now {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = _importlib.import_module(new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import system set the old name's spec; keep the real one


_sys.meta_path.insert(0, _MovedModules())


def __getattr__(name):
    # ``fnn.optim`` and the like, reached as attributes after ``import fnn`` in earlier versions
    # (where importing fnn imported them as a side effect): the module at its new place.
    if name in _MOVED:
        new = f"fnn.{_MOVED[name]}"
        _warnings.warn(f"fnn.{name} is now {new}; import it from there", DeprecationWarning, stacklevel=2)
        return _importlib.import_module(new)
    raise AttributeError(f"module 'fnn' has no attribute {name!r}")


class _Package(_types.ModuleType):
    """fnn itself: importing an old path such as fnn.gradcheck must not replace the function
    fnn.gradcheck (or fnn.trace, fnn.sweep) with the module of the same old name."""

    def __setattr__(self, name, value):
        if name in _MOVED and isinstance(value, _types.ModuleType) and name in self.__dict__:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
