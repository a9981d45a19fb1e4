"""The engine's curvature sources besides the exact GGN / EF output factors (subsets/): the
Monte-Carlo Fisher (mc_fisher), the exact Hessian of the loss (hessian) and the optional ASDL
adapter (asdl). laplace-torch's backend class names live above the engine (laplace/backends.py,
re-exported by laplace_cli.curvature)."""
