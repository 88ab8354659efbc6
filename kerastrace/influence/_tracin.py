"""TracIn (Pruthi et al. 2020): training-data attribution over checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import numpy as np

from kerastrace._utils import validation as v
from kerastrace.influence import _gradients as grad
from kerastrace.influence import _index
from kerastrace.influence._checkpoints import CheckpointLoader, load_checkpoints
from kerastrace.influence._index import GradientIndex, iter_batches
from kerastrace.influence._results import Influencers, SelfInfluence


def _describe_loss(loss) -> str:
    if isinstance(loss, keras.losses.Loss):
        config = {k: val for k, val in loss.get_config().items() if k not in ("name", "dtype")}
        return f"{type(loss).__name__}({config})"
    return getattr(loss, "__qualname__", type(loss).__name__)


class TracIn:
    """Training-data attribution with TracIn over checkpoints saved during training.

    The influence of a training example `z` on a test example `z'` is the
    learning-rate-weighted sum, over the checkpoints `w_c` saved during
    training, of the dot products of their loss gradients:

        TracIn(z, z') = sum_c lr_c * grad L(w_c, z) . grad L(w_c, z')

    Gradients are taken with respect to the weights of chosen layers (by
    default the last layer with trainable weights, as Captum's
    `TracInCPFast`), one per example, vectorized: for plain `Dense` layers
    from one forward and backward pass of the batch (outer products of the
    layer's inputs and output gradients), otherwise with
    `tf.vectorized_map`. An optional seeded random projection
    (Johnson-Lindenstrauss) shrinks each gradient to `projection_dim`
    numbers, so the index of training gradients fits in memory for large
    data sets.

    Workflow: `build_index(train_data)` computes the training gradients once
    (in resumable shards with `output_dir`); then `influence`,
    `proponents`, `opponents` and `self_influence` query it many times.
    Checkpoint weights are loaded into `model` for the computation and the
    model's own weights (and optimizer state) are restored afterwards.

    Inputs are what the model takes: an array, a tuple of arrays
    (multi-input models) or a dict (keras-hub text models:
    `{"token_ids", "padding_mask", ...}`), token ids or floats.

    Args:
        model: The trained Keras model (its architecture must match the
            checkpoints').
        checkpoints: A directory of `CheckpointRecorder` records or of
            `.weights.h5` / `.keras` files (e.g. from
            `keras.callbacks.ModelCheckpoint`), or a list of such files or
            `Checkpoint`s, in training order (see `load_checkpoints`).
        learning_rates: The learning rate of each checkpoint (a list) or one
            number for all; required when the checkpoints do not record it.
        loss_fn: `loss_fn(y_true, y_pred) -> (B,)` per-example training loss.
            Default: the model's compiled loss with `reduction=None`.
        layers: The layers whose weights' gradients are compared: a layer,
            its path or name, or a list. Default: the last layer that owns
            trainable weights (usually the output head).
        projection_dim: Project every gradient to this many dimensions
            (smaller than the gradient's length), or None.
        seed: Seed of the projection.
        gradient_method: `"auto"` (`"dense"` when every chosen layer is a
            plain `keras.layers.Dense`, else `"vectorized"`), `"dense"` or
            `"vectorized"`. Both give the same gradients.
        batch_size: Examples per gradient batch.

    Attributes:
        checkpoints: The `Checkpoint`s, with their learning rates.
        layers: The chosen layers' paths.
        dim: The length of the full (unprojected) per-example gradient.
        index: The `GradientIndex` after `build_index`/`load_index`, else None.

    Raises:
        ValueError: for checkpoints of another architecture, a missing
            learning rate, an uncompiled model without `loss_fn`, an unknown
            layer or an invalid `projection_dim`, each naming the argument.

    Example:

    >>> import os, tempfile, numpy as np, keras
    >>> from kerastrace.influence import TracIn
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.compile(loss=lambda y, p: 0.5 * keras.ops.sum((p - y) ** 2, axis=-1))
    >>> d = tempfile.mkdtemp()
    >>> model.layers[0].set_weights([np.zeros((2, 1))])
    >>> model.save_weights(os.path.join(d, "c1.weights.h5"))
    >>> x, y = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0], [1.0]])
    >>> tracin = TracIn(model, d, learning_rates=0.5)
    >>> _ = tracin.build_index(x, y)
    >>> # gradients at w = 0: (p - y) * x = -x, so scores = 0.5 * x_test . x_train
    >>> tracin.influence(np.array([[3.0, 1.0]]), np.array([[1.0]])).tolist()
    [[1.5, 1.0]]

    References:
        Pruthi, Liu, Kale, Sundararajan. Estimating Training Data Influence
        by Tracing Gradient Descent. NeurIPS 2020.
        https://arxiv.org/abs/2002.08484
    """

    def __init__(
        self,
        model: keras.Model,
        checkpoints,
        *,
        learning_rates=None,
        loss_fn: Callable | None = None,
        layers=None,
        projection_dim: int | None = None,
        seed: int = 0,
        gradient_method: str = "auto",
        batch_size: int = 64,
    ):
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                f"Received an invalid value for argument `model`, expected a Keras model. "
                f"Received: model={model!r}"
            )
        self.model = model
        self.batch_size = v.check_positive_int("batch_size", batch_size)
        self.seed = v.check_non_negative_int("seed", seed)
        self.checkpoints = load_checkpoints(checkpoints, learning_rates)
        chosen = grad.resolve_layers(model, layers)
        self.layers = [p for p, _ in chosen]
        self.gradient_method = grad.choose_method(chosen, gradient_method)
        self._loss = grad.resolve_loss(model, loss_fn)
        self.dim = int(sum(int(np.prod(w.shape)) for w in grad.layer_variables(chosen)))
        self.projection_dim = v.check_optional_positive_int("projection_dim", projection_dim)
        projection = None
        if self.projection_dim is not None:
            if self.projection_dim >= self.dim:
                raise v.invalid(
                    "projection_dim",
                    f"an integer smaller than the gradient length {self.dim} of the layers "
                    f"{self.layers} (or None: no projection)",
                    projection_dim,
                )
            projection = grad.projection_matrix(self.dim, self.projection_dim, self.seed)
        self._loader = CheckpointLoader(model, self.checkpoints)
        self._engine = grad.GradientEngine(model, chosen, self._loss, self.gradient_method,
                                           projection)  # fmt: skip
        self.index: GradientIndex | None = None

    # ------------------------------------------------------------ index
    def _config(self) -> dict:
        return {
            "model": self.model.name,
            "layers": self.layers,
            "gradient_dim": self.dim,
            "projection_dim": self.projection_dim,
            "seed": self.seed if self.projection_dim is not None else None,
            "loss": _describe_loss(self._loss),
            "checkpoints": [[os.path.abspath(c.path), c.learning_rate] for c in self.checkpoints],
        }

    def build_index(
        self,
        data,
        labels=None,
        *,
        output_dir: str | os.PathLike | None = None,
        shard_size: int = 4096,
        resume: bool = True,
        progress: bool = False,
        on_shard: Callable[[int, int], None] | None = None,
    ) -> GradientIndex:
        """Compute every training example's gradient at every checkpoint, once.

        With `output_dir`, each checkpoint's gradients are written in `.npz`
        shards of `shard_size` examples (atomically) with a manifest
        rewritten after each shard; calling again with the same arguments
        resumes an interrupted build (finished shards are not recomputed)
        and returns a finished index without computing anything.

        Args:
            data: The training data: a batched `tf.data.Dataset` of `(x, y)`
                elements (the same order on every pass: no reshuffling), or
                model inputs (an array, a tuple of arrays or a dict) with
                `labels`.
            labels: The training labels for array `data`.
            output_dir: Directory of the index, or None to keep it in memory.
            shard_size: Examples per shard.
            resume: Continue an index found in `output_dir` (with False, an
                existing index there is an error).
            progress: Show a progress bar.
            on_shard: Called as `on_shard(checkpoint, shard)` after each
                shard is written (in memory, every batch is a shard).

        Returns:
            The `GradientIndex` (also kept as `self.index`).

        Raises:
            ValueError: for empty data, missing labels, or an index in
                `output_dir` built with other settings.
        """
        shard_size = v.check_positive_int("shard_size", shard_size)
        resume = v.check_bool("resume", resume)
        progress = v.check_bool("progress", progress)
        self.index = _index.build_index(
            self._engine, self._loader, self.checkpoints, data, labels,
            config={**self._config(), "shard_size": shard_size}, output_dir=output_dir,
            shard_size=shard_size, batch_size=self.batch_size, resume=resume,
            progress=progress, on_shard=on_shard,
        )  # fmt: skip
        return self.index

    def load_index(self, directory: str | os.PathLike) -> GradientIndex:
        """Use a finished index written by `build_index(..., output_dir=directory)`.

        Raises:
            ValueError: when the index is incomplete or was built with other
                settings (checkpoints, layers, projection, loss).
        """
        index = GradientIndex.open(directory)
        mine = self._config()
        theirs = {k: index.manifest["config"].get(k) for k in mine}
        if theirs != mine:
            diff = sorted(k for k in mine if theirs[k] != mine[k])
            raise ValueError(
                "Received an invalid value for argument `directory`: the index there was "
                f"built with other settings ({', '.join(diff)} differ). Build a new index. "
                f"Received: directory={os.fspath(directory)!r}"
            )
        index._require_complete()
        self.index = index
        return index

    def _require_index(self) -> GradientIndex:
        if self.index is None:
            raise ValueError(
                "This TracIn has no training-gradient index yet: call "
                "`tracin.build_index(train_data, train_labels)` (or `load_index(directory)`) "
                "first."
            )
        return self.index

    # ------------------------------------------------------------ queries
    def _predicted(self, inputs) -> np.ndarray:
        out = []
        for x in _index.iter_inputs(inputs, self.batch_size):
            y = keras.ops.convert_to_numpy(grad._call_model(self.model, x))
            if y.ndim < 2 or y.shape[-1] < 2:
                raise ValueError(
                    "Received an invalid value for argument `labels`: without labels the "
                    "model's predicted class (argmax over its last axis) is explained, but "
                    f"the model outputs shape {y.shape}. Pass the labels to explain."
                )
            out.append(np.argmax(y, axis=-1))
        return np.concatenate(out).astype(np.int64)

    def _compute(self, inputs, labels):
        """`(grads, losses, labels)`: per checkpoint `(Q, D)` and `(Q,)`, and the labels used."""
        inputs = _index.features(inputs)
        if _index.num_examples(inputs, "inputs") == 0:
            raise ValueError("Received an invalid value for argument `inputs`: it is empty.")
        if labels is None:
            labels = self._predicted(inputs)
        grads, losses = [], []
        with self._loader.loading() as load:
            for ckpt in self.checkpoints:
                load(ckpt)
                parts = [
                    self._engine(x, y)
                    for _, x, y in iter_batches(inputs, labels, self.batch_size, "inputs")
                ]
                grads.append(np.concatenate([g for g, _ in parts]))
                losses.append(np.concatenate([loss for _, loss in parts]))
        return grads, losses, np.asarray(labels)

    def gradients(self, inputs, labels=None) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-example gradients of `inputs` at every checkpoint.

        Args:
            inputs: Model inputs `(Q, ...)`: an array, a tuple or a dict.
            labels: Their labels; None uses the model's predicted classes.

        Returns:
            `(grads, labels)`: one `(Q, D)` float32 array per checkpoint (`D`
            is `projection_dim` when projecting), and the labels used.
        """
        grads, _, used = self._compute(inputs, labels)
        return grads, used

    def influence(self, inputs, labels=None) -> np.ndarray:
        """TracIn scores of every training example on each test example.

        Args:
            inputs: Test inputs `(Q, ...)`: an array, a tuple or a dict.
            labels: Test labels whose loss is differentiated; None uses the
                model's predicted classes (explaining its predictions).

        Returns:
            `(Q, N_train)` float64 scores: positive for proponents (training
            on the example lowered the test loss), negative for opponents.

        Raises:
            ValueError: before `build_index`, or for empty inputs.
        """
        index = self._require_index()
        grads, _ = self.gradients(inputs, labels)
        return index.scores(grads)

    def _scores(self, inputs, labels, k):
        index = self._require_index()
        k = v.check_positive_int("k", k)
        if k > len(index):
            raise v.invalid("k", f"at most the number of training examples {len(index)}", k)
        grads, used = self.gradients(inputs, labels)
        return index.scores(grads), used

    def _rank(self, scores, used, k, kind) -> Influencers:
        signed = scores if kind == "proponents" else -scores
        order = np.argsort(-signed, axis=1, kind="stable")[:, :k]
        train_labels = self.index.labels
        return Influencers(
            kind=kind,
            indices=order.astype(np.int64),
            scores=np.take_along_axis(scores, order, axis=1),
            test_labels=used,
            train_labels=None if train_labels is None else np.asarray(train_labels)[order],
        )

    def _influencers(self, inputs, labels, k, kind) -> Influencers:
        scores, used = self._scores(inputs, labels, k)
        return self._rank(scores, used, k, kind)

    def proponents_and_opponents(
        self, inputs, labels=None, k: int = 5
    ) -> tuple[Influencers, Influencers]:
        """`(proponents(...), opponents(...))` from one computation of the test gradients."""
        scores, used = self._scores(inputs, labels, k)
        return self._rank(scores, used, k, "proponents"), self._rank(scores, used, k, "opponents")

    def proponents(self, inputs, labels=None, k: int = 5) -> Influencers:
        """The `k` training examples with the highest TracIn score on each test example.

        Args:
            inputs: Test inputs `(Q, ...)`.
            labels: Test labels; None uses the model's predicted classes.
            k: Examples per test example.

        Returns:
            `Influencers` (indices, scores, labels), strongest first.
        """
        return self._influencers(inputs, labels, k, "proponents")

    def opponents(self, inputs, labels=None, k: int = 5) -> Influencers:
        """The `k` training examples with the most negative TracIn score on each test example.

        Args:
            inputs: Test inputs `(Q, ...)`.
            labels: Test labels; None uses the model's predicted classes.
            k: Examples per test example.

        Returns:
            `Influencers` (indices, scores, labels), most negative first.
        """
        return self._influencers(inputs, labels, k, "opponents")

    def self_influence(self, inputs=None, labels=None) -> SelfInfluence:
        """Self-influence `sum_c lr_c * |grad L(w_c, z)|^2` of training examples.

        Args:
            inputs: None for the indexed training examples (from the
                index), or other examples `(N, ...)` with their `labels`.
            labels: Labels of `inputs`.

        Returns:
            A `SelfInfluence` with the scores, the losses at the last
            checkpoint (the usual baseline ranking) and the labels.
        """
        if inputs is None:
            index = self._require_index()
            return SelfInfluence(index.self_influence(), index.losses(-1), index.labels)
        if labels is None:
            raise ValueError(
                "Received an invalid value for argument `labels`: self-influence of given "
                "inputs needs their labels. Received: labels=None"
            )
        grads, losses, used = self._compute(inputs, labels)
        scores = sum(
            c.learning_rate * np.einsum("nd,nd->n", g.astype(np.float64), g.astype(np.float64))
            for c, g in zip(self.checkpoints, grads)
        )
        return SelfInfluence(scores, losses[-1], used)

    def __repr__(self) -> str:
        return (
            f"TracIn({len(self.checkpoints)} checkpoints, layers={self.layers}, dim={self.dim}, "
            f"projection_dim={self.projection_dim}, method={self.gradient_method!r})"
        )
