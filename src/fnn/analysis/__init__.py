"""More from the backward pass: per-example quantities, curvature (GGN, Hessian products,
Kronecker factors), spectra and traces, DP-SGD's clipped gradients, and statistics over seeds.
Builds on :mod:`fnn.core` only."""
