"""Integrated Gradients."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import GradientAttribution

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
#: Largest `n_steps` accepted. Integrated Gradients converges with tens to a few
#: hundred path points (`gausslegendre` needs the fewest); check with
#: `return_convergence_delta=True`. Larger values are refused as a mistake.
MAX_N_STEPS = 50_000


def _legendre(n, x):
    """`(P_n(x), P_n'(x))` by the three-term recurrence: O(len(x)) memory."""
    p_prev, p = np.ones_like(x), x.copy()
    if n == 0:
        return p_prev, np.zeros_like(x)
    tmp = np.empty_like(x)
    for k in range(1, n):
        # (k + 1) P_{k+1} = (2k + 1) x P_k - k P_{k-1}
        np.multiply(x, p, out=tmp)
        tmp *= (2 * k + 1) / (k + 1)
        p_prev *= k / (k + 1)
        tmp -= p_prev
        p_prev, p, tmp = p, tmp, p_prev
    return p, n * (x * p - p_prev) / (x * x - 1.0)


@functools.lru_cache(maxsize=16)
def gauss_legendre(n: int):
    """Gauss-Legendre nodes and weights on `[-1, 1]`, ascending, without an n x n matrix.

    Newton's method on the three-term recurrence of the Legendre polynomial
    `P_n`, from Tricomi's asymptotic first guess of each root, for the
    `ceil(n / 2)` non-negative roots (the others by symmetry); weights
    `2 / ((1 - x^2) P_n'(x)^2)`. O(n) memory and O(n^2) time, cached
    (numpy's `leggauss` builds an n x n companion matrix: O(n^2) memory,
    O(n^3) time). Matches `numpy.polynomial.legendre.leggauss` to ~1e-15.

    >>> x, w = gauss_legendre(3)
    >>> x.round(6).tolist(), w.round(6).tolist()
    ([-0.774597, 0.0, 0.774597], [0.555556, 0.888889, 0.555556])
    """
    m = (n + 1) // 2
    i = np.arange(1, m + 1, dtype=np.float64)
    theta = np.pi * (4.0 * i - 1.0) / (4.0 * n + 2.0)
    x = (1.0 - (n - 1.0) / (8.0 * n**3)) * np.cos(theta)  # Tricomi: error O(n^-4)
    for _ in range(100):
        p, dp = _legendre(n, x)
        dx = p / dp
        x -= dx
        if np.max(np.abs(dx)) < 1e-14:
            break
    if n % 2:
        x[-1] = 0.0  # the middle root of an odd n
    _, dp = _legendre(n, x)
    w = 2.0 / ((1.0 - x * x) * dp * dp)
    if n % 2:
        nodes = np.concatenate([-x, x[-2::-1]])
        weights = np.concatenate([w, w[-2::-1]])
    else:
        nodes = np.concatenate([-x, x[::-1]])
        weights = np.concatenate([w, w[::-1]])
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


def approximation_parameters(method: str, n_steps: int):
    """Return `(alphas, weights)` of the path-integral rule, each of shape `(n_steps,)`.

    Example:

    >>> from kerastrace.attribution.integrated_gradients import approximation_parameters
    >>> approximation_parameters("riemann_left", 4)[0].tolist()
    [0.0, 0.25, 0.5, 0.75]
    >>> float(approximation_parameters("gausslegendre", 5)[1].sum())
    1.0
    """
    v.check_one_of("method", method, METHODS)
    n = v.check_positive_int("n_steps", n_steps)
    if n > MAX_N_STEPS:
        raise v.invalid(
            "n_steps", f"a positive integer <= {MAX_N_STEPS}", n_steps,
            hint="Integrated Gradients converges with tens to a few hundred steps (50 is "
            "the default; method='gausslegendre' needs the fewest): check with "
            "`return_convergence_delta=True` and raise `n_steps` only while the delta shrinks",
        )
    return _rule(method, n)


@functools.lru_cache(maxsize=64)
def _rule(method, n):
    k = np.arange(n, dtype=np.float64)
    if method == "riemann_left":
        alphas, weights = k / n, np.full(n, 1.0 / n)
    elif method == "riemann_right":
        alphas, weights = (k + 1) / n, np.full(n, 1.0 / n)
    elif method == "riemann_middle":
        alphas, weights = (k + 0.5) / n, np.full(n, 1.0 / n)
    elif method == "riemann_trapezoid":
        if n < 2:
            raise v.invalid("n_steps", "an integer >= 2 for method='riemann_trapezoid'", n)
        alphas = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[0] /= 2
        weights[-1] /= 2
    else:
        x, w = gauss_legendre(n)
        alphas, weights = (x + 1.0) / 2.0, w / 2.0
    alphas, weights = alphas.astype(np.float32), weights.astype(np.float32)
    alphas.flags.writeable = False
    weights.flags.writeable = False
    return alphas, weights


@functools.lru_cache(maxsize=64)
def _rule_tensors(method, n):
    alphas, weights = _rule(method, n)
    return tf.constant(alphas[None]), tf.constant(weights[None])


def path_parameters(method: str, n_steps: int):
    """`approximation_parameters` as cached `(1, n_steps)` tensors for the engine."""
    approximation_parameters(method, n_steps)
    return _rule_tensors(method, n_steps)


class IntegratedGradients(GradientAttribution):
    """Integrated Gradients: `(x - x') * integral_0^1 grad f(x' + a (x - x')) da`.

    All `n_steps * batch` path points are stacked along the batch axis and run
    through one compiled `tf.function` in chunks of `internal_batch_size`
    rows, so memory grows with the chunk size, not with `n_steps`, and
    changing inputs, baselines or targets of the same shapes does not retrace.

    Args:
        model: A Keras model or a callable `f(*inputs) -> outputs`.
        multiply_by_inputs: If False, return the path-averaged gradient
            without the `(x - x')` factor (Captum's "local" attribution).

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import IntegratedGradients
    >>> x1 = keras.Input((1,)); x2 = keras.Input((1,))
    >>> relu = keras.layers.ReLU()
    >>> y = relu(keras.layers.Subtract()([relu(x1) - 1.0, relu(x2)]))
    >>> model = keras.Model([x1, x2], y)   # IG paper: ReLU(ReLU(x1) - 1 - ReLU(x2))
    >>> a1, a2 = IntegratedGradients(model).attribute(
    ...     (np.array([[3.0]]), np.array([[1.0]])), n_steps=1000, method="riemann_middle")
    >>> round(float(a1[0, 0]), 3), round(float(a2[0, 0]), 3)
    (1.5, -0.5)

    References:
        - [Sundararajan et al., 2017, Axiomatic Attribution for Deep
          Networks](https://arxiv.org/abs/1703.01365)
    """

    has_convergence_delta = True
    multiplies_by_inputs = True

    def __init__(self, model, multiply_by_inputs: bool = True):
        super().__init__(model)
        self.multiplies_by_inputs = v.check_bool("multiply_by_inputs", multiply_by_inputs)

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        additional_forward_args=None,
    ):
        """Compute Integrated Gradients.

        Args:
            inputs: Array/tensor `(B, ...)` or a tuple of them.
            baselines: None (zeros), a scalar, an array broadcastable to the
                input (e.g. of the per-example shape) or of the same shape; a
                tuple with one entry per input for tuple inputs.
            target: int, one int per example, or a callable `f(outputs) -> (B,)`;
                required when the output has more than one element per example.
            n_steps: Number of path points, a positive integer at most
                `MAX_N_STEPS` (50,000).
            method: One of `riemann_left`, `riemann_right`, `riemann_middle`,
                `riemann_trapezoid`, `gausslegendre` (default, as in Captum).
            internal_batch_size: Path points per model call. Default (None):
                chosen from a memory budget (`kerastrace.attribution._core.
                AUTO_BATCH_BYTES`, 32 MiB of model inputs and outputs per call,
                at most 1024 rows), so all `n_steps * B` points go in one call
                when they fit and in bounded chunks otherwise.
            return_convergence_delta: Also return, per example,
                `sum(attributions) - (f(inputs) - f(baselines))`.
            additional_forward_args: Model inputs passed through unchanged
                (not attributed): a dict merged into dict inputs, or arrays
                appended to array/tuple inputs. Integer entries of dict
                inputs (e.g. a `padding_mask`) pass through on their own.

        Returns:
            Attributions with the inputs' structure and shapes, or
            `(attributions, delta)` with `delta` of shape `(B,)`.

        Raises:
            TypeError: for integer inputs (use `LayerIntegratedGradients`).
            ValueError: for invalid targets, baselines, `n_steps` (at most
                `MAX_N_STEPS`) or `method`, non-finite inputs, inputs whose
                structure or shapes differ from the model's, an input the
                output does not depend on, or a model output or gradient that
                is NaN or inf at some path point (the error names the
                example, the path step and its alpha).
        """
        self._check_delta_request(return_convergence_delta)
        plan, layout = self._plan(
            inputs,
            baselines=baselines,
            target=target,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            additional_forward_args=additional_forward_args,
        )
        attrs = self._execute(plan)
        out = _core.restore(attrs, layout)
        if return_convergence_delta:
            delta = self.compute_convergence_delta(
                attrs, plan.bases, plan.xs, plan.target, plan.ctx, layout
            )
            return out, delta
        return out

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        additional_forward_args=None,
    ):
        alphas, weights = path_parameters(method, n_steps)
        chunk = self._batch_size(internal_batch_size)
        xs, ctx, layout = self._prepare(inputs, additional_forward_args=additional_forward_args)
        bases = _core.broadcast_baselines(baselines, xs, layout=layout)
        tgt = self._target(target, layout.merge(xs, ctx), layout)
        mode = _core.MODE_X_MINUS_BASE if self.multiplies_by_inputs else _core.MODE_GRAD
        plan = _core.Plan(
            xs, bases, tgt, alphas, weights, (mode,) * len(xs),
            internal_batch_size=chunk, ctx=ctx, layout=layout,
        )
        return plan, layout
