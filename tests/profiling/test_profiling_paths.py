"""Row paths follow the one path scheme of `instrument.walk`; lookups and folding by path."""

import keras
import numpy as np
import pytest

from kerastrace._utils import instrument
from kerastrace.profiling import profile_model

D = 6


class _Block(keras.layers.Layer):
    """Calls a layer it shares with its parent model, then its own Dense."""

    def __init__(self, shared, **kwargs):
        super().__init__(**kwargs)
        self.shared = shared
        self.own = keras.layers.Dense(D, name="own")

    def call(self, x):
        return self.own(self.shared(x))


def _nested_shared_model():
    shared = keras.layers.Dense(D, name="shared")
    x = keras.Input((D,))
    h = shared(x)  # first call, at the top level
    h = _Block(shared, name="block")(h)  # second call, inside `block`
    inner = keras.Sequential(
        [keras.layers.Dense(4, name="d1"), keras.layers.Dense(2, name="d2")], name="inner"
    )
    return keras.Model(x, inner(h), name="outer")


@pytest.fixture(scope="module")
def nested():
    model = _nested_shared_model()
    return model, profile_model(model, batch_size=3, trace=False)


def test_paths_are_the_walker_paths(nested):
    model, p = nested
    walked = [n.path for n in instrument.walk(model)]
    assert [r.path for r in p.layers] == ["", *walked]
    # the shared layer is listed once, at its first path; no model-name prefix
    assert walked == ["shared", "block", "block/own", "inner", "inner/d1", "inner/d2"]
    assert [r.depth for r in p.layers] == [0, 1, 1, 2, 1, 2, 2]
    root = p.layers[0]
    assert (root.path, root.name, root.class_name) == ("", "outer", "Functional")
    assert [r.name for r in p.layers[1:]] == ["shared", "block", "own", "inner", "d1", "d2"]


def test_shared_layer_is_counted_once(nested):
    model, p = nested
    dense = 2 * 3 * D * D + 3 * D  # one call of a (D -> D) Dense on a batch of 3
    assert p["shared"].calls == 2 and p["shared"].flops == 2 * dense
    # `block` holds the shared layer's weights but owns none of them
    assert p["block"].params == 2 * (D * D + D)
    assert p["block"].self_params == 0
    assert p["block"].flops == p["block/own"].flops == dense
    assert sum(r.self_params for r in p.layers) == model.count_params() == p.total_params
    assert sum(r.self_flops for r in p.layers) + p.unassigned_flops == p.total_flops
    assert p.total_flops == 3 * dense + (2 * 3 * D * 4 + 3 * 4) + (2 * 3 * 4 * 2 + 3 * 2)


def test_lookup_by_path_by_name_and_root(nested):
    _, p = nested
    assert p["block/own"] is p["own"]
    assert p["inner/d1"].flops == 2 * 3 * D * 4 + 3 * 4
    assert p[""] is p["outer"] is p.layers[0]
    with pytest.raises(KeyError, match="do not start with the model's name.*'block/own'"):
        p["outer/block/own"]
    with pytest.raises(KeyError, match="No single layer 'nope'.*block/own"):
        p["nope"]
    with pytest.raises(TypeError, match="path_or_name=3"):
        p[3]


def test_fold_by_path_depth(nested):
    _, p = nested
    one = p.fold(1)
    assert [r.path for r in one.layers] == ["", "shared", "block", "inner"]
    assert one["inner"].self_flops == p["inner"].flops
    assert one["inner"].self_params == p["inner"].params
    zero = p.fold(0)
    assert [r.path for r in zero.layers] == [""]
    assert zero.layers[0].self_flops == p.total_flops - p.unassigned_flops
    assert zero.layers[0].self_params == p.total_params


def test_table_and_plot_use_paths(nested, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, p = nested
    rows = p.to_table(sort_by="path").splitlines()[3:10]
    assert [ln.split()[0] for ln in rows] == ["outer", "block", "block/own", "inner",
                                             "inner/d1", "inner/d2", "shared"]  # fmt: skip
    fig, ax = p.plot(top_k=10)
    labels = {t.get_text() for t in ax.get_yticklabels()}
    assert labels == {"shared", "block/own", "inner/d1", "inner/d2"}  # leaves only
    plt.close(fig)


def _two_input_model():
    a = keras.Input((5,), name="a")
    b = keras.Input((3,), name="b", dtype="int32")
    h = keras.layers.Concatenate(name="cat")([a, keras.ops.cast(b, "float32")])
    return keras.Model([a, b], keras.layers.Dense(2, name="fc")(h), name="two_in")


def test_input_shape_list_dict_and_dtype():
    model = _two_input_model()
    fc = 2 * 2 * 8 * 2 + 2 * 2
    by_list = profile_model(model, input_shape=[(5,), (3,)], batch_size=2, trace=False)
    by_dict = profile_model(model, input_shape={"b": (2, 3), "a": (2, 5)}, trace=False)
    default = profile_model(model, batch_size=2, trace=False)
    for p in (by_list, by_dict, default):
        assert p["fc"].flops == fc
        assert p.input_shapes == [(2, 5), (2, 3)]
    typed = profile_model(model, input_shape=[(5,), (3,)], input_dtype=["float32", "int64"],
                          trace=False)  # fmt: skip
    assert typed["fc"].flops == fc // 2


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"input_shape": {"c": (3,)}}, ValueError, "no input named 'c'; its inputs are"),
        ({"input_shape": [(5,)]}, ValueError, r"has 2 inputs \(\['a', 'b'\]\) but 1 shape"),
        ({"input_shape": {"a": "5"}}, ValueError, "input_shape="),
        ({"input_dtype": "nope"}, ValueError, "input_dtype='nope'"),
        ({"input_dtype": ["float32"]}, ValueError, "has 2 inputs but 1 dtype"),
        ({"input_dtype": {"z": "int32"}}, ValueError, "no input named 'z'"),
        ({"inputs": [np.ones((1, 5)), np.ones((1, 3))], "input_shape": [(5,), (3,)]},
         ValueError, "either `inputs` or `input_shape`"),
    ],
)
def test_input_shape_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        profile_model(_two_input_model(), trace=False, **kwargs)


def test_unknown_length_needs_a_shape_and_says_which_input():
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(10, 4, name="emb")(tokens)
    model = keras.Model({"token_ids": tokens}, keras.layers.Dense(2, name="fc")(x))
    with pytest.raises(ValueError, match=r"input 'token_ids' of shape \(None, None\).*"
                                         r"input_shape=\{'token_ids': \(8,\)"):  # fmt: skip
        profile_model(model, trace=False)
    p = profile_model(model, input_shape={"token_ids": (7,)}, trace=False)
    assert p["fc"].flops == 2 * 7 * 4 * 2 + 7 * 2
    assert p.input_shapes == {"token_ids": (1, 7)}
