"""fnn: feedforward neural networks in JAX with a hand-written backward pass."""

from fnn.activations import ACTIVATIONS, Activation, get_activation, leaky_relu
from fnn.backprop import (
    backward,
    backward_with_input_grad,
    bridge,
    bridged_loss,
    l2_penalty,
    value_and_grad,
)
from fnn.gradcheck import GradcheckReport, gradcheck
from fnn.losses import LOSSES, Loss, get_loss, huber, risk, risk_grad
from fnn.network import MLP, Cache, forward, forward_with_cache, init
from fnn.validation import check_inputs, check_params, check_targets, check_weights

from fnn.optim import get_optimizer, make_update_fn, make_update_step, plain_gd
from fnn.train import NonFiniteLossError, TrainState, evaluate, fit, fit_parallel, gradient_descent
from fnn import checkpoint, data, parallel, validation

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Cache", "GradcheckReport", "LOSSES", "Loss", "MLP",
    "backward", "backward_with_input_grad", "bridge", "bridged_loss", "check_inputs",
    "check_params", "check_targets", "check_weights", "forward", "forward_with_cache", "get_activation", "get_loss",
    "gradcheck", "huber", "init", "l2_penalty", "leaky_relu", "risk", "risk_grad",
    "value_and_grad", "get_optimizer", "make_update_fn", "make_update_step", "plain_gd",
    "NonFiniteLossError", "TrainState", "evaluate", "fit", "fit_parallel", "gradient_descent", "checkpoint", "data",
    "parallel", "validation",
]
