"""Clear errors for inputs that cannot be profiled."""

import zipfile

import keras
import numpy as np
import pytest

from kerastrace.profiling import build_from_builder, load_model_for_profiling, profile_model


def test_unbuilt_model_without_inputs():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not built.*input_shape="):
        profile_model(model, trace=False)


def test_unbuilt_model_with_input_shape_works():
    model = keras.Sequential([keras.layers.Dense(3, name="fc")])
    p = profile_model(model, input_shape=(4,), batch_size=2, trace=False)
    assert p["fc"].flops == 2 * 2 * 4 * 3 + 2 * 3


def test_unknown_batch_dimension():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"batch dimension is unknown.*input_shape=\(None, 4\)"):
        profile_model(model, input_shape=(None, 4), trace=False)


def test_shape_that_does_not_fit():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="does not fit"):
        profile_model(model, input_shape=(2, 3, 4, 5), trace=False)
    with pytest.raises(ValueError, match="do not fit"):
        profile_model(model, input_shape=(7,), trace=False)


def test_invalid_arguments():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="batch_size=0"):
        profile_model(model, batch_size=0, trace=False)
    with pytest.raises(ValueError, match="steps=0"):
        profile_model(model, steps=0)
    with pytest.raises(TypeError, match="model=ndarray"):
        profile_model(np.zeros(3))
    with pytest.raises(ValueError, match="input_shape"):
        profile_model(model, input_shape="4", trace=False)


def test_not_a_keras_file(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a Keras model file"):
        load_model_for_profiling(str(bad))
    other = tmp_path / "model.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="not a Keras model file"):
        load_model_for_profiling(str(other))
    zipped = tmp_path / "z.keras"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("readme.txt", "no config")
    with pytest.raises(ValueError, match="not a Keras model file"):
        load_model_for_profiling(str(zipped))
    with pytest.raises(FileNotFoundError):
        load_model_for_profiling(str(tmp_path / "missing.keras"))


def test_unsafe_keras_file_needs_explicit_flag(tmp_path):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2.0, output_shape=(4,))(inp)
    path = str(tmp_path / "lambda.keras")
    keras.Model(inp, keras.layers.Dense(2)(out)).save(path)
    with pytest.raises(ValueError, match="unsafe deserialization.*safe_mode=False"):
        load_model_for_profiling(path)
    model = load_model_for_profiling(path, safe_mode=False)
    p = profile_model(model, trace=False)
    assert p.total_params == 4 * 2 + 2


def test_safe_keras_file_round_trip(tmp_path):
    from kerastrace.layers import TransformerBlock

    inp = keras.Input((6, 8))
    out, _ = TransformerBlock(2, 16, name="blk")(inp)
    path = str(tmp_path / "ok.keras")
    keras.Model(inp, out).save(path)
    model = load_model_for_profiling(path)
    p = profile_model(model, trace=False)
    assert p["blk/attention"].params == 8 * 3 * 8 + 3 * 8 + 8 * 8 + 8


def test_builder(tmp_path):
    src = tmp_path / "build.py"
    src.write_text(
        "import keras\n"
        "def make(units=3):\n"
        "    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(units)])\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    model = build_from_builder(f"{src}:make", units=4)
    assert model.count_params() == 5 * 4 + 4
    with pytest.raises(ValueError, match="expected a Keras model"):
        build_from_builder(f"{src}:not_a_model")
    with pytest.raises(ValueError, match="no function 'nope'"):
        build_from_builder(f"{src}:nope")
    with pytest.raises(ValueError, match="does not exist"):
        build_from_builder(f"{tmp_path}/missing.py:make")
