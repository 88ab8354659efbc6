"""Training-data attribution: which training examples made the model predict what it did.

TracIn (Pruthi et al. 2020) over checkpoints saved during training: the
influence of a training example on a test prediction is the
learning-rate-weighted sum, over the checkpoints, of the dot products of
their loss gradients. Record checkpoints while training with
`CheckpointRecorder` (weights plus the learning rate), or use Keras'
`ModelCheckpoint` files with `learning_rates=[...]`; build the index of
training gradients once (`TracIn.build_index`, resumable shards) and query
it many times: `influence`, `proponents` / `opponents` of a prediction, and
`self_influence` of every training example (high for mislabelled or unusual
examples).

Example:

>>> import os, tempfile, numpy as np, keras
>>> from kerastrace.influence import CheckpointRecorder, TracIn
>>> keras.utils.set_random_seed(0)
>>> x = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
>>> y = (x[:, 0] > 0).astype("int32")
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> model.compile(keras.optimizers.SGD(0.5),
...               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> ckpt = tempfile.mkdtemp()
>>> _ = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[CheckpointRecorder(ckpt)])
>>> tracin = TracIn(model, ckpt)
>>> index = tracin.build_index(x, y)
>>> scores = tracin.influence(x[:2], y[:2])
>>> scores.shape, len(tracin.self_influence().scores)
((2, 40), 40)
>>> pro = tracin.proponents(x[:2], y[:2], k=3)
>>> bool(np.array_equal(pro.indices[:, 0], scores.argmax(axis=1)))
True
"""

from kerastrace.influence._checkpoints import (
    Checkpoint,
    CheckpointRecorder,
    load_checkpoints,
)
from kerastrace.influence._index import GradientIndex
from kerastrace.influence._results import Influencers, SelfInfluence
from kerastrace.influence._text import influence_for_texts
from kerastrace.influence._tracin import TracIn

__all__ = [
    "Checkpoint",
    "CheckpointRecorder",
    "GradientIndex",
    "Influencers",
    "SelfInfluence",
    "TracIn",
    "influence_for_texts",
    "load_checkpoints",
]
