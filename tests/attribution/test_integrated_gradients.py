import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import ig_paper_equivalent, ig_paper_model, smooth_mlp

from kerastrace.attribution import InputXGradient, IntegratedGradients, Saliency
from kerastrace.attribution.integrated_gradients import METHODS, approximation_parameters


def _pair(a, b):
    return (np.array([[a]], "float32"), np.array([[b]], "float32"))


@pytest.mark.parametrize("method", METHODS)
def test_ig_paper_reference_values(method):
    # Path (3a, a): f = ReLU(2a - 1) is active for a > 1/2 with df/dx1 = 1,
    # df/dx2 = -1, so IG = (3 * 1/2, 1 * -1/2) = (1.5, -0.5); sum = f(x) - f(0) = 1.
    a1, a2 = IntegratedGradients(ig_paper_model()).attribute(
        _pair(3.0, 1.0), n_steps=400, method=method
    )
    tol = 0.02 if method != "gausslegendre" else 0.01
    assert a1[0, 0] == pytest.approx(1.5, abs=tol)
    assert a2[0, 0] == pytest.approx(-0.5, abs=tol)


def test_ig_implementation_invariance():
    x = (np.array([[3.0], [2.0], [-1.0]], "float32"), np.array([[1.0], [0.5], [2.0]], "float32"))
    ra = IntegratedGradients(ig_paper_model()).attribute(x, n_steps=200, method="riemann_middle")
    rb = IntegratedGradients(ig_paper_equivalent()).attribute(
        x, n_steps=200, method="riemann_middle"
    )
    np.testing.assert_allclose(ra[0], rb[0], atol=1e-5)
    np.testing.assert_allclose(ra[1], rb[1], atol=1e-5)
    totals = ra[0][:, 0] + ra[1][:, 0]
    # f(x) - f(0) with f = ReLU(ReLU(x1) - 1 - ReLU(x2)): [1, 0.5, 0].
    np.testing.assert_allclose(totals, [1.0, 0.5, 0.0], atol=0.01)


@pytest.mark.parametrize("method", METHODS)
def test_completeness_smooth(method, rng):
    model = smooth_mlp()
    x = rng.normal(size=(4, 5)).astype("float32")
    base = rng.normal(size=(5,)).astype("float32")
    attr, delta = IntegratedGradients(model).attribute(
        x, baselines=base, target=2, n_steps=64, method=method, return_convergence_delta=True
    )
    assert attr.shape == x.shape
    f = lambda z: model(z).numpy()[:, 2]  # noqa: E731
    expected = f(x) - f(np.broadcast_to(base, x.shape))
    tol = 2e-2 if method in ("riemann_left", "riemann_right") else 2e-3  # first-order rules
    np.testing.assert_allclose(attr.sum(1), expected, atol=tol)
    np.testing.assert_allclose(delta, attr.sum(1) - expected, atol=1e-4)
    assert np.all(np.abs(delta) < tol)


def test_linear_model_closed_form(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    w = rng.normal(size=(3, 2)).astype("float32")
    model.layers[0].set_weights([w, np.zeros(2, "float32")])
    x = rng.normal(size=(5, 3)).astype("float32")
    b = rng.normal(size=(5, 3)).astype("float32")
    attr = IntegratedGradients(model).attribute(x, baselines=b, target=1, n_steps=3)
    np.testing.assert_allclose(attr, (x - b) * w[:, 1], rtol=1e-5, atol=1e-6)
    sal = Saliency(model).attribute(x, target=[0, 1, 0, 1, 1], abs=False)
    np.testing.assert_allclose(sal, w[:, [0, 1, 0, 1, 1]].T, rtol=1e-6)
    np.testing.assert_allclose(
        Saliency(model).attribute(x, target=0), np.abs(np.tile(w[:, 0], (5, 1)))
    )
    np.testing.assert_allclose(InputXGradient(model).attribute(x, target=0), x * w[:, 0], rtol=1e-5)


def test_baseline_forms_agree(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    ig = IntegratedGradients(model)
    full = ig.attribute(x, baselines=np.full_like(x, 0.5), target=0, n_steps=8)
    np.testing.assert_allclose(ig.attribute(x, baselines=0.5, target=0, n_steps=8), full, atol=1e-6)
    np.testing.assert_allclose(
        ig.attribute(x, baselines=np.full((5,), 0.5), target=0, n_steps=8), full, atol=1e-6
    )
    np.testing.assert_allclose(
        ig.attribute(x, baselines=tf.fill((1, 5), 0.5), target=0, n_steps=8), full, atol=1e-6
    )


@pytest.mark.parametrize("chunk", [1, 7, 10, 25, 1000])
def test_chunked_equals_unchunked(chunk, rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    ig = IntegratedGradients(model)
    ref = ig.attribute(x, target=[0, 1, 2], n_steps=10)
    got = ig.attribute(x, target=[0, 1, 2], n_steps=10, internal_batch_size=chunk)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_batch_equals_per_example_and_eager_equals_compiled(rng):
    model = smooth_mlp()
    x = rng.normal(size=(4, 5)).astype("float32")
    targets = [2, 0, 1, 2]
    ig = IntegratedGradients(model)
    batch = ig.attribute(x, target=targets, n_steps=12, internal_batch_size=7)
    for i in range(4):
        one = ig.attribute(x[i : i + 1], target=targets[i], n_steps=12)
        np.testing.assert_allclose(batch[i : i + 1], one, rtol=1e-5, atol=1e-6)
    eager = IntegratedGradients(model)
    eager.run_eagerly = True
    np.testing.assert_allclose(
        eager.attribute(x, target=targets, n_steps=12, internal_batch_size=7), batch, atol=1e-6
    )
    (fn,) = eager.engine._fns.values()
    assert fn.experimental_get_tracing_count() == 0  # the body really ran eagerly


@pytest.mark.parametrize("steps,batch,chunk", [(10, 3, 7), (20, 2, 40), (50, 1, 10), (9, 4, 5)])
def test_model_execution_count(steps, batch, chunk, rng):
    model = smooth_mlp()
    calls = tf.Variable(0)
    rows = tf.Variable(0)

    def forward(x):
        calls.assign_add(1)
        rows.assign_add(tf.shape(x)[0])
        return model(x, training=False)

    x = rng.normal(size=(batch, 5)).astype("float32")
    IntegratedGradients(forward).attribute(x, target=1, n_steps=steps, internal_batch_size=chunk)
    assert int(calls.numpy()) == math.ceil(steps * batch / chunk)
    assert int(rows.numpy()) == math.ceil(steps * batch / chunk) * chunk  # fixed chunk shape


def test_no_retrace_when_values_change(rng):
    model = smooth_mlp()
    ig = IntegratedGradients(model)
    for i in range(4):
        x = rng.normal(size=(2 + i, 5)).astype("float32")
        ig.attribute(
            x,
            baselines=rng.normal(size=(5,)),
            target=i % 3,
            n_steps=5 + 3 * i,
            internal_batch_size=6,
        )
        ig.attribute(x, target=[1] * len(x), n_steps=3 + i)  # one chunk of a new size
    assert ig.engine.trace_count == 1
    sal = Saliency(model)
    for t in range(3):
        sal.attribute(rng.normal(size=(3, 5)).astype("float32"), target=t, internal_batch_size=2)
    assert sal.engine.trace_count == 1


def test_callable_target_and_multi_output(rng):
    inp = keras.Input((4,))
    a = keras.layers.Dense(2, name="a")(inp)
    b = keras.layers.Dense(1, name="b")(inp)
    model = keras.Model(inp, [a, b])
    x = rng.normal(size=(3, 4)).astype("float32")
    with pytest.raises(ValueError, match="callable"):
        Saliency(model).attribute(x, target=0)
    got = Saliency(model).attribute(x, target=lambda outs: outs[1][:, 0], abs=False)
    wb = model.get_layer("b").get_weights()[0][:, 0]
    np.testing.assert_allclose(got, np.tile(wb, (3, 1)), rtol=1e-5)


def test_mixed_precision_gradients_are_float32(rng):
    ref = smooth_mlp(seed=3)
    mp = smooth_mlp(seed=3, dtype="mixed_float16")
    mp.set_weights(ref.get_weights())
    x = rng.normal(size=(3, 5)).astype("float32")
    a_ref = IntegratedGradients(ref).attribute(x, target=1, n_steps=16)
    a_mp = IntegratedGradients(mp).attribute(x, target=1, n_steps=16)
    assert a_mp.dtype == np.float32
    np.testing.assert_allclose(a_mp, a_ref, atol=5e-3)


def test_training_false_dropout_inactive(rng):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.9), keras.layers.Dense(1)])
    x = rng.normal(size=(2, 4)).astype("float32")
    w = model.layers[-1].get_weights()[0][:, 0]
    np.testing.assert_allclose(
        Saliency(model).attribute(x, abs=False), np.tile(w, (2, 1)), rtol=1e-6
    )


# ------------------------------------------------------------------ errors
def test_errors(rng):
    model = smooth_mlp()
    x = rng.normal(size=(2, 5)).astype("float32")
    ig = IntegratedGradients(model)
    with pytest.raises(ValueError, match="n_steps"):
        ig.attribute(x, target=0, n_steps=0)
    with pytest.raises(ValueError, match="method"):
        ig.attribute(x, target=0, method="simpson")
    with pytest.raises(ValueError, match="explicit target"):
        ig.attribute(x)
    with pytest.raises(ValueError, match="out of range"):
        ig.attribute(x, target=3)
    with pytest.raises(ValueError, match="out of range"):
        ig.attribute(x, target=[0, -1])
    with pytest.raises(ValueError, match="shape"):
        ig.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="baselines.*broadcast"):
        ig.attribute(x, target=0, baselines=np.zeros((3,)))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ig.attribute(bad, target=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        Saliency(model).attribute(np.full((1, 5), np.inf, "float32"), target=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        ig.attribute(x, target=0, internal_batch_size=0)
    with pytest.raises(ValueError, match="riemann_trapezoid"):
        approximation_parameters("riemann_trapezoid", 1)


def test_integer_inputs_point_to_layer_ig():
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(10, 3)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    with pytest.raises(TypeError, match="LayerIntegratedGradients"):
        IntegratedGradients(model).attribute(np.array([[1, 2, 3, 0]]))
    with pytest.raises(TypeError, match="LayerIntegratedGradients"):
        Saliency(model).attribute(np.array([[1, 2, 3, 0]]))


def test_unused_input_is_named():
    a, b = keras.Input((2,), name="used"), keras.Input((2,), name="unused")
    model = keras.Model([a, b], keras.layers.Dense(1)(a))
    x = (np.ones((1, 2), "float32"), np.ones((1, 2), "float32"))
    with pytest.raises(
        ValueError, match="input 1 .*unused.*does not depend|does not depend.*input 1 .*unused"
    ):
        IntegratedGradients(model).attribute(x, n_steps=4)


def test_subclassed_model_matches_functional(rng):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(6, activation="tanh")
            self.d2 = keras.layers.Dense(2)

        def call(self, x, training=False):
            return self.d2(self.d1(x))

    net = Net()
    x = rng.normal(size=(3, 4)).astype("float32")
    net(x)
    inp = keras.Input((4,))
    func = keras.Model(inp, net.d2(net.d1(inp)))
    a = IntegratedGradients(net).attribute(x, target=1, n_steps=16)
    b = IntegratedGradients(func).attribute(x, target=1, n_steps=16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
