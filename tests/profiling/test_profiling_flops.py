"""FLOPs, MACs and parameters against analytic formulas (one multiply-accumulate = 2 FLOPs)."""

import keras
import numpy as np
import pytest

from kerastrace.layers import SelfAttention, TransformerBlock
from kerastrace.profiling import profile_model
from kerastrace.profiling._flops import einsum_flops


def _seq(inp_shape, *layers):
    return keras.Sequential([keras.Input(inp_shape), *layers])


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_exact_and_linear_in_batch(batch):
    n_in, n_out = 24, 10
    model = _seq((n_in,), keras.layers.Dense(n_out, name="fc"))
    p = profile_model(model, batch_size=batch, trace=False)
    assert p["fc"].flops == 2 * batch * n_in * n_out + batch * n_out
    assert p.total_flops == p["fc"].flops
    # MACs: the matmul only; the bias add is element-wise
    assert p["fc"].macs == p.total_macs == batch * n_in * n_out
    assert p["fc"].elementwise_flops == p.total_elementwise_flops == batch * n_out
    assert p["fc"].flops == 2 * p["fc"].macs + p["fc"].elementwise_flops


def test_dense_on_sequence_counts_every_position():
    model = _seq((7, 12), keras.layers.Dense(5, name="fc"))
    p = profile_model(model, trace=False)
    n = 7  # positions
    assert p["fc"].flops == 2 * n * 12 * 5 + n * 5


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv2d_exact(batch, padding):
    h, w, cin, cout, k = 11, 9, 3, 4, 3
    model = _seq((h, w, cin), keras.layers.Conv2D(cout, k, padding=padding, name="conv"))
    p = profile_model(model, batch_size=batch, trace=False)
    ho, wo = (h, w) if padding == "same" else (h - k + 1, w - k + 1)
    out = batch * ho * wo * cout
    assert p["conv"].flops == 2 * out * k * k * cin + out
    assert p["conv"].macs == out * k * k * cin
    assert p["conv"].elementwise_flops == out  # bias
    assert p["conv"].output_shape == (batch, ho, wo, cout)
    assert p["conv"].output_bytes == out * 4


@pytest.mark.parametrize("batch", [1, 4])
def test_depthwise_conv2d_exact(batch):
    h, w, c, k, mult = 10, 10, 6, 3, 2
    layer = keras.layers.DepthwiseConv2D(k, depth_multiplier=mult, name="dw")
    p = profile_model(_seq((h, w, c), layer), batch_size=batch, trace=False)
    out = batch * (h - k + 1) * (w - k + 1) * c * mult
    assert p["dw"].flops == 2 * out * k * k + out
    assert p["dw"].macs == out * k * k


def test_einsum_flops_formula():
    # QK^T of Keras MHA: (B, T, H, K) x (B, S, H, K) -> (B, H, T, S)
    assert einsum_flops("aecd,abcd->acbe", [(2, 5, 3, 4), (2, 7, 3, 4)]) == 2 * 2 * 5 * 3 * 4 * 7
    assert einsum_flops("ab,ab->ab", [(3, 4), (3, 4)]) == 12  # element-wise: no sum
    assert einsum_flops("...ij,jk->...ik", [(2, 3, 4), (4, 5)]) == 2 * 2 * 3 * 4 * 5
    assert einsum_flops("ab,bc->ac", [(3, None), (4, 5)]) is None


def _attention_analytic(t, d, h, kd, out_dim=None, scale_on="query"):
    out_dim = out_dim or d
    proj = 3 * (2 * t * d * h * kd + t * h * kd)  # q, k, v with biases
    # 1/sqrt(kd): Keras MHA scales the scores (H*T*T), SelfAttention the query (T*H*kd)
    scale = h * t * t if scale_on == "scores" else t * h * kd
    scores = 2 * h * t * t * kd + scale
    softmax = 5 * h * t * t
    av = 2 * h * t * t * kd
    out = 2 * t * h * kd * out_dim + t * out_dim
    return proj + scores + softmax + av + out


def _attention_macs(t, d, h, kd, out_dim=None):
    """Multiply-accumulates of self-attention: q/k/v projections, QK^T, AV, output."""
    out_dim = out_dim or d
    return 3 * t * d * h * kd + 2 * h * t * t * kd + t * h * kd * out_dim


def _close(measured, expected, tol=0.01):
    return abs(measured - expected) <= tol * expected


D, H, KD = 32, 4, 8


@pytest.mark.parametrize("t", [16, 128, 512])
@pytest.mark.parametrize("scores", [False, True])
def test_keras_multi_head_attention_within_1_percent(t, scores):
    x = keras.Input((t, D))
    mha = keras.layers.MultiHeadAttention(H, KD, name="mha")
    y = mha(x, x, return_attention_scores=scores)
    model = keras.Model(x, y)
    p = profile_model(model, trace=False)
    # Keras' fused path (no scores) scales the scores, its explicit path the query.
    expected = _attention_analytic(t, D, H, KD, scale_on="query" if scores else "scores")
    assert _close(p["mha"].flops, expected), (p["mha"].flops, expected)
    assert p["mha"].macs == _attention_macs(t, D, H, KD)  # exact: Einsum contractions
    # Without counting Einsum (QK^T and AV) the layer would look much cheaper.
    # (Keras takes its Einsum path when the scores are not returned.)
    if not scores:
        assert p.counted_by_kerastrace.get("Einsum") == 2
    assert p.uncounted_ops == {}
    children = [r for r in p.layers if r.path.startswith(p["mha"].path + "/")]
    assert p["mha"].flops - p["mha"].self_flops == sum(r.flops for r in children)
    proj = 2 * t * D * H * KD + t * H * KD
    assert [p[f"mha/{n}"].flops for n in ("query", "key", "value")] == [proj] * 3


@pytest.mark.parametrize("t", [16, 128, 512])
def test_self_attention_within_1_percent(t):
    x = keras.Input((t, D))
    out, w = SelfAttention(H, KD, name="sa")(x)
    p = profile_model(keras.Model(x, [out, w]), trace=False)
    assert _close(p["sa"].flops, _attention_analytic(t, D, H, KD))
    assert p["sa"].macs == _attention_macs(t, D, H, KD)
    assert p["sa"].output_shape == ((1, t, D), (1, H, t, t))


@pytest.mark.parametrize("t", [16, 128, 512])
def test_transformer_block_within_1_percent_with_children(t):
    f = 64
    x = keras.Input((t, D))
    out, _ = TransformerBlock(H, f, name="blk")(x)
    p = profile_model(keras.Model(x, out), trace=False)
    ffn = 2 * t * D * f + t * f + t * f + 2 * t * f * D + t * D  # inner (+bias, relu), outer
    layer_norms = 2 * 8 * t * D  # mean, variance (sub, square, sum), normalize (2), affine (2)
    residuals = 2 * t * D
    expected = _attention_analytic(t, D, H, KD) + ffn + layer_norms + residuals
    assert _close(p["blk"].flops, expected), (p["blk"].flops, expected)
    children = {r.path for r in p.layers if r.depth == 2}
    assert {f"blk/{n}" for n in ("attention", "ffn_inner", "ffn_outer", "attention_norm",
                                 "ffn_norm")} <= children  # fmt: skip
    assert p["blk/ffn_inner"].flops == 2 * t * D * f + t * f + t * f  # matmul + bias + relu


def _mixed_model():
    tokens = keras.Input((12,), dtype="int32")
    x = keras.layers.Embedding(50, D, name="emb")(tokens)
    x, _ = TransformerBlock(H, 48, name="blk")(x)
    shared = keras.layers.Dense(D, name="shared")
    x = shared(shared(x))  # called twice
    x = keras.layers.BatchNormalization(name="bn")(x)
    inner = keras.Sequential([keras.layers.Dense(6, name="d1"), keras.layers.Dense(3, name="d2")],
                             name="inner")  # fmt: skip
    x = inner(keras.layers.GlobalAveragePooling1D(name="pool")(x))
    return keras.Model(tokens, x, name="mixed")


def test_sums_match_totals_without_double_counting():
    model = _mixed_model()
    p = profile_model(model, trace=False)
    assert sum(r.self_params for r in p.layers) == model.count_params()
    assert p.total_params == model.count_params()
    assert p.non_trainable_params == 2 * D  # BatchNormalization moving stats
    assert sum(r.self_flops for r in p.layers) + p.unassigned_flops == p.total_flops
    assert sum(r.self_macs for r in p.layers) + p.unassigned_macs == p.total_macs
    assert p.layers[0].flops + p.unassigned_flops == p.total_flops
    # the shared layer is one row, called twice, with twice the FLOPs of one call
    rows = [r for r in p.layers if r.name == "shared"]
    assert len(rows) == 1 and rows[0].calls == 2
    assert rows[0].flops == 2 * (2 * 12 * D * D + 12 * D)
    assert rows[0].params == D * D + D
    # nested Sequential inside functional: children are listed and summed
    assert p["inner"].flops == p["inner/d1"].flops + p["inner/d2"].flops
    assert p["inner/d1"].flops == 2 * D * 6 + 6


def test_depth_folds_children_into_parents():
    model = _mixed_model()
    full = profile_model(model, trace=False)
    folded = profile_model(model, trace=False, depth=1)
    assert max(r.depth for r in folded.layers) == 1
    assert folded["blk"].self_flops == full["blk"].flops
    assert folded["blk"].self_params == full["blk"].params
    assert folded["blk"].self_macs == full["blk"].macs > 0
    assert folded["blk"].macs == full["blk"].macs
    assert sum(r.self_flops for r in folded.layers) == sum(r.self_flops for r in full.layers)
    assert folded.total_flops == full.total_flops


class _Tower(keras.Model):
    def __init__(self):
        super().__init__(name="tower")
        self.a = keras.layers.Dense(8, name="a")
        self.b = keras.layers.Dense(2, name="b")
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.b(self.a(x)) * self.scale


def test_subclassed_model_with_own_weight():
    model = _Tower()
    p = profile_model(model, input_shape=(5,), batch_size=2, trace=False)
    assert p["a"].flops == 2 * 2 * 5 * 8 + 2 * 8
    assert p["b"].flops == 2 * 2 * 8 * 2 + 2 * 2
    assert p.layers[0].self_params == 1  # `scale` belongs to the model itself
    assert p.layers[0].self_flops == 4  # the multiply by `scale`
    assert sum(r.self_params for r in p.layers) == model.count_params()


def test_inputs_argument_sets_batch_and_values_do_not_matter():
    model = _seq((4,), keras.layers.Dense(3, name="fc"))
    p1 = profile_model(model, inputs=np.ones((5, 4), "float32"), trace=False)
    p2 = profile_model(model, input_shape=(4,), batch_size=5, trace=False)
    p3 = profile_model(model, input_shape=(5, 4), trace=False)
    assert p1.batch_size == p2.batch_size == p3.batch_size == 5
    assert p1.total_flops == p2.total_flops == p3.total_flops == 2 * 5 * 4 * 3 + 5 * 3


def _conv_dense_macs(model):
    """Multiply-accumulates of a model's convolutions and dense layers, from their shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape  # c_out = c_in * depth_multiplier
            total += h * w * c_out * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            total += h * w * c_out * layer.kernel_size[0] * layer.kernel_size[1] * c_in
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def test_mobilenet_v2_matches_published_macs():
    # Sandler et al. 2018, Table: MobileNetV2 1.0 @224 = 300M multiply-adds, 3.4M params.
    model = keras.applications.MobileNetV2(weights=None)
    p = profile_model(model, trace=False)
    analytic = _conv_dense_macs(model)
    assert analytic == 300_774_272
    assert p.total_macs == analytic  # MACs of the MAC ops only, exactly
    assert abs(p.total_macs - 300e6) <= 0.02 * 300e6
    # FLOPs add batch norm, ReLU6, residual adds, pooling, softmax (element-wise)
    assert p.total_flops == 2 * p.total_macs + p.total_elementwise_flops
    assert 0 < p.total_elementwise_flops < 0.1 * p.total_flops
    assert p.total_params == model.count_params() == 3538984
    assert p.uncounted_ops == {} and p.uncounted_details == []


@pytest.mark.slow
def test_resnet50_matches_published_macs():
    # He et al. 2016: ResNet-50 3.8G FLOPs (multiply-adds); commonly 4.1 GMACs incl. everything.
    model = keras.applications.ResNet50(weights=None)
    p = profile_model(model, trace=False)
    assert p.total_macs == _conv_dense_macs(model)
    assert 3.8e9 <= p.total_macs <= 4.15e9
    assert p.total_params == model.count_params()
