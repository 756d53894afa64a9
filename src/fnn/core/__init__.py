"""The network and its hand-written derivatives: layers, activations, losses, the forward pass
with its cache, the backward pass and the gradient check. Imports nothing else from fnn."""
