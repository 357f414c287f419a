"""Analysis of what the stages store: curvature (:mod:`.hessian`) and, later, spectra and
ensemble statistics."""

from __future__ import annotations

from sgdjax.analysis.hessian import (
    BN_MODES,
    default_num_iters,
    dense_density,
    dense_hessian,
    hutchinson_trace,
    hvp,
    lambda_max,
    lanczos,
    loss_at,
    make_hvp,
    slq_density,
    slq_nodes_weights,
    slq_trace,
    smoothed_density,
    top_eigenpairs,
    tridiagonal,
    warm_start_vector,
    wasserstein1,
)

__all__ = [
    "BN_MODES",
    "default_num_iters",
    "dense_density",
    "dense_hessian",
    "hutchinson_trace",
    "hvp",
    "lambda_max",
    "lanczos",
    "loss_at",
    "make_hvp",
    "slq_density",
    "slq_nodes_weights",
    "slq_trace",
    "smoothed_density",
    "top_eigenpairs",
    "tridiagonal",
    "warm_start_vector",
    "wasserstein1",
]
