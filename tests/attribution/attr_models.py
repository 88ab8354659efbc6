"""Reference models shared by the attribution tests (a plain module, not conftest:
several test folders have a conftest.py, so `from conftest import ...` is ambiguous)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402


def ig_paper_model():
    """f(x1, x2) = ReLU(ReLU(x1) - 1 - ReLU(x2)) (Sundararajan et al., 2017)."""
    x1, x2 = keras.Input((1,)), keras.Input((1,))
    z = keras.layers.ReLU()(x1) - 1.0 - keras.layers.ReLU()(x2)
    return keras.Model([x1, x2], keras.layers.ReLU()(z))


def ig_paper_equivalent():
    """Same function built differently: ReLU(z) = z + ReLU(-z)."""
    x1, x2 = keras.Input((1,)), keras.Input((1,))
    z = keras.layers.ReLU()(x1) - 1.0 - keras.layers.ReLU()(x2)
    return keras.Model([x1, x2], z + keras.layers.ReLU()(-z))


def smooth_mlp(n_in=5, n_out=3, seed=0, dtype=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            keras.layers.Dense(8, activation="tanh", dtype=dtype),
            keras.layers.Dense(n_out, activation="softplus", dtype=dtype),
        ]
    )




def text_model(vocab=20, seq=6, dim=8, seed=0, classes=2):
    """tokens -> Embedding(mask_zero) -> TransformerBlock -> masked mean -> Dense."""
    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(seed)
    tokens = keras.Input((seq,), dtype="int32")
    h = keras.layers.Embedding(vocab, dim, mask_zero=True, name="emb")(tokens)
    h, _ = TransformerBlock(num_heads=2, ff_dim=16, activation="gelu", name="block")(h)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(classes, activation="tanh", name="head")(pooled)
    return keras.Model(tokens, out)
