"""FeatureAblation, ShapleyValueSampling, KernelShap, Lime: the shared engine, feature
masks, budgets, input structures, keras-hub options, and the Occlusion fixes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp, text_model

from kerastrace.attribution import (
    FeatureAblation,
    KernelShap,
    Lime,
    Occlusion,
    ShapleyValues,
    ShapleyValueSampling,
)

W = np.array([1.0, -2.0, 3.0, 0.5, 4.0, -1.0], "float32")


def linear(bias=0.25):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([W[:, None], np.array([bias], "float32")])
    return model


# ----------------------------------------------------------------- FeatureAblation
def test_feature_ablation_groups_hand_derived(rng):
    x = rng.normal(size=(2, 6)).astype("float32")
    mask = np.array([0, 0, 1, 1, 2, -1])
    attr, info = FeatureAblation(linear()).attribute(
        x, baselines=0.5, feature_mask=mask, return_info=True)
    contrib = W * (x - 0.5)
    groups = np.stack([contrib[:, :2].sum(1), contrib[:, 2:4].sum(1), contrib[:, 4]], 1)
    expected = np.concatenate([groups[:, [0, 0, 1, 1, 2]], np.zeros((2, 1))], 1)
    np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.feature_attributions, groups, rtol=1e-5, atol=1e-6)
    assert info.evaluations.tolist() == [4, 4]  # f(x) + one per feature
    assert info.f_baselines is None and info.delta is None
    np.testing.assert_allclose(info.f_inputs, linear()(x).numpy()[:, 0], rtol=1e-6)


def test_feature_ablation_equals_occlusion_window_one(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(
        FeatureAblation(model).attribute(x, baselines=0.3, target=[0, 2, 1]),
        Occlusion(model).attribute(x, (1,), baselines=0.3, target=[0, 2, 1]),
        rtol=1e-5, atol=1e-6,
    )
    tokens = np.array([[5, 3, 9, 12, 0, 0], [1, 2, 3, 4, 5, 6]], "int32")
    model = text_model()
    np.testing.assert_allclose(
        FeatureAblation(model).attribute(tokens, target=1),
        Occlusion(model).attribute(tokens, (1,), target=1),
        rtol=1e-5, atol=1e-6,
    )


# ------------------------------------------------------------------- the engine
def test_one_trace_for_new_values_targets_masks_and_budgets(rng):
    model = smooth_mlp()
    svs = ShapleyValueSampling(model)
    for i, batch in enumerate([1, 3, 2]):
        x = rng.normal(size=(batch, 5)).astype("float32")
        mask = rng.permutation([0, 0, 1, 2, -1])[None] if i else None
        svs.attribute(x, target=i, feature_mask=mask, n_samples=2 + i, seed=i,
                      baselines=0.1 * i, perturbations_per_eval=1 + i)
    assert svs.engine.trace_count == 1
    ks = KernelShap(model)
    for n in (6, 20, 32):
        ks.attribute(rng.normal(size=(2, 5)).astype("float32"), target=[0, 1], n_samples=n)
    assert ks.engine.trace_count == 1


def test_chunked_equals_unchunked_and_eager(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    svs = ShapleyValueSampling(model)
    kw = dict(target=[2, 0, 1], n_samples=5, seed=7, feature_mask=np.array([0, 1, 1, 2, 3]))
    ref = svs.attribute(x, **kw)
    np.testing.assert_allclose(svs.attribute(x, perturbations_per_eval=1, **kw), ref,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(svs.attribute(x, perturbations_per_eval=7, **kw), ref,
                               rtol=1e-5, atol=1e-6)
    svs.run_eagerly = True
    np.testing.assert_allclose(svs.attribute(x, **kw), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [ShapleyValueSampling, KernelShap, Lime])
def test_seeds_and_batch_equals_per_example(cls, rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    n = {ShapleyValueSampling: 3, KernelShap: 12, Lime: 20}[cls]
    method = cls(model)
    full = method.attribute(x, target=1, n_samples=n, seed=3)
    np.testing.assert_array_equal(method.attribute(x, target=1, n_samples=n, seed=3), full)
    assert not np.allclose(method.attribute(x, target=1, n_samples=n, seed=4), full)
    for i in range(3):
        np.testing.assert_allclose(
            method.attribute(x[i : i + 1], target=1, n_samples=n, seed=3), full[i : i + 1],
            rtol=1e-5, atol=1e-6,
        )


def test_budgets_are_respected_and_reported(rng):
    model = smooth_mlp(n_in=8)
    x = rng.normal(size=(2, 8)).astype("float32")
    # Shapley sampling: 2 + n (F - 1); with max_evals as many permutations as fit.
    _, info = ShapleyValueSampling(model).attribute(x, target=0, n_samples=3, return_info=True)
    assert info.evaluations.tolist() == [2 + 3 * 7] * 2
    assert info.n_samples.tolist() == [3, 3]
    for budget in (9, 30, 100):
        _, info = ShapleyValueSampling(model).attribute(x, target=0, max_evals=budget,
                                                        return_info=True)
        assert info.evaluations.tolist() == [2 + (budget - 2) // 7 * 7] * 2
        assert info.total_evaluations == 2 * info.evaluations[0] <= 2 * budget
    # KernelShap: exactly n_samples (fewer only when all 2**F coalitions fit).
    for budget in (9, 40, 255, 256, 1000):
        _, info = KernelShap(model).attribute(x, target=0, n_samples=budget, seed=0,
                                              return_info=True)
        assert info.evaluations.tolist() == [min(budget, 256)] * 2
    _, info = Lime(model).attribute(x, target=0, n_samples=17, return_info=True)
    assert info.evaluations.tolist() == [17, 17]
    assert info.delta is None and info.f_inputs is None


def test_budget_errors(rng):
    model = smooth_mlp(n_in=8)
    x = rng.normal(size=(1, 8)).astype("float32")
    with pytest.raises(ValueError, match=r"`n_samples`.*number of features \+ 1 = 9"):
        KernelShap(model).attribute(x, target=0, n_samples=8)
    with pytest.raises(ValueError, match="`max_evals`.*n_samples=3, max_evals=30"):
        ShapleyValueSampling(model).attribute(x, target=0, n_samples=3, max_evals=30)
    with pytest.raises(ValueError, match="`max_evals`.*F \\+ 1 = 9"):
        ShapleyValueSampling(model).attribute(x, target=0, max_evals=8)
    with pytest.raises(ValueError, match="`n_samples`.*positive integer"):
        Lime(model).attribute(x, target=0, n_samples=0)
    with pytest.raises(ValueError, match="`seed`"):
        ShapleyValueSampling(model).attribute(x, target=0, seed=-1)


# ---------------------------------------------------------------- feature masks
def test_feature_mask_errors(rng):
    x = rng.normal(size=(2, 6)).astype("float32")
    fa = FeatureAblation(linear())
    with pytest.raises(ValueError, match="`feature_mask`.*cannot be broadcast.*shape \\(5,\\)"):
        fa.attribute(x, feature_mask=np.arange(5))
    with pytest.raises(ValueError, match="`feature_mask`.*without gaps.*without \\[1\\]"):
        fa.attribute(x, feature_mask=np.array([0, 0, 2, 2, 3, 3]))
    with pytest.raises(ValueError, match="`feature_mask`.*integer"):
        fa.attribute(x, feature_mask=np.ones(6, bool))
    with pytest.raises(ValueError, match="`feature_mask`.*>= 0"):
        fa.attribute(x, feature_mask=np.array([0, 1, 2, 3, 4, -2]))
    with pytest.raises(ValueError, match="`feature_mask`.*example 1 has no feature"):
        fa.attribute(x, feature_mask=np.array([[0, 1, 2, 3, 4, 5], [-1] * 6]))


def test_per_example_masks_with_different_feature_counts(rng):
    x = rng.normal(size=(2, 6)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, -1]])
    attr, info = ShapleyValueSampling(linear()).attribute(
        x, baselines=0.0, feature_mask=mask, n_samples=2, seed=0, return_info=True,
        return_input_shape=False)
    assert info.n_features.tolist() == [3, 5] and attr.shape == (2, 5)
    c = W * x  # a linear model: Shapley value of a group = its summed contribution
    np.testing.assert_allclose(attr[0], [c[0, :2].sum(), c[0, 2:4].sum(), c[0, 4:].sum(), 0, 0],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attr[1], c[1, :5], rtol=1e-5, atol=1e-5)
    assert info.evaluations.tolist() == [2 + 2 * 2, 2 + 2 * 4]


def tuple_model():
    a, b = keras.Input((3,)), keras.Input((2, 2))
    h = keras.layers.Concatenate()([a, keras.layers.Flatten()(b)])
    return keras.Model([a, b], keras.layers.Dense(2, activation="tanh")(h))


def test_tuple_inputs_share_feature_ids_and_default_numbering(rng):
    keras.utils.set_random_seed(1)
    model = tuple_model()
    a = rng.normal(size=(2, 3)).astype("float32")
    b = rng.normal(size=(2, 2, 2)).astype("float32")
    # Default: every element its own feature, numbered across the inputs (3 + 4 = 7).
    (ea, eb), info = ShapleyValues(model).attribute((a, b), target=1, return_info=True)
    assert ea.shape == a.shape and eb.shape == b.shape and info.n_features.tolist() == [7, 7]
    np.testing.assert_allclose(ea.sum(1) + eb.sum((1, 2)), info.f_inputs - info.f_baselines,
                               atol=1e-5)
    # One feature spanning both inputs: removed together, one score on all its elements.
    masks = (np.array([0, 1, 2]), np.array([[2, 2], [3, 3]]))
    (fa, fb), info = FeatureAblation(model).attribute((a, b), target=0, feature_mask=masks,
                                                      return_info=True)
    both = a.copy(), b.copy()
    both[0][:, 2] = 0
    both[1][:, 0, :] = 0
    drop = model([a, b]).numpy()[:, 0] - model(list(both)).numpy()[:, 0]
    np.testing.assert_allclose(fa[:, 2], drop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fb[:, 0, 0], drop, rtol=1e-5, atol=1e-6)
    assert info.n_features.tolist() == [4, 4]


def test_additional_forward_args_pass_through(rng):
    keras.utils.set_random_seed(1)
    model = tuple_model()
    a = rng.normal(size=(2, 3)).astype("float32")
    b = rng.normal(size=(2, 2, 2)).astype("float32")
    attr = FeatureAblation(model).attribute(a, target=0, additional_forward_args=b)
    np.testing.assert_allclose(
        attr, FeatureAblation(model).attribute((a, b), target=0)[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- LIME
def test_lime_recovers_a_linear_models_coefficients(rng):
    x = rng.normal(size=(2, 6)).astype("float32")
    base = rng.normal(size=(1, 6)).astype("float32")
    mask = np.array([0, 1, 1, 2, 3, 3])
    attr, info = Lime(linear(bias=-1.5)).attribute(
        x, baselines=base, feature_mask=mask, n_samples=40, seed=0, return_input_shape=False,
        return_info=True)
    c = W * (x - base)  # f(z) = f(base) + sum_i z_i * (group contribution): exactly linear
    expected = np.stack([c[:, 0], c[:, 1:3].sum(1), c[:, 3], c[:, 4:].sum(1)], 1)
    np.testing.assert_allclose(attr, expected, rtol=1e-4, atol=1e-5)
    assert info.n_samples.tolist() == [40, 40]


def test_lime_custom_interpretable_model_and_similarity(rng):
    calls = {}

    class Recorder:
        def fit(self, X, y, sample_weight=None):
            calls["X"], calls["w"] = X, sample_weight
            self.coef_ = np.arange(X.shape[1], dtype=float)

    x = rng.normal(size=(1, 6)).astype("float32")
    attr = Lime(linear(), interpretable_model=Recorder(),
                similarity_func=lambda z: 1.0 + z.sum(axis=1)).attribute(
        x, n_samples=10, seed=0, return_input_shape=False)
    np.testing.assert_array_equal(attr, [np.arange(6)])
    assert calls["X"].shape == (10, 6)
    np.testing.assert_array_equal(calls["w"], 1.0 + calls["X"].sum(axis=1))
    with pytest.raises(ValueError, match="`similarity_func`.*10 finite non-negative"):
        Lime(linear(), similarity_func=lambda z: -np.ones(len(z))).attribute(x, n_samples=10)
    with pytest.raises(TypeError, match="`interpretable_model`"):
        Lime(linear(), interpretable_model="lasso")


# ------------------------------------------------------------------- keras-hub
@pytest.fixture(scope="module")
def bert():
    import keras_hub

    keras.utils.set_random_seed(0)
    bb = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                       hidden_dim=16, intermediate_dim=32, max_sequence_length=8)
    clf = keras_hub.models.BertTextClassifier(bb, num_classes=3, preprocessor=None)
    ids = np.array([[2, 11, 12, 13, 14, 3, 0, 0], [2, 21, 22, 23, 24, 25, 26, 3]], "int32")
    x = {"token_ids": ids, "padding_mask": ids != 0, "segment_ids": np.zeros_like(ids)}
    return clf, x


def _call(model, x):
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("mask_padding", [False, True])
def test_keras_hub_dict_inputs_and_mask_padding(bert, mask_padding):
    model, x = bert
    words = np.array([[-1, 0, 0, 1, 2, -1, -1, -1], [-1, 0, 1, 1, 2, 3, 4, -1]])
    attr, info = FeatureAblation(model).attribute(
        x, baselines={"token_ids": 1}, target=2, feature_mask={"token_ids": words},
        mask_padding=mask_padding, return_input_shape=False, return_info=True)
    assert list(info.n_features) == [3, 5]
    f_x = _call(model, x)[:, 2]
    for b in range(2):
        for k in range(int(info.n_features[b])):
            removed = words[b] == k
            xb = {key: val[b : b + 1].copy() for key, val in x.items()}
            xb["token_ids"][0, removed] = 1
            if mask_padding:
                xb["padding_mask"][0, removed] = False
            expected = f_x[b] - _call(model, xb)[0, 2]
            assert attr[b, k] == pytest.approx(expected, abs=1e-5)
    # The dict result of return_input_shape=True: one entry, the perturbed token_ids.
    full = ShapleyValueSampling(model).attribute(
        x, baselines={"token_ids": 1}, target=2, feature_mask={"token_ids": words},
        mask_padding=mask_padding, n_samples=2, seed=0)
    assert list(full) == ["token_ids"] and full["token_ids"].shape == (2, 8)
    assert np.all(full["token_ids"][words < 0] == 0)


def test_mask_padding_needs_keras_hub_inputs(rng):
    with pytest.raises(ValueError, match="`mask_padding`.*padding_mask"):
        FeatureAblation(linear()).attribute(rng.normal(size=(1, 6)).astype("float32"),
                                            mask_padding=True)


def test_contrastive_target(rng):
    from kerastrace.attribution import Contrast

    model = smooth_mlp()
    x = rng.normal(size=(2, 5)).astype("float32")
    fa = FeatureAblation(model)
    both = fa.attribute(x, target=Contrast(2, foil=0))
    np.testing.assert_allclose(both, fa.attribute(x, target=2) - fa.attribute(x, target=0),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- Occlusion
def test_occlusion_default_strides_on_several_axes(rng):
    model = lambda x: tf.reduce_sum(x * x, axis=(1, 2))[:, None]  # noqa: E731
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    got = Occlusion(model).attribute(x, (2, 2))
    np.testing.assert_allclose(got, Occlusion(model).attribute(x, (2, 2), strides=(1, 1)),
                               rtol=1e-6)
    np.testing.assert_allclose(Occlusion(model).attribute(x, (1, 1)), x * x, rtol=1e-5, atol=2e-6)
    a, b = rng.normal(size=(2, 3)).astype("float32"), rng.normal(size=(2, 2, 2)).astype("float32")
    ga, gb = Occlusion(lambda a, b: tf.reduce_sum(a, 1, keepdims=True)
                       + tf.reduce_sum(b, (1, 2))[:, None]).attribute((a, b), ((1,), (1, 1)))
    np.testing.assert_allclose(ga, a, rtol=1e-5)
    np.testing.assert_allclose(gb, b, rtol=1e-5)


def test_occlusion_covers_the_end_with_a_clipped_window(rng):
    # 5 features, window 2, stride 2: windows [0, 2), [2, 4) and the clipped [4, 5).
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, use_bias=False)])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0], "float32")
    model.layers[0].set_weights([w[:, None]])
    x = np.ones((1, 5), "float32")
    got = Occlusion(model).attribute(x, (2,), strides=2)
    np.testing.assert_allclose(got, [[3.0, 3.0, 7.0, 7.0, 5.0]], rtol=1e-6)
    # 2-D: every cell of a 5 x 5 grid is covered (a sum model gives every cell its window sum).
    x2 = rng.uniform(0.5, 1.0, size=(1, 5, 5)).astype("float32")
    got2 = Occlusion(lambda t: tf.reduce_sum(t, (1, 2))[:, None]).attribute(x2, (2, 2), strides=2)
    assert np.all(got2 > 0)
    np.testing.assert_allclose(got2[0, 4, 4], x2[0, 4, 4], rtol=1e-5)
    np.testing.assert_allclose(got2[0, 0, 4], x2[0, 0:2, 4].sum(), rtol=1e-5)


def test_occlusion_refuses_strides_larger_than_the_window(rng):
    x = rng.normal(size=(1, 6)).astype("float32")
    with pytest.raises(ValueError, match="`strides`.*no larger than the window"):
        Occlusion(linear()).attribute(x, (2,), strides=3)
    # Allowed where the window covers the whole axis (one position), as in Captum.
    got = Occlusion(linear()).attribute(x, (6,), strides=7)
    np.testing.assert_allclose(got, np.full((1, 6), (W * x).sum()), rtol=1e-5)


def test_dict_inputs_with_a_partial_mask(rng):
    def model(d):
        return 2.0 * tf.reduce_sum(d["a"], 1, keepdims=True) + tf.reduce_sum(d["b"], 1,
                                                                              keepdims=True)

    x = {"a": rng.normal(size=(2, 3)).astype("float32"),
         "b": rng.normal(size=(2, 2)).astype("float32")}
    # "a" grouped per example; "b" gets one feature per element after each example's ids.
    attr, info = FeatureAblation(model).attribute(
        x, feature_mask={"a": np.array([[0, 0, 1], [0, 1, 2]])}, return_info=True)
    assert info.n_features.tolist() == [4, 5]
    a, b = x["a"], x["b"]
    np.testing.assert_allclose(attr["a"][0], 2 * np.array([a[0, :2].sum()] * 2 + [a[0, 2]]),
                               rtol=1e-5)
    np.testing.assert_allclose(attr["a"][1], 2 * a[1], rtol=1e-5)
    np.testing.assert_allclose(attr["b"], b, rtol=1e-5)
    np.testing.assert_allclose(info.feature_attributions[0, 2:4], b[0], rtol=1e-5)
    with pytest.raises(ValueError, match="`feature_mask`.*keys \\['c'\\]"):
        FeatureAblation(model).attribute(x, feature_mask={"c": np.zeros(3, int)})
