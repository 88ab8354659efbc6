"""Run in a fresh process: two logical CPU devices must be set before TF initializes.

Everything happens under `if __name__ == "__main__"`: pytest imports this file
(`--doctest-modules`), and at import it must neither configure devices in the
test process nor run the job.
"""

import json
import os
import sys


def _dict_model():
    import keras

    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(30, 8, name="token_embedding")(ids)
    h = keras.layers.Dense(8, activation="tanh")(h)
    m = keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    pooled = keras.ops.sum(h * m, axis=1) / keras.ops.maximum(keras.ops.sum(m, axis=1), 1.0)
    out = keras.layers.Dense(2)(pooled)
    return keras.Model({"token_ids": ids, "padding_mask": mask}, out)


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import numpy as np

    from kerastrace.attribution import LayerIntegratedGradients
    from kerastrace.scale import attribute_dataset
    from kerastrace.testing.reference_models import build_text_classifier

    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} OUTPUT_DIR")
    out_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 30, size=(11, 8)).astype("int32")
    ids[:, 0] = 1
    ids[::3, 5:] = 0
    y = rng.integers(0, 2, size=11).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((ids, y)).batch(4)  # last batch 3: split 2 + 1
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_text_classifier(30, 8, dim=16, num_heads=2, ff_dim=16, num_layers=1)
    lig = LayerIntegratedGradients(model, "embedding")
    kw = dict(reduce_hidden="sum", n_steps=8, baselines=0, shard_size=5, progress=False)
    single = attribute_dataset(lig, ds, **kw)
    dist = attribute_dataset(lig, ds, strategy=strategy, output_dir=out_dir, **kw)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "max_attr_diff": float(np.abs(single.attributions - dist.attributions).max()),
        "max_delta_diff": float(np.abs(single.delta - dist.delta).max()),
        "index": dist.load()["index"].tolist(),
        "labels_equal": bool(np.array_equal(dist.labels, y)),
        "inputs_equal": bool(np.array_equal(dist.inputs, ids)),
        "num_shards": dist.num_shards,
    }
    # dict features (keras-hub style) through strategy.run
    mask = (ids != 0).astype("int32")
    dict_ds = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": ids, "padding_mask": mask}, y)
    ).batch(4)
    with strategy.scope():
        dict_model = _dict_model()
    dict_lig = LayerIntegratedGradients(dict_model, "token_embedding")
    dict_single = attribute_dataset(dict_lig, dict_ds, **kw)
    dict_dist = attribute_dataset(dict_lig, dict_ds, strategy=strategy, **kw)
    result["dict_max_attr_diff"] = float(
        np.abs(dict_single.attributions - dict_dist.attributions).max()
    )
    result["dict_index"] = dict_dist.load()["index"].tolist()
    result["dict_inputs_equal"] = bool(np.array_equal(dict_dist.inputs, ids))
    result["dict_attr_nonzero"] = bool(np.abs(dict_dist.attributions).max() > 0)
    late = build_text_classifier(30, 8, dim=16, num_heads=2, ff_dim=16, num_layers=1)
    try:
        attribute_dataset(LayerIntegratedGradients(late, "embedding"), ds, strategy=strategy, **kw)
        result["late_error"] = None
    except ValueError as e:
        result["late_error"] = str(e)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
