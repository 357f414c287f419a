"""Curvature of a loss over the flat parameter vector: dense Hessians, Hessian-vector products,
Lanczos with full re-orthogonalisation, top eigenpairs (with warm starts for tracking along a
trajectory), Hutchinson traces and stochastic Lanczos quadrature (SLQ) spectral densities.

Conventions
-----------
* Everything takes a scalar function ``f: [P] -> scalar`` of the flat parameter vector (in the
  original PyTorch coordinates, see :mod:`sgdjax.models.base`) or a symmetric linear operator
  ``matvec: [P] -> [P]``. Callers close over the batch, the BatchNorm state and the BatchNorm mode
  (:func:`loss_at` does it for a model and says which mode the curvature is taken in), so the
  functions here never need to know about models.
* All functions are pure and traceable: they compose with ``jax.jit``, ``jax.vmap`` and
  ``lax.scan``. Sizes (``dim``, ``k``, ``num_iters``, ``num_probes``), dtypes and string options
  are Python values -- static under jit. Iterations run inside ``lax.fori_loop`` with fixed-size
  buffers, so a call compiles once whatever the number of iterations.
* Arithmetic happens in ``dtype`` (pass ``dtype=w.dtype``; by default the dtype of ``v0`` /
  ``init_vectors``, else JAX's default float). Inner products that decide orthogonality use
  ``Precision.HIGHEST`` so that an accelerator never silently drops to TF32/bfloat16 passes,
  which would destroy the orthogonality of the Lanczos basis.
* Random choices come from explicit keys. Where a key is optional, ``None`` means the fixed key
  ``PRNGKey(0)``: results stay deterministic and depend only on the arguments.

Lanczos and memory
------------------
Full re-orthogonalisation keeps the whole basis ``V [num_iters, P]`` -- the main memory cost
(``num_iters · P`` floats: 800 MB for 200 iterations of a 1 M-parameter model in float32). It is
what makes Ritz values match dense eigenvalues to machine precision without ghost copies, which
the plain three-term recurrence cannot promise in finite precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:
    from sgdjax.models.base import TorchLayoutModel

Array = jax.Array
ScalarFn = Callable[[Array], Array]
MatVec = Callable[[Array], Array]
BNMode = Literal["batch", "running"]

# Orthogonality is decided by these products: never let an accelerator use reduced precision.
_HI = lax.Precision.HIGHEST

BN_MODES: tuple[str, ...] = ("batch", "running")


# --------------------------------------------------------------------------------------------------
# Losses and Hessian products
# --------------------------------------------------------------------------------------------------
def loss_at(
    model: TorchLayoutModel, state: Any, x: Array, y: Array, *, bn_mode: BNMode
) -> ScalarFn:
    """``w -> loss`` of ``model`` on the batch ``(x, y)`` (``x`` = ``model.featurize`` output).

    ``bn_mode`` says explicitly which function the curvature is taken of, because with
    BatchNorm the two differ (the batch statistics depend on ``w``):

    * ``"batch"`` -- the minibatch loss the SGD step sees: BatchNorm normalises with the
      statistics of this batch (``train=True``); the running-statistics update is discarded.
    * ``"running"`` -- the evaluation-mode loss: BatchNorm uses the running statistics held in
      ``state`` (``train=False``), so the loss is a per-sample average.

    For models without BatchNorm (MLP, NanoGPT) the two modes are the same function.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    from sgdjax.models.objective import make_loss_fn

    loss_fn = make_loss_fn(model, train=bn_mode == "batch")

    def f(w: Array) -> Array:
        return loss_fn(w, state, x, y)[0]

    return f


def dense_hessian(f: ScalarFn, w: Array, *, batch_size: int | None = None) -> Array:
    """The ``[P, P]`` Hessian of ``f`` at ``w`` (forward-over-reverse), symmetrised.

    ``batch_size=None`` uses ``jax.hessian``, which pushes all ``P`` tangents through at once
    (memory: ``P`` copies of the activations); an int computes the columns as HVPs in chunks of
    that many, bounding memory for large batches. Symmetrising removes the rounding asymmetry of
    the two differentiation orders, so a symmetric eigensolver sees exactly the matrix it
    assumes.
    """
    if batch_size is None:
        h = jax.hessian(f)(w)
    else:
        h = lax.map(make_hvp(f, w), jnp.eye(w.shape[0], dtype=w.dtype), batch_size=batch_size)
    return 0.5 * (h + h.T)


def hvp(f: ScalarFn, w: Array, v: Array) -> Array:
    """``H(w) @ v`` by forward-over-reverse (``jvp`` of ``grad``), without a ``[P, P]`` matrix.

    Each call recomputes the gradient alongside its tangent (about twice the work of a
    :func:`make_hvp` product), but holds no residuals between calls and, inside a jitted loop,
    compiles faster than a linearised closure (measured on NanoGPT on CPU): the better choice
    for a handful of products or when compile time dominates.
    """
    return jax.jvp(jax.grad(f), (w,), (jnp.asarray(v, w.dtype),))[1]


def make_hvp(f: ScalarFn, w: Array) -> MatVec:
    """A closure ``v -> H(w) @ v`` that linearises ``grad f`` at ``w`` once.

    ``jax.linearize`` evaluates the gradient and stores the residuals of its tangent map, so
    every product afterwards (dozens to hundreds in Lanczos) costs only the tangent sweep
    instead of re-running the gradient's primal computation. The residuals (the activations of
    one forward/backward pass) stay in memory for the closure's lifetime.
    """
    _, tangent = jax.linearize(jax.grad(f), w)
    return lambda v: tangent(jnp.asarray(v, w.dtype))


# --------------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------------
def _resolve_dtype(dtype: Any, *arrays: Any) -> Any:
    if dtype is not None:
        return jnp.dtype(dtype)
    for a in arrays:
        if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return jnp.result_type(a)
    return jnp.result_type(float)  # float64 under x64, else float32


def _key_or_default(key: Array | None) -> Array:
    return jax.random.PRNGKey(0) if key is None else key


def _project_out(V: Array, w: Array) -> tuple[Array, Array, Array]:
    """``w`` minus its projection on the rows of ``V``: two passes of classical Gram-Schmidt.

    One pass loses orthogonality in proportion to the cancellation; a second pass restores it
    to machine precision ("twice is enough", Kahan-Parlett). Rows of ``V`` that are still zero
    contribute nothing, so they need no explicit mask. Each pass is a matrix-vector and a
    vector-matrix product with ``V`` (one vector at a time: on CPU a ``[m, P] x [P, k]`` product
    with small ``m`` is several times slower than ``m`` matrix-vector products; and looping over
    the filled rows only, in blocks, measured slower than the full product). Returns
    ``(w'', ‖w'‖, ‖w''‖)``: if the second pass removed most of what the first left
    (``‖w''‖ < ‖w'‖ / 2``), ``w'`` was rounding noise inside the span of ``V`` and ``w`` counts
    as linearly dependent.
    """
    w1 = w - jnp.matmul(jnp.matmul(V, w, precision=_HI), V, precision=_HI)
    w2 = w1 - jnp.matmul(jnp.matmul(V, w1, precision=_HI), V, precision=_HI)
    return w2, jnp.linalg.norm(w1), jnp.linalg.norm(w2)


def lanczos(
    matvec: MatVec,
    dim: int,
    k_steps: int,
    key: Array | None = None,
    v0: Array | None = None,
    *,
    dtype: Any = None,
    reorth: bool = True,
    breakdown_tol: float | None = None,
) -> tuple[Array, Array, Array]:
    """``k_steps`` Lanczos steps on the symmetric operator ``matvec`` of size ``dim``.

    Returns ``(alphas [k], betas [k-1], V [k, dim])``: the diagonal and off-diagonal of the
    tridiagonal ``T = V A Vᵀ`` and the orthonormal basis (rows). The start vector is ``v0``
    (normalised) or, when absent, a standard normal draw from ``key``.

    ``reorth=True`` (default) orthogonalises each new vector against *all* previous ones with
    two passes of classical Gram-Schmidt (:func:`_project_out`), which keeps ``V`` orthonormal to
    machine precision; ``reorth=False`` is the plain three-term recurrence (cheaper, but in
    finite precision it produces spurious copies of converged eigenvalues).

    Breakdown: when the new residual norm ``beta`` falls below ``breakdown_tol · max‖A v‖``
    (default ``10 √k_steps · eps``, the rounding level of the projections), or the second
    Gram-Schmidt pass shows the residual was rounding noise inside the basis
    (:func:`_project_out`), the Krylov space is (numerically) invariant. Lanczos then continues
    with a random vector orthogonal to the basis and records ``beta = 0``, so ``T`` becomes
    block diagonal and remains exactly ``V A Vᵀ``: its eigenvalues are still Ritz values, and
    with ``k_steps = dim`` they are all eigenvalues of ``A`` even for matrices with repeated
    eigenvalues. Restart vectors are derived from a draw from ``key``.

    The loop is a ``lax.fori_loop`` over a fixed ``[k_steps, dim]`` basis, so it compiles once
    and composes with ``jit``/``vmap``/``scan``.
    """
    if not 1 <= k_steps <= dim:
        raise ValueError(f"lanczos: need 1 <= k_steps <= dim, got k_steps={k_steps}, dim={dim}")
    dtype = _resolve_dtype(dtype, v0)
    # Random vectors are drawn in one call outside the loop (every separate draw compiles its
    # own generator, which costs seconds on a small CPU). ``r0`` feeds restarts: breakdown at
    # step j restarts from ``r0`` rolled by j, projected off the basis.
    if v0 is None:
        if key is None:
            raise ValueError("lanczos: give a start vector v0 or a key to draw one")
        v0, r0 = jax.random.normal(key, (2, dim), dtype)
    else:
        r0 = jax.random.normal(_key_or_default(key), (dim,), dtype)
    v0 = jnp.asarray(v0, dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    eps = float(jnp.finfo(dtype).eps)
    tol = 10 * math.sqrt(k_steps) * eps if breakdown_tol is None else breakdown_tol

    def body(j: Array, carry: tuple[Array, Array, Array, Array]) -> tuple[Array, ...]:
        V, alphas, betas, scale = carry
        v = V[j]
        w = jnp.asarray(matvec(v), dtype)
        scale = jnp.maximum(scale, jnp.linalg.norm(w))
        alpha = jnp.dot(v, w, precision=_HI)
        if reorth:
            w, n1, beta = _project_out(V, w)
            dependent = beta < 0.5 * n1
        else:
            jm1 = jnp.maximum(j - 1, 0)
            beta_prev = jnp.where(j > 0, betas[jm1], jnp.zeros((), dtype))
            w = w - alpha * v - beta_prev * V[jm1]
            beta = jnp.linalg.norm(w)
            dependent = jnp.zeros((), bool)
        broke = dependent | (beta <= tol * scale)

        # lax.cond: the restart's extra passes over V cost nothing unless it happens (under
        # vmap both branches run, as with any cond).
        def restart(_: None) -> tuple[Array, Array]:
            r, _, n = _project_out(V, jnp.roll(r0, j))
            return r / jnp.where(n > 0, n, 1), jnp.zeros((), dtype)

        def proceed(_: None) -> tuple[Array, Array]:
            return w / jnp.where(beta > 0, beta, 1), beta

        v_next, beta = lax.cond(broke, restart, proceed, None)
        # mode="drop": the last step's next vector falls outside the basis and is discarded.
        V = V.at[j + 1].set(v_next, mode="drop")
        return V, alphas.at[j].set(alpha), betas.at[j].set(beta), scale

    init = (
        jnp.zeros((k_steps, dim), dtype).at[0].set(v0),
        jnp.zeros((k_steps,), dtype),
        jnp.zeros((k_steps,), dtype),
        jnp.zeros((), dtype),
    )
    V, alphas, betas, _ = lax.fori_loop(0, k_steps, body, init)
    return alphas, betas[:-1], V


@jax.jit
def tridiagonal(alphas: Array, betas: Array) -> Array:
    """The dense symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal
    ``betas`` (``len(alphas) - 1``)."""
    return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _tridiag_eigh(alphas: Array, betas: Array) -> tuple[Array, Array]:
    # T is at most a few hundred wide: dense eigh is cheap, batches under vmap, and returns the
    # eigenvectors SLQ and the Ritz vectors need.
    return jnp.linalg.eigh(tridiagonal(alphas, betas))


def default_num_iters(dim: int, k: int) -> int:
    """Lanczos steps used for the top ``k`` eigenpairs when none are given:
    ``min(dim, max(2k + 20, 3k))``."""
    return min(dim, max(2 * k + 20, 3 * k))


def warm_start_vector(
    init_vectors: Array, key: Array | None = None, *, noise: float = 0.0, dtype: Any = None
) -> Array:
    """The Lanczos start vector built from a previous step's top vectors ``init_vectors [m, P]``.

    Choice: the normalised sum of the (normalised) vectors. If the operator changed little, the
    sum lies almost inside the new top-``m`` invariant subspace with a sizeable component on every
    one of its eigenvectors, so the Krylov space captures that subspace after about ``m`` steps
    and a few more polish it -- instead of the ``2k + 20`` a random start needs to filter out the
    bulk. (Eigenvector signs are arbitrary; any signs give nonzero components.) A direction that
    has overtaken one of the old ones is not lost: the change of the operator gives it a small
    component that Lanczos amplifies like any other, and if the old subspace is *exactly*
    invariant, Lanczos breaks down after ``m`` steps and :func:`lanczos` restarts with a random
    orthogonal vector. ``noise > 0`` adds a random unit vector of that weight (drawn from ``key``)
    for extra insurance, at the price of a few iterations. A block start (all ``m`` vectors as
    the first basis vectors) would capture the subspace as well, but breaks the tridiagonal
    structure that SLQ-style quadrature and the cheap Ritz extraction rely on.
    """
    dtype = _resolve_dtype(dtype, init_vectors)
    u = jnp.asarray(init_vectors, dtype)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    v = jnp.sum(u, axis=0)
    v = v / jnp.linalg.norm(v)
    if noise:
        r = jax.random.normal(_key_or_default(key), v.shape, dtype)
        v = v + noise * r / jnp.linalg.norm(r)
        v = v / jnp.linalg.norm(v)
    return v


def top_eigenpairs(
    matvec: MatVec,
    dim: int,
    k: int,
    *,
    num_iters: int | None = None,
    key: Array | None = None,
    v0: Array | None = None,
    init_vectors: Array | None = None,
    warm_noise: float = 0.0,
    dtype: Any = None,
    which: Literal["largest", "magnitude"] = "largest",
    reorth: bool = True,
) -> tuple[Array, Array]:
    """The ``k`` extreme eigenpairs of the symmetric operator ``matvec`` by Lanczos.

    Returns ``(eigvals [k], eigvecs [k, dim])`` sorted descending (by value for
    ``which="largest"``, by absolute value for ``which="magnitude"`` -- useful for signed
    Hessians whose most negative curvature matters). Eigenvectors are the unit-norm Ritz vectors.

    Start vector, in order of precedence: ``v0``; ``init_vectors [m, dim]`` -- the previous
    trajectory step's top vectors, combined by :func:`warm_start_vector` (warm start: fewer
    ``num_iters`` for the same accuracy when the operator changes slowly); else a random normal
    vector from ``key``. ``num_iters`` defaults to :func:`default_num_iters`.
    """
    num_iters = default_num_iters(dim, k) if num_iters is None else num_iters
    if not 1 <= k <= num_iters:
        raise ValueError(f"top_eigenpairs: need 1 <= k <= num_iters, got k={k}, {num_iters=}")
    if which not in ("largest", "magnitude"):
        raise ValueError(f"which must be 'largest' or 'magnitude', got {which!r}")
    if v0 is not None and init_vectors is not None:
        raise ValueError("top_eigenpairs: give v0 or init_vectors, not both")
    dtype = _resolve_dtype(dtype, v0, init_vectors)
    key = _key_or_default(key)
    if init_vectors is not None:
        noise_key = key
        if warm_noise:
            noise_key, key = jax.random.split(key)
        v0 = warm_start_vector(init_vectors, noise_key, noise=warm_noise, dtype=dtype)
    alphas, betas, V = lanczos(matvec, dim, num_iters, key, v0, dtype=dtype, reorth=reorth)
    theta, S = _tridiag_eigh(alphas, betas)
    order = jnp.argsort(-theta if which == "largest" else -jnp.abs(theta))[:k]
    vecs = jnp.dot(S[:, order].T, V, precision=_HI)
    vecs = vecs / jnp.linalg.norm(vecs, axis=-1, keepdims=True)
    return theta[order], vecs


def lambda_max(
    matvec: MatVec,
    dim: int,
    num_iters: int | None = None,
    *,
    key: Array | None = None,
    v0: Array | None = None,
    init_vectors: Array | None = None,
    dtype: Any = None,
) -> Array:
    """The largest eigenvalue of ``matvec`` (e.g. the sharpness ``λ_max(H)``), by Lanczos with
    ``num_iters`` steps (default ``min(dim, 22)``); see :func:`top_eigenpairs`."""
    vals, _ = top_eigenpairs(
        matvec,
        dim,
        1,
        num_iters=num_iters,
        key=key,
        v0=v0,
        init_vectors=init_vectors,
        dtype=dtype,
    )
    return vals[0]


# --------------------------------------------------------------------------------------------------
# Stochastic trace and density estimation
# --------------------------------------------------------------------------------------------------
def _probe(key: Array, dim: int, dtype: Any, distribution: str) -> Array:
    if distribution == "rademacher":
        return jax.random.rademacher(key, (dim,), dtype)
    if distribution == "gaussian":
        return jax.random.normal(key, (dim,), dtype)
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def _map(fn: Callable[[Array], Any], keys: Array, batch_size: int | None) -> Any:
    # batch_size=None: one vmap over everything (fastest for small models);
    # an int: lax.map in vmapped chunks, bounding memory for large ones.
    if batch_size is None:
        return jax.vmap(fn)(keys)
    return lax.map(fn, keys, batch_size=batch_size)


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int,
    key: Array,
    *,
    dtype: Any = None,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """Hutchinson's estimate of ``tr A`` = mean of ``zᵀ A z`` over ``num_samples`` probes.

    Returns ``(estimate, standard_error)`` with the standard error ``std(samples) / √n`` (ddof 1)
    so callers can judge the estimate. Rademacher probes give the minimum variance among
    i.i.d. probes (``2 Σ_{i≠j} A_ij²``); Gaussian ones add ``2 Σ_i A_ii²``.
    ``batch_size``: probes evaluated at once (``None``: all, vmapped).
    """
    if num_samples < 2:
        raise ValueError("hutchinson_trace: need num_samples >= 2 for a standard error")
    dtype = _resolve_dtype(dtype)

    def one(k: Array) -> Array:
        z = _probe(k, dim, dtype, distribution)
        return jnp.dot(z, jnp.asarray(matvec(z), dtype), precision=_HI)

    samples = _map(one, jax.random.split(key, num_samples), batch_size)
    return jnp.mean(samples), jnp.std(samples, ddof=1) / math.sqrt(num_samples)


def slq_nodes_weights(
    matvec: MatVec,
    dim: int,
    key: Array,
    *,
    num_probes: int,
    num_iters: int,
    dtype: Any = None,
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """Gauss quadrature nodes and weights of stochastic Lanczos quadrature.

    For each of ``num_probes`` Rademacher probes ``z`` (normalised), Lanczos from ``z`` gives
    ``T``; its eigenvalues ``θ_j`` (Ritz values) are the nodes and the squared first components
    of its eigenvectors ``τ_j²`` the weights (each probe's weights sum to 1). Then

        zᵀ g(A) z / ‖z‖² ≈ Σ_j τ_j² g(θ_j),   so   tr g(A) ≈ dim · mean_probes Σ_j τ_j² g(θ_j)

    and the spectral measure ``(1/dim) Σ_i δ(λ - λ_i)`` is approximated by
    ``mean_probes Σ_j τ_j² δ(λ - θ_j)``. Returns ``(nodes, weights)``, both
    ``[num_probes, num_iters]``. Probes run under ``vmap`` (``batch_size`` bounds how many at
    once; every probe holds its own ``[num_iters, dim]`` basis).
    """
    dtype = _resolve_dtype(dtype)

    def one(k: Array) -> tuple[Array, Array]:
        probe_key, restart_key = jax.random.split(k)
        z = _probe(probe_key, dim, dtype, "rademacher")
        alphas, betas, _ = lanczos(matvec, dim, num_iters, restart_key, z, dtype=dtype)
        theta, S = _tridiag_eigh(alphas, betas)
        return theta, jnp.square(S[0])

    return _map(one, jax.random.split(key, num_probes), batch_size)


def slq_trace(
    nodes: Array, weights: Array, dim: int, fn: Callable[[Array], Array] | None = None
) -> Array:
    """``tr g(A) ≈ dim · mean_probes Σ_j w_j g(θ_j)`` from :func:`slq_nodes_weights`
    (``fn=None``: ``g(λ) = λ``, the trace)."""
    values = nodes if fn is None else fn(nodes)
    return dim * jnp.mean(jnp.sum(weights * values, axis=-1))


@jax.jit
def smoothed_density(nodes: Array, weights: Array, grid: Array, sigma: float) -> Array:
    """``Σ_j w_j N(grid; node_j, σ²)`` on ``grid``, normalised to integrate to 1 on the grid
    (trapezoid rule), so densities from different estimators compare on equal footing even when
    the grid cuts off a little of the Gaussian tails."""
    nodes = jnp.ravel(nodes)
    weights = jnp.ravel(weights)
    z = (grid[:, None] - nodes[None, :]) / sigma
    kernel = jnp.exp(-0.5 * jnp.square(z)) / (sigma * math.sqrt(2 * math.pi))
    density = jnp.dot(kernel, weights, precision=_HI)
    mass = jnp.trapezoid(density, grid)
    return density / jnp.where(mass > 0, mass, 1)


def slq_density(
    matvec: MatVec,
    dim: int,
    key: Array,
    *,
    num_probes: int,
    num_iters: int,
    grid: Array,
    sigma: float,
    dtype: Any = None,
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """Smoothed spectral density of ``matvec`` by stochastic Lanczos quadrature.

    Nodes and weights from :func:`slq_nodes_weights`, each probe weighted ``1/num_probes``,
    smoothed with a Gaussian of width ``sigma`` on ``grid`` and normalised to integrate to 1
    (:func:`smoothed_density`). Returns ``(grid, density)``. Compare with :func:`dense_density`
    of the exact eigenvalues, which applies the same smoothing.
    """
    nodes, weights = slq_nodes_weights(
        matvec,
        dim,
        key,
        num_probes=num_probes,
        num_iters=num_iters,
        dtype=dtype,
        batch_size=batch_size,
    )
    grid = jnp.asarray(grid, nodes.dtype)
    return grid, smoothed_density(nodes, weights / num_probes, grid, sigma)


@jax.jit
def dense_density(eigvals: Array, grid: Array, sigma: float) -> Array:
    """The exact spectrum ``eigvals`` (each weight ``1/n``) smoothed as :func:`slq_density`."""
    eigvals = jnp.ravel(eigvals)
    weights = jnp.full(eigvals.shape, 1.0 / eigvals.shape[0], eigvals.dtype)
    return smoothed_density(eigvals, weights, jnp.asarray(grid, eigvals.dtype), sigma)


@jax.jit
def wasserstein1(
    nodes_a: Array, weights_a: Array, nodes_b: Array, weights_b: Array | None = None
) -> Array:
    """Wasserstein-1 distance between two discrete measures on the real line,
    ``∫ |F_a(x) - F_b(x)| dx`` (weights are normalised; ``weights_b=None``: uniform).

    The natural distance between an SLQ spectral measure (nodes/weights) and the dense
    eigenvalues: it needs no smoothing width and is in the units of the eigenvalues.
    """
    a, wa = jnp.ravel(nodes_a), jnp.ravel(weights_a)
    b = jnp.ravel(nodes_b)
    wb = jnp.ones_like(b) if weights_b is None else jnp.ravel(weights_b)
    x = jnp.concatenate([a, b.astype(a.dtype)])
    s = jnp.concatenate([wa / jnp.sum(wa), -(wb / jnp.sum(wb)).astype(a.dtype)])
    order = jnp.argsort(x)
    x, s = x[order], s[order]
    cdf_gap = jnp.cumsum(s)[:-1]
    return jnp.sum(jnp.abs(cdf_gap) * jnp.diff(x))
