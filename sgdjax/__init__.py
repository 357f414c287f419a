"""sgdjax: a JAX laboratory for the dynamics of training."""

__version__ = "0.1.0"
