"""Input/target normalization and the batched, compiled gradient engine.

Private module. Everything that runs many passes (integration steps, noise
samples, random baselines) goes through `GradientEngine`: the passes are laid
out as *rows* ``(segment g, point m)``, where a segment is one (possibly
noisy or repeated) example and a point is one position on the straight path
``base_g + alpha[g, m] * (x_g - base_g)``. The rows are processed inside one
`tf.function` by a `tf.while_loop` over fixed-size chunks of
`internal_batch_size` rows (the last chunk is padded, so every chunk has the
same shape), and the weighted gradients are summed per segment. The scaled
inputs are built inside the loop, so memory grows with the chunk size, not
with the number of steps. The function has an `input_signature` with a free
batch axis and takes the chunk size as a scalar tensor: new values, targets,
batch sizes, step counts or chunk sizes do not retrace. Without an
`internal_batch_size` the chunk size comes from a memory budget
(`AUTO_BATCH_BYTES`). Each chunk also reduces its scores and gradients to the
first row that is NaN or inf, so a non-finite model output or gradient is a
clear error, never a silent NaN or a finite-looking wrong result.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import tf_compat
from kerastrace._utils.validation import check_positive_int as v_check_positive_int
from kerastrace._utils.validation import invalid as v_invalid

F32 = tf.float32
#: Chunks the while loop may run concurrently: overlapping small chunks keeps
#: both cores busy; peak memory stays bounded by this many chunks.
PARALLEL_CHUNKS = 4
#: Memory budget of one model call when `internal_batch_size=None`. A *row* is
#: one model evaluation (one path point, noise sample or random baseline of
#: one example); it is counted as 4 bytes per element of one example's model
#: inputs (attributed and passed through; for layer methods the layer
#: activation too) plus its model outputs. Rows per call are
#: `AUTO_BATCH_BYTES // row_bytes`, at least 1 and at most `AUTO_BATCH_ROWS`.
#: The intermediate activations of a row are usually a multiple of its
#: inputs and outputs, hence the modest budget; up to `PARALLEL_CHUNKS` calls
#: may be in flight. Pass `internal_batch_size` to choose yourself.
AUTO_BATCH_BYTES = 32 * 2**20
#: Most rows per model call when `internal_batch_size=None` (see `AUTO_BATCH_BYTES`).
AUTO_BATCH_ROWS = 1024
#: Largest number of samples per example (`nt_samples`, GradientShap's
#: `n_samples`): SmoothGrad and expected gradients use tens of samples.
MAX_SAMPLES = 100_000
#: Most model evaluations one engine call may plan (row indices are int32).
MAX_ROWS = 2**31 - 2**20
#: Status codes of a row (see `GradientEngine`): its score or a gradient is NaN/inf.
_CODES = 64
_NO_BAD_ROW = np.iinfo(np.int64).max


def check_samples(name, value) -> int:
    """A positive sample count of at most `MAX_SAMPLES`."""
    n = v_check_positive_int(name, value)
    if n > MAX_SAMPLES:
        raise v_invalid(
            name, f"a positive integer <= {MAX_SAMPLES}", value,
            hint="Tens of samples are typical (SmoothGrad: 10 to 50)",
        )
    return n


def auto_batch_size(row_elements: int) -> int:
    """Rows per model call for `internal_batch_size=None` (see `AUTO_BATCH_BYTES`).

    >>> auto_batch_size(10), auto_batch_size(3 * 2**20), auto_batch_size(10**9)
    (1024, 2, 1)
    """
    row_bytes = 4 * max(1, int(row_elements))
    return int(max(1, min(AUTO_BATCH_ROWS, AUTO_BATCH_BYTES // row_bytes)))


# ----------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class Layout:
    """How the flat tuple of input arrays maps back to what the model takes.

    Inputs come as one array (`kind="array"`), a tuple/list of arrays for a
    multi-input model (`"tuple"`) or a dict such as keras-hub's
    `{"token_ids", "padding_mask", ...}` (`"dict"`). They are flattened to a
    tuple of arrays (dict entries in the dict's order); `diff` lists the flat
    positions that are attributed (differentiated or perturbed), the others
    pass through to the model unchanged (Captum's `additional_forward_args`).

    Attributes:
        kind: `"array"`, `"tuple"` or `"dict"`.
        keys: One key per flat entry: the dict key, or the position.
        diff: Flat positions of the attributed entries, in order.
    """

    kind: str
    keys: tuple
    diff: tuple
    result: str = ""

    def __post_init__(self):
        if not self.result:
            object.__setattr__(self, "result", self.kind)

    @property
    def ctx(self) -> tuple:
        """Flat positions of the pass-through entries."""
        return tuple(i for i in range(len(self.keys)) if i not in self.diff)

    def with_diff(self, diff) -> Layout:
        return dataclasses.replace(self, diff=tuple(diff))

    def split(self, flat):
        """`(attributed, pass_through)` tuples from the flat entries."""
        return tuple(flat[i] for i in self.diff), tuple(flat[i] for i in self.ctx)

    def merge(self, diff, ctx) -> list:
        """The flat entries in model order from the attributed and pass-through parts."""
        out = [None] * len(self.keys)
        for i, t in zip(self.diff, diff):
            out[i] = t
        for i, t in zip(self.ctx, ctx):
            out[i] = t
        return out

    def pack(self, flat):
        """What the model is called with: an array, a list or a dict."""
        if self.kind == "dict":
            return dict(zip(self.keys, flat))
        if self.kind == "tuple":
            return list(flat)
        return flat[0]

    def restore(self, values):
        """The attributed values in the caller's structure."""
        values = tuple(values)
        if self.kind == "dict":
            return {self.keys[i]: val for i, val in zip(self.diff, values)}
        if self.result == "tuple" or len(values) > 1:
            return values
        return values[0]

    def label(self, i: int, names=None) -> str:
        """A readable label of flat entry `i` for error messages."""
        if self.kind == "dict":
            return f"input {self.keys[i]!r}"
        return input_label(i, len(self.keys), names)


def _as_array(t, name):
    arr = np.asarray(t.numpy() if hasattr(t, "numpy") else t)
    if arr.ndim == 0:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected arrays with a "
            f"leading batch axis. Received: {name} with shape ()"
        )
    return arr


def _is_multi(inputs) -> bool:
    return isinstance(inputs, tuple) or (
        isinstance(inputs, list) and len(inputs) > 0 and all(hasattr(t, "shape") for t in inputs)
    )


def normalize_inputs(inputs, name: str = "inputs", additional_forward_args=None):
    """Return `(flat_tuple_of_numpy_arrays, Layout)`.

    `inputs` is an array/tensor, a tuple/list of them or a dict of them.
    `additional_forward_args` (optional) are model inputs that are passed
    through unchanged: a dict merged into dict inputs, or an array/tuple
    appended to array/tuple inputs (the model then gets a list).
    """
    if isinstance(inputs, dict):
        if not inputs:
            raise ValueError(f"Received an invalid value for argument `{name}`: it is empty.")
        keys, items, kind = list(inputs), list(inputs.values()), "dict"
    else:
        kind = "tuple" if _is_multi(inputs) else "array"
        items = list(inputs) if kind == "tuple" else [inputs]
        if not items:
            raise ValueError(f"Received an invalid value for argument `{name}`: it is empty.")
        keys = list(range(len(items)))
    n_main, result = len(items), kind
    if additional_forward_args is not None:
        extra = additional_forward_args
        if kind == "dict":
            if not isinstance(extra, dict):
                raise TypeError(
                    "Received an invalid value for argument `additional_forward_args`, "
                    "expected a dict (the inputs are a dict). Received: "
                    f"additional_forward_args of type {type(extra).__name__}"
                )
            both = sorted(set(extra) & set(keys))
            if both:
                raise ValueError(
                    "Received an invalid value for argument `additional_forward_args`: "
                    f"keys {both} are also in `{name}`. Received: "
                    f"additional_forward_args keys {list(extra)}"
                )
            keys += list(extra)
            items += list(extra.values())
        else:
            if isinstance(extra, dict):
                raise TypeError(
                    "Received an invalid value for argument `additional_forward_args`, "
                    "expected an array or a tuple (the inputs are not a dict). Received: a dict"
                )
            more = list(extra) if _is_multi(extra) else [extra]
            kind = "tuple"
            keys = list(range(len(items) + len(more)))
            items += more
    out = tuple(_as_array(t, name) for t in items)
    batch = {a.shape[0] for a in out}
    if len(batch) != 1:
        sizes = {str(k): a.shape[0] for k, a in zip(keys, out)}
        raise ValueError(
            f"Received an invalid value for argument `{name}`: all inputs must have the "
            f"same batch size. Received: batch sizes {sizes}"
        )
    if batch == {0}:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: the batch is empty; pass at "
            f"least one example. Received: {name} with shape(s) "
            f"{[tuple(a.shape) for a in out]}"
        )
    return out, Layout(kind, tuple(keys), tuple(range(n_main)), result)


def _shape_str(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")")


def check_model_inputs(specs, flat, layout, name="inputs", names=None):
    """Refuse inputs whose structure or per-example shapes differ from the model's `Input`s.

    `specs` is `instrument.input_specs(model)` (None for a model without
    symbolic inputs: not checked). Dict inputs must have exactly the model's
    keys; array/tuple inputs one array per model input; each array the
    model's rank and its fixed sizes (the batch axis and `None` axes are free).
    Without this a missing dict entry or a wrong shape fails deep inside a
    TensorFlow trace, and an extra axis can even be silently broadcast.
    """
    if specs is None:
        return
    if isinstance(specs, dict):
        if layout.kind != "dict":
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the model takes a dict "
                f"with keys {list(specs)}; pass the inputs as a dict. Received: {name} of "
                f"{len(flat)} array(s)"
            )
        missing = [k for k in specs if k not in layout.keys]
        extra = [k for k in layout.keys if k not in specs]
        if missing or extra:
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the model takes the keys "
                f"{list(specs)}" + (f"; missing: {missing}" if missing else "")
                + (f"; not model inputs: {extra}" if extra else "")
                + f". Received: {name} keys {list(layout.keys)}"
            )
        pairs = [(i, specs[layout.keys[i]]) for i in range(len(flat))]
    else:
        if layout.kind == "dict":
            return  # a functional model called with a dict by input name: Keras maps it
        spec_list = list(specs) if isinstance(specs, (list, tuple)) else [specs]
        if len(spec_list) != len(flat):
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the model takes "
                f"{len(spec_list)} input(s), expected as many arrays (inputs plus "
                f"`additional_forward_args`). Received: {len(flat)} array(s)"
            )
        pairs = list(enumerate(spec_list))
    for i, spec in pairs:
        shape = getattr(spec, "shape", None)
        if shape is None or shape.rank is None:
            continue
        want, got = tuple(shape.as_list())[1:], tuple(flat[i].shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(
                f"Received an invalid value for argument `{name}`: {layout.label(i, names)} "
                f"has the per-example shape {_shape_str(got)}, but the model takes "
                f"{_shape_str(want)} (None: any size). Received: {name} with shape "
                f"{_shape_str(flat[i].shape)}"
            )


def restore(values, layout):
    """Put attributed values back into the caller's structure (see `Layout.restore`)."""
    if isinstance(layout, Layout):
        return layout.restore(values)
    return tuple(values) if layout else values[0]


def input_label(i: int, n: int, names=None) -> str:
    if names and i < len(names) and names[i]:
        return f"input {i} ({names[i]!r})"
    return f"input {i}" if n > 1 else "the input"


def _dtype_hint():
    return (
        "gradients with respect to integer inputs (e.g. token ids) do not exist. To explain "
        "a token-id model, attribute to its embedding layer with "
        "`LayerIntegratedGradients(model, embedding_layer)` (or `LayerGradientXActivation`)."
    )


def select_float_inputs(flat, layout, names=None, method="this gradient method"):
    """Attributed entries as float32 and the layout that says which they are.

    Array and tuple inputs must all be floating point (integer entries can
    be passed through with `additional_forward_args`). For dict inputs the
    floating-point entries are attributed and the others (token ids, masks,
    segment ids) pass through unchanged; a dict without any floating-point
    entry is refused.
    """
    if layout.kind == "dict":
        diff = tuple(i for i in layout.diff if np.issubdtype(flat[i].dtype, np.floating))
        if not diff:
            kinds = {str(layout.keys[i]): str(flat[i].dtype) for i in layout.diff}
            raise TypeError(
                f"The dict inputs have no floating-point entry ({kinds}): {method} needs "
                f"floating-point inputs, because {_dtype_hint()}"
            )
        layout = layout.with_diff(diff)
    else:
        for i in layout.diff:
            if not np.issubdtype(flat[i].dtype, np.floating):
                raise TypeError(
                    f"{layout.label(i, names)} has dtype {flat[i].dtype}: {method} needs "
                    f"floating-point inputs, because {_dtype_hint()} Integer inputs that "
                    "should pass through unchanged go in `additional_forward_args`."
                )
    flat = tuple(
        flat[i].astype(np.float32, copy=False) if i in layout.diff else flat[i]
        for i in range(len(flat))
    )
    return flat, layout


#: Dict entries that perturbation methods pass through by default: keras-hub's
#: auxiliary inputs (masks and segment ids), never the thing being explained.
AUXILIARY_KEYS = (
    "padding_mask", "segment_ids", "attention_mask", "token_type_ids", "position_ids",
    "mask", "decoder_padding_mask", "encoder_padding_mask",
)


def select_perturbed_inputs(flat, layout):
    """The entries a perturbation method occludes: for dicts, all but `AUXILIARY_KEYS`."""
    if layout.kind != "dict":
        return layout
    diff = tuple(i for i in layout.diff if layout.keys[i] not in AUXILIARY_KEYS)
    if not diff:
        raise ValueError(
            "Received an invalid value for argument `inputs`: every entry of the dict is an "
            f"auxiliary input ({[layout.keys[i] for i in layout.diff]}); nothing to perturb."
        )
    return layout.with_diff(diff)


def check_float_inputs(xs, names=None, method="this gradient method"):
    """Cast floating inputs to float32; reject integer/bool inputs with a pointer."""
    flat, _ = select_float_inputs(
        tuple(xs), Layout("tuple", tuple(range(len(xs))), tuple(range(len(xs)))), names, method
    )
    return flat


def check_finite(xs, name="inputs", names=None, layout=None):
    for i, x in enumerate(xs):
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            finite = np.isfinite(x)
            bad = int(np.size(x) - np.count_nonzero(finite))
            pos = tuple(int(k) for k in np.argwhere(~finite)[0])
            label = layout.label(i, names) if layout is not None else input_label(i, len(xs), names)
            raise ValueError(
                f"Received an invalid value for argument `{name}`: "
                f"{label} contains {bad} NaN or inf value(s) (first: {x[pos].item()!r} at "
                f"{position(pos)}). Attributions of non-finite inputs are undefined."
            )


def _dict_baselines(baselines, xs, layout, name):
    """A dict of baselines for some attributed entries; the others keep their inputs."""
    keys = [layout.keys[i] for i in layout.diff]
    unknown = [k for k in baselines if k not in keys]
    if unknown:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: keys {unknown} are not "
            f"attributed inputs; expected some of {keys}. Received: {name} keys "
            f"{list(baselines)}"
        )
    return tuple(baselines.get(k, x) for k, x in zip(keys, xs))


def broadcast_baselines(baselines, xs, name="baselines", dtype=np.float32, layout=None):
    """Broadcast `baselines` (None, scalar, array, tuple or dict) to each input's shape.

    With dict inputs (`layout.kind == "dict"`), a dict gives the baselines of
    some attributed entries by key (the others keep their input values); a
    scalar or array applies to every attributed entry.
    """
    if isinstance(baselines, dict):
        if layout is None or layout.kind != "dict":
            raise TypeError(
                f"Received an invalid value for argument `{name}`: a dict of baselines "
                f"needs dict inputs. Received: {name} with keys {list(baselines)}"
            )
        baselines = _dict_baselines(baselines, xs, layout, name)
    if baselines is None:
        baselines = tuple(0.0 for _ in xs)
    elif not isinstance(baselines, (tuple, list)) or (
        len(xs) == 1 and not (isinstance(baselines, tuple) and len(baselines) == 1)
    ):
        baselines = (baselines,)
    if len(baselines) != len(xs):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected one baseline per "
            f"input ({len(xs)}). Received: {len(baselines)} baselines"
        )
    out = []
    for i, (b, x) in enumerate(zip(baselines, xs)):
        arr = np.asarray(b.numpy() if hasattr(b, "numpy") else b)
        try:
            arr = np.broadcast_to(arr, x.shape)
        except ValueError:
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the baseline for "
                f"{input_label(i, len(xs))} cannot be broadcast to the input shape "
                f"{x.shape}. Use a scalar, an array of the per-example shape {x.shape[1:]} "
                f"or of the full shape. Received: {name} with shape {arr.shape}"
            ) from None
        label = layout.label(layout.diff[i]) if layout is not None and len(
            layout.diff) == len(xs) else input_label(i, len(xs))
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            pos = tuple(int(k) for k in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the baseline for {label} "
                f"contains NaN or inf ({arr[pos].item()!r} at "
                f"{position(pos, np.issubdtype(x.dtype, np.integer))}). Baselines must be "
                f"finite. Received: {name} with {int(np.size(arr) - np.isfinite(arr).sum())} "
                "non-finite value(s)"
            )
        target = np.dtype(dtype if dtype is not None else x.dtype)
        if np.issubdtype(target, np.integer) and np.issubdtype(arr.dtype, np.inexact):
            check_integral(arr, name, f"the baseline for {label}")
        out.append(np.array(arr, dtype=target))
    return tuple(out)


def position(index, tokens: bool = False) -> str:
    """A readable position in a `(B, ...)` array (`example b, token t` for `(B, T)` ids).

    >>> position((1, 3), tokens=True), position((0, 2)), position((0, 1, 2))
    ('example 1, token 3', 'example 0, index 2', 'example 0, index (1, 2)')
    """
    index = tuple(int(i) for i in index)
    if len(index) == 1:
        return f"example {index[0]}"
    if len(index) == 2:
        return f"example {index[0]}, {'token' if tokens else 'index'} {index[1]}"
    return f"example {index[0]}, index {index[1:]}"


def check_integral(arr, name, label):
    """Refuse float values that an integer input would silently truncate (0.7 -> 0)."""
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.inexact):
        return
    bad = ~np.isfinite(arr) | (arr != np.round(np.where(np.isfinite(arr), arr, 0)))
    if bad.any():
        pos = tuple(int(k) for k in np.argwhere(bad)[0])
        value = arr[pos].item()
        raise ValueError(
            f"Received an invalid value for argument `{name}`: {label} must hold integer "
            f"values (the input is integer, e.g. token ids), but it has the non-integral "
            f"value {value!r} at {position(pos, arr.ndim == 2)}, which would be silently truncated"
            f"{f' to {int(value)}' if np.isfinite(value) else ''}. Pass integer ids (e.g. "
            f"the pad id 0). Received: {name} with {int(bad.sum())} non-integral value(s)"
        )


def check_ids_in_vocabulary(ids, layer, name="inputs", label="the token ids"):
    """Refuse token ids outside `[0, layer.input_dim)` of the token embedding `layer`.

    A negative id silently reads a row from the end of the embedding table,
    and an id past the vocabulary fails deep inside TensorFlow on CPU and
    reads zeros on GPU; both are refused up front with the offending value
    and its position.
    """
    n = getattr(layer, "input_dim", None)
    ids = np.asarray(ids)
    if n is None or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        return
    bad = (ids < 0) | (ids >= n)
    if not bad.any():
        return
    pos = tuple(int(k) for k in np.argwhere(bad)[0])
    value = int(ids[pos])
    why = (
        "a negative id would silently read a row from the end of the embedding table"
        if value < 0 else
        "an id past the vocabulary fails inside TensorFlow on CPU and reads zeros on GPU"
    )
    raise ValueError(
        f"Received an invalid value for argument `{name}`: the id {value} at "
        f"{position(pos, True)} of {label} is outside the vocabulary of the token embedding "
        f"{getattr(layer, 'name', layer)!r} (input_dim={n}, valid ids 0..{n - 1}): {why}. "
        "Check that the tokenizer (or the pad id) matches the model's vocabulary. "
        f"Received: {name} with {int(bad.sum())} id(s) out of range "
        f"(min {int(ids.min())}, max {int(ids.max())})"
    )


def token_id_positions(flat, layout, names=None) -> list:
    """Flat positions of the integer entries that hold token ids.

    Dict inputs: the `token_ids` entry (else the one integer entry that is
    not an auxiliary input such as `padding_mask`). Arrays and tuples: the
    one integer entry, or those whose model input is named like tokens.
    """
    ints = [i for i, a in enumerate(flat) if np.issubdtype(a.dtype, np.integer)]
    if layout.kind == "dict":
        if "token_ids" in layout.keys:
            return [i for i in ints if layout.keys[i] == "token_ids"]
        rest = [i for i in ints if layout.keys[i] not in AUXILIARY_KEYS]
        return rest if len(rest) == 1 else []
    if len(ints) <= 1:
        return ints
    named = [i for i in ints if names and i < len(names) and "token" in str(names[i]).lower()]
    return named


def check_token_inputs(model, flat, layout, name="inputs", names=None):
    """Check the token-id entries of `flat` against the model's token embedding.

    One shared check for every method that runs a token-id model (layer
    methods, occlusion and perturbation methods, attention x gradient,
    `explain`): the embedding is `instrument.find_token_embedding(model)`
    (cached per model); models without one are not checked.
    """
    where = token_id_positions(flat, layout, names)
    if not where or not hasattr(model, "layers"):
        return
    from kerastrace._utils import instrument

    try:
        layer = instrument.find_token_embedding(model)
    except Exception:  # noqa: BLE001 - a model that cannot be traced symbolically
        return
    if layer is None:
        return
    for i in where:
        check_ids_in_vocabulary(flat[i], layer, name, f"{layout.label(i, names)}")


# ----------------------------------------------------------- non-finite values
#: What to check when the model's output (the explained score) is NaN or inf.
SCORE_HINT = (
    "Check the model for numerical overflow (e.g. mixed_float16 logits beyond 65504: "
    "compute the last layer in float32 with dtype='float32'), for log, sqrt or division "
    "of values outside their domain, and check the inputs and baselines."
)
#: What to check when a gradient is NaN or inf.
GRADIENT_HINT = (
    "The model is not differentiable there (e.g. sqrt or log at 0, a division by zero "
    "in the backward pass) or its gradient overflows (mixed_float16). Move the input or "
    "baseline away from the kink, compute the model in float32, or use a method that "
    "needs no gradient (FeatureAblation, Occlusion)."
)


def nonfinite_score_error(where: str, value=None) -> ValueError:
    """The error for a NaN/inf target score at `where` (e.g. "example 2")."""
    got = "" if value is None else f" ({float(value)!r})"
    return ValueError(
        f"The model's output for the explained target is NaN or inf{got} at {where}, so "
        f"its attribution is undefined. {SCORE_HINT}"
    )


def nonfinite_gradient_error(label: str, where: str) -> ValueError:
    """The error for a NaN/inf gradient with respect to `label` at `where`."""
    return ValueError(
        f"The gradient of the explained target with respect to {label} is NaN or inf at "
        f"{where}, while the output is finite. {GRADIENT_HINT}"
    )


def check_finite_scores(scores, where=None):
    """Raise `nonfinite_score_error` for the first non-finite row of `scores` `(N,)`.

    `where(row) -> str` describes a row (default: `example row`).
    """
    scores = np.asarray(scores)
    ok = np.isfinite(scores)
    if ok.all():
        return
    row = int(np.argmin(ok))
    raise nonfinite_score_error(where(row) if where else f"example {row}", scores[row])


# ---------------------------------------------------------------- forward
def model_input_names(model):
    try:
        names = [getattr(t, "name", None) for t in model.inputs]
    except Exception:  # noqa: BLE001 - not a functional model
        return None
    # Keras' automatic names ("keras_tensor_3") say nothing to the user.
    return [None if str(n).startswith("keras_tensor") else n for n in names]


def make_forward(model):
    """`forward(flat_tensors, layout) -> outputs`, calling the model with `training=False`."""
    if isinstance(model, keras.layers.Layer):

        def forward(flat, layout):
            return model(layout.pack(list(flat)), training=False)

    elif callable(model):

        def forward(flat, layout):
            packed = layout.pack(list(flat))
            if layout.kind == "dict":
                return model(packed)
            return model(*flat)

    else:
        raise TypeError(
            "Received an invalid value for argument `model`, expected a Keras model or a "
            f"callable. Received: model of type {type(model).__name__}"
        )
    return forward


def _flat_outputs(outputs):
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


SPACES = ("logit", "probability", "log_probability")


def select_scores(outputs, target, target_fn, contrast=None, space="logit"):
    """Reduce model outputs to a float32 `(N,)` score per row.

    With `space="probability"` / `"log_probability"` the output is first
    turned into (log) probabilities over its last axis (classes, or a language
    model's vocabulary at every position). `contrast` holds a second index per
    row (-1: none) whose score is subtracted: "target rather than contrast".
    """
    if target_fn is not None:
        score = target_fn(outputs)
        score = tf.cast(tf.convert_to_tensor(score), F32)
        if score.shape.rank != 1:
            score = tf.reshape(score, [tf.shape(score)[0], -1])
            if score.shape[-1] != 1:
                raise ValueError(
                    "Received an invalid value for argument `target`: a callable target must "
                    f"return one score per example, shape (B,). Received shape {score.shape}"
                )
            score = score[:, 0]
        return score
    out = tf.cast(_flat_outputs(outputs)[0], F32)
    if space == "probability":
        out = tf.nn.softmax(out, axis=-1)
    elif space == "log_probability":
        out = tf.nn.log_softmax(out, axis=-1)
    out = tf.reshape(out, [tf.shape(out)[0], -1])
    score = tf.gather(out, target, axis=1, batch_dims=1)
    if contrast is not None:
        other = tf.gather(out, tf.maximum(contrast, 0), axis=1, batch_dims=1)
        score = score - tf.where(contrast >= 0, other, tf.zeros_like(other))
    return score


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A contrastive target: explain why the model gave `target` rather than `foil`.

    Every attribution method explains the score `s(target) - s(foil)`, where
    `s` is the model's output (`space="logit"`), its softmax over the last
    axis (`"probability"`) or its log-softmax (`"log_probability"`). With
    `foil=None` the method explains `s(target)` alone, so
    `Contrast(3, space="probability")` explains the probability of class 3.

    For a classifier `target` and `foil` are class indices; for a model with a
    sequence output `(B, T, V)` they index the flattened output
    (`position * V + token`), as plain integer targets do. Each may be one int
    or one int per example.

    Args:
        target: The explained output index (or one per example).
        foil: The alternative ("rather than") index, or None; in an array
            of one per example, -1 means no alternative for that example.
        space: `"logit"`, `"probability"` or `"log_probability"`.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import Contrast, InputXGradient
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])])
    >>> x = np.array([[1.0, 1.0]], "float32")
    >>> InputXGradient(model).attribute(x, target=Contrast(2, foil=1))  # logit 2 - logit 1
    array([[-2.,  2.]], dtype=float32)

    References:
        - [Yin & Neubig, 2022, Interpreting Language Models with Contrastive
          Explanations](https://arxiv.org/abs/2202.10419)
    """

    target: object
    foil: object = None
    space: str = "logit"

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(
                f"Received an invalid value for argument `space`, expected one of {list(SPACES)}. "
                f"Received: space={self.space!r}"
            )


class TargetSpec:
    """A normalized target: per-example indices (with an optional contrast) or a callable."""

    def __init__(self, indices, fn=None, contrast=None, space="logit"):
        self.indices = np.asarray(indices, np.int32)  # (B,)
        self.fn = fn
        self.contrast = (
            np.full(self.indices.shape, -1, np.int32) if contrast is None
            else np.asarray(contrast, np.int32)
        )
        self.space = space

    @property
    def key(self):
        """What a compiled function depends on (not the values): retrace only on change."""
        return ("fn", id(self.fn)) if self.fn is not None else ("index", self.space)

    def _with(self, idx_fn):
        return TargetSpec(idx_fn(self.indices), self.fn, idx_fn(self.contrast), self.space)

    def repeat(self, n):
        return self._with(lambda a: np.repeat(a, n))

    def tile(self, n):
        return self._with(lambda a: np.tile(a, n))

    def tile_rows(self, idx):
        return self._with(lambda a: a[idx])


def output_info(model_forward, specs, layout):
    """Trace `forward` symbolically (no execution) and return output shapes."""
    fn = tf_compat.function(lambda *xs: model_forward(tuple(xs), layout))
    outs = fn.get_concrete_function(*specs).structured_outputs
    return [tuple(o.shape) for o in _flat_outputs(outs)]


def normalize_target(target, batch: int, out_shapes) -> TargetSpec:
    if isinstance(target, Contrast):
        if target.target is None:
            raise v_invalid("target", "a Contrast with a target index", target)
        main = normalize_target(target.target, batch, out_shapes).indices
        foil = None
        if target.foil is not None:
            raw = np.asarray(target.foil)
            try:
                raw = np.broadcast_to(raw, (batch,))
            except ValueError:
                raise ValueError(
                    "Received an invalid value for argument `foil`, expected an int or one "
                    f"int per example ({batch}). Received: foil={target.foil!r}"
                ) from None
            none = raw == -1  # this example has no alternative
            try:
                checked = normalize_target(np.where(none, 0, raw), batch, out_shapes).indices
            except ValueError as err:
                raise ValueError(
                    str(err).replace("argument `target`", "argument `foil` of the `Contrast`")
                    .split(" Received:")[0] + f" Received: foil={target.foil!r}"
                ) from None
            foil = np.where(none, -1, checked)
        return TargetSpec(main, None, foil, target.space)
    if callable(target):
        return TargetSpec(np.zeros(batch, np.int32), target)
    if len(out_shapes) > 1:
        raise ValueError(
            f"Received an invalid value for argument `target`: the model has "
            f"{len(out_shapes)} outputs, so pass `target` as a callable "
            "`target(outputs) -> (B,)` that picks the score to explain. "
            f"Received: target={target!r}"
        )
    per = out_shapes[0][1:]
    n = int(np.prod([d for d in per])) if all(d is not None for d in per) else None
    if target is None:
        if n != 1:
            raise ValueError(
                "Received an invalid value for argument `target`: an explicit target is "
                f"required because the model output has {n if n is not None else 'several'} "
                f"elements per example (output shape {out_shapes[0]}). Pass an int, one "
                "int per example, or a callable. Received: target=None"
            )
        return TargetSpec(np.zeros(batch, np.int32))
    arr = np.asarray(target.numpy() if hasattr(target, "numpy") else target)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer)
        or (arr.ndim == 0 and isinstance(target, numbers.Integral))
    ):
        raise ValueError(
            "Received an invalid value for argument `target`, expected an int, one int per "
            "example, a `Contrast` or a callable. A float such as 1.7 is refused rather "
            f"than truncated. Received: target={target!r}"
        )
    if arr.ndim == 0:
        arr = np.full(batch, int(arr))
    elif arr.shape != (batch,):
        raise ValueError(
            "Received an invalid value for argument `target`: per-example targets must have "
            f"shape ({batch},). Received: target with shape {arr.shape}"
        )
    if n is not None and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            "Received an invalid value for argument `target`: out of range for a model "
            f"output with {n} elements per example (valid: 0..{n - 1}). "
            f"Received: target={target!r}"
        )
    return TargetSpec(arr.astype(np.int32))


def call_compiled(fn, tensors):
    """Call a compiled `tf.function` with an input signature on flat tensors."""
    return tf_compat.call_compiled(fn, tensors)


@functools.lru_cache(maxsize=256)
def constant(value, dtype):
    """A cached eager constant (small arguments that repeat from call to call)."""
    return tf.constant(value, dtype)


def spec_for(arr):
    return tf.TensorSpec((None, *arr.shape[1:]), tf.as_dtype(arr.dtype))


# ----------------------------------------------------------------- engine
#: What the engine multiplies each segment's path-summed gradient by (per input).
MODE_GRAD, MODE_X, MODE_X_MINUS_BASE = 0, 1, 2


@dataclasses.dataclass
class Plan:
    """One gradient method's work, in the engine's terms (see the module docstring).

    Every example `b` of the batch is one segment with `M` path points
    `bases[b] + alphas[., m] * (xs[b] - bases[b])`; its attribution is
    `post(sum_m weights[., m] * grad)` where `post` multiplies by 1, by the
    (noisy) input or by `input - base`, per input (`modes`), and optionally
    takes the absolute value. `NoiseTunnel` runs the same plan on noisy copies.
    A plan with `bases=None` is a plain gradient: one point per example, at
    the (noisy) input itself.

    Attributes:
        xs: tuple of float32 arrays `(B, ...)` (the differentiable inputs or,
            for layer methods, the layer activations).
        bases: tuple of float32 arrays `(B, ...)`, or None for a plain gradient.
        target: `TargetSpec` with `(B,)` indices.
        alphas, weights: float32 `(1, M)` (shared by all examples) or `(B, M)`
            arrays or tensors; None for a plain gradient.
        modes: one of `MODE_GRAD`, `MODE_X`, `MODE_X_MINUS_BASE` per input.
        use_abs: take `|attribution|` (Saliency).
        internal_batch_size: rows per model call; None: chosen from the
            memory budget `AUTO_BATCH_BYTES` (all rows in one call when they fit).
        ctx: arrays `(B, ...)` passed to the forward unchanged (the model
            inputs of layer methods; pass-through entries of gradient methods).
        layout: the `Layout` the forward uses to call the model.
        where: optional `where(b) -> str` naming segment `b` in error
            messages (default `"example b"`).
    """

    xs: tuple
    bases: tuple | None
    target: TargetSpec
    alphas: object
    weights: object
    modes: tuple
    use_abs: bool = False
    internal_batch_size: int | None = None
    ctx: tuple = ()
    layout: Layout | None = None
    where: object = None


def gradient_plan(
    xs, target, modes, use_abs=False, internal_batch_size=None, ctx=(), layout=None
):
    """The plan of a plain gradient (one point per example, at the input itself)."""
    return Plan(
        xs, None, target, None, None, tuple(modes), use_abs, internal_batch_size, ctx, layout
    )


def _noise(x, sd, seed, j, first, count):
    """`sd * N(0, 1)` noise for segments `first .. first + count - 1` of `x`: `(count, ...)`.

    Segment `g` is sample `g // B` of example `g % B` (sample-major), and its
    element `d` is number `g * D + d` of one counter-based Philox stream keyed
    by `(seed, j)`; that is exactly what
    `tf.random.stateless_normal([n_samples, B, ...], seed=(seed, j))` holds at
    `(g // B, g % B, ...)`. So a sample's noise depends on the seed only, not
    on how the samples are split into blocks or chunks, and only the
    requested rows are generated.
    """
    per_row = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.int64)
    start = tf.cast(first, tf.int64) * per_row
    seeds = tf.stack([seed, tf.constant(j, tf.int64)])
    key, counter, alg = tf_compat.philox_key_counter(seeds)
    # Philox makes 4 numbers per counter step: skip whole steps, then the rest.
    step = tf.stack([start // 4, tf.constant(0, tf.int64)])
    counter = tf.bitcast(tf.bitcast(counter, tf.int64) + step, tf.uint64)
    skip = start % 4
    flat = tf_compat.philox_normal(
        tf.reshape(tf.cast(count, tf.int64) * per_row + skip, [1]), key, counter, alg
    )[skip:]
    return tf.reshape(flat * sd, tf.concat([[count], tf.shape(x)[1:]], 0))


def _sum_samples(attr, samples, like):
    """Sum `(S * B, ...)` over the samples to `like`'s shape `(B, ...)`.

    As a `(1, S) x (S, B * D)` product, which is several times faster on CPU
    than a reduction over the leading axis.
    """
    flat = tf.reshape(attr, [samples, -1])
    return tf.reshape(tf.matmul(tf.ones([1, samples], F32), flat), tf.shape(like))


def _segment_sum(rows, owner, n):
    """Sum `(R, ...)` rows into `n` segments by `owner`, as a one-hot product."""
    flat = tf.reshape(rows, [tf.shape(rows)[0], -1])
    summed = tf.matmul(tf.one_hot(owner, n, dtype=F32), flat, transpose_a=True)
    return tf.reshape(summed, tf.concat([[n], tf.shape(rows)[1:]], 0))


def _tile(x, samples):
    """`(B, ...)` -> `(S * B, ...)`: `samples` copies, sample-major."""
    return tf.tile(x, _ones_like_rank(x, [samples]))


def _path_points(x, base, alphas):
    """Points `base + a (x - base)` of every segment, `(G * M, ...)`, from `(G, ...)` inputs.

    As one batched `(G, M, 2) x (G, 2, D)` product `a x + (1 - a) base`, which
    is exact at `a = 0` and `a = 1` and much faster on CPU than broadcasting
    the three element-wise operations over five axes.
    """
    g_count, m_count = tf.shape(alphas)[0], tf.shape(alphas)[1]
    pair = tf.stack([tf.reshape(x, [g_count, -1]), tf.reshape(base, [g_count, -1])], axis=1)
    coef = tf.stack([alphas, 1.0 - alphas], axis=-1)
    points = tf.matmul(coef, pair)  # (G, M, D)
    return tf.reshape(points, tf.concat([[g_count * m_count], tf.shape(x)[1:]], 0))


def _sum_points(grads, g_count, m_count):
    """`(G * M, ...)` -> `(G, ...)`: sum over each segment's points, as a product."""
    flat = tf.reshape(grads, [g_count, m_count, -1])
    summed = tf.matmul(tf.ones([g_count, 1, m_count], F32), flat)
    return tf.reshape(summed, tf.concat([[g_count], tf.shape(grads)[1:]], 0))


def _ones_like_rank(t, lead):
    """Shape `[*lead, 1, 1, ...]` that broadcasts against `t`'s trailing axes."""
    return tf.concat([lead, tf.ones([tf.rank(t) - 1], tf.int32)], 0)


class GradientEngine:
    """Compiled, chunked path-gradient engine (see module docstring).

    Every model call also checks, with cheap reductions inside the compiled
    function, that each row's target score and gradients are finite; `run`
    raises a `ValueError` that names the first bad row's example (and path
    step or noise sample) instead of returning NaN or a finite-looking result.

    Args:
        forward: `forward(diff_inputs, context_inputs) -> outputs`; the
            gradients are taken with respect to `diff_inputs` (float32).
        names: optional labels of the differentiable inputs for errors.
    """

    def __init__(self, forward, names=None):
        self.forward = forward
        self.names = names
        self.trace_count = 0
        #: Model calls (chunks) of the last `run`: 1 when every row went in one call.
        self.last_chunks = 0
        self._fns = {}
        self._out_elems = {}  # key -> elements of one row's model outputs (set when traced)

    def label(self, j, n_x, layout):
        """Readable label of differentiable input `j` for error messages."""
        if layout is not None and len(layout.diff) == n_x:
            return layout.label(layout.diff[j], self.names)
        return input_label(j, n_x, self.names)

    def _get(self, xs, ctx, target, path, layout):
        key = (
            tuple((a.shape[1:], a.dtype.str) for a in xs),
            tuple((a.shape[1:], a.dtype.str) for a in ctx),
            target.key,
            path,
            layout,
        )
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._build(
                xs, ctx, target.fn, target.space, path, layout, key
            )
        return fn, key

    def _build(self, xs, ctx, target_fn, space, path, layout, key):
        n_x, n_c = len(xs), len(ctx)
        engine = self

        def record_outputs(outputs):
            elems = 0
            for o in _flat_outputs(outputs):
                shape = o.shape[1:]
                if not shape.is_fully_defined():
                    return
                elems += int(np.prod(shape.as_list(), dtype=np.int64))
            engine._out_elems[key] = elems

        def status(score, grads, rows, valid=None):
            """`row * _CODES + code` of the first bad row (int64; `_NO_BAD_ROW`: none).

            Code 1: the row's score is NaN/inf; `2 + j`: its gradient with
            respect to input `j` is. Cheap reductions, no `check_numerics`:
            the caller raises a clear error naming the example.
            """
            code = tf.zeros(tf.shape(score), tf.int32)
            for j in reversed(range(n_x)):
                flat_gr = tf.reshape(grads[j], [tf.shape(grads[j])[0], -1])
                ok = tf.reduce_all(tf.math.is_finite(flat_gr), axis=1)
                code = tf.where(ok, code, 2 + j)
            code = tf.where(tf.math.is_finite(score), code, 1)
            bad = code > 0
            if valid is not None:
                bad = tf.logical_and(bad, valid)
            keys = tf.cast(rows, tf.int64) * _CODES + tf.cast(code, tf.int64)
            return tf.reduce_min(tf.where(bad, keys, tf.constant(_NO_BAD_ROW, tf.int64)))

        def gradients(points, context, target, contrast, w):
            """Input gradients of the target score of each row (times `w` if given), and the scores."""
            with tf.GradientTape() as tape:
                tape.watch(points)
                outputs = engine.forward(tuple(points), tuple(context), layout)
                score = select_scores(outputs, target, target_fn, contrast, space)
            record_outputs(outputs)
            # Path weights enter as the output gradient: d(sum_r w_r score_r)/d point_r.
            grads = tape.gradient(score, points, output_gradients=w)
            out = []
            for j, gr in enumerate(grads):
                if gr is None:
                    raise ValueError(
                        f"The model output does not depend on "
                        f"{engine.label(j, n_x, layout)}: its gradient is None "
                        "(no path from it to the target). Remove it from the explained "
                        "inputs, or check that the model uses it."
                    )
                if isinstance(gr, tf.IndexedSlices):
                    gr = tf.convert_to_tensor(gr)
                out.append(tf.cast(gr, F32))
            return out, score

        def body(*flat):
            engine.trace_count += 1
            flat = list(flat)
            xs_t = [flat.pop(0) for _ in range(n_x)]
            bases_t = [flat.pop(0) for _ in range(n_x)] if path else None
            ctx_t = [flat.pop(0) for _ in range(n_c)]
            alphas, weights = (flat.pop(0), flat.pop(0)) if path else (None, None)
            target, contrast, chunk, samples, sample0, sds, seed, modes, use_abs, squares = flat
            batch = tf.shape(target)[0]
            g_count = samples * batch  # segments, sample-major: g = s * B + b
            seg0 = sample0 * batch  # global index of this call's first segment
            m_count = tf.shape(alphas)[1] if path else 1
            rows_total = g_count * m_count
            if path:  # (1 | B, M) -> (B, M)
                alphas = tf.broadcast_to(alphas, [batch, m_count])
                weights = tf.broadcast_to(weights, [batch, m_count])

            def post(j, acc, xn, bg):
                """A segment's attribution from its (path-summed, weighted) gradient."""
                if path:
                    branches = [lambda: acc, lambda: xn * acc, lambda: (xn - bg) * acc]
                else:
                    branches = [lambda: acc, lambda: xn * acc]
                attr = tf.switch_case(tf.minimum(modes[j], len(branches) - 1), branches)
                return tf.cond(use_abs, lambda: tf.abs(attr), lambda: attr)

            def repeat_samples(t):
                """`(B, ...)` -> `(S * B, ...)`, without a copy when S == 1."""
                return tf.cond(samples > 1, lambda: _tile(t, samples), lambda: t)

            def segments(j, x):
                """The (noisy) input of every segment, `(G, ...)`."""
                flat_shape = tf.concat([[g_count], tf.shape(x)[1:]], 0)

                def noisy():
                    noise = _noise(x, sds[j], seed, j, seg0, g_count)
                    lead = tf.concat([[samples], tf.shape(x)], 0)
                    return tf.reshape(tf.expand_dims(x, 0) + tf.reshape(noise, lead), flat_shape)

                return tf.cond(sds[j] > 0, noisy, lambda: repeat_samples(x))

            def finish(attrs):
                """Sums (and sums of squares) over the samples: `(B, ...)` per input."""
                out_sums, out_sq = [], []
                for j, attr in enumerate(attrs):
                    out_sums.append(tf.cond(
                        samples > 1,
                        lambda attr=attr, j=j: _sum_samples(attr, samples, xs_t[j]),
                        lambda attr=attr: attr,
                    ))
                    out_sq.append(tf.cond(
                        squares,
                        lambda attr=attr, j=j: _sum_samples(tf.square(attr), samples, xs_t[j]),
                        lambda j=j: tf.zeros_like(xs_t[j]),
                    ))
                return out_sums + out_sq

            def example_of(rows):
                return (rows // m_count) % batch

            def one_call():
                # All rows in one model call: no loop, no padding.
                noisy = [segments(j, x) for j, x in enumerate(xs_t)]
                b = example_of(tf.range(rows_total))
                if path:
                    a = tf.tile(tf.reshape(alphas, [batch, m_count]), [samples, 1])  # (G, M)
                    bases_g = [repeat_samples(bs) for bs in bases_t]
                    points = [_path_points(xn, bg, a) for xn, bg in zip(noisy, bases_g)]
                    w = tf.tile(tf.reshape(weights, [-1]), [samples])
                else:
                    bases_g = noisy
                    points, w = noisy, None
                grads, score = gradients(
                    points, [tf.gather(c, b) for c in ctx_t], tf.gather(target, b),
                    tf.gather(contrast, b), w,
                )
                bad = status(score, grads, tf.range(rows_total))
                if path:
                    grads = [_sum_points(gr, g_count, m_count) for gr in grads]
                return finish([
                    post(j, gr, xn, bg) for j, (gr, xn, bg) in enumerate(zip(grads, noisy, bases_g))
                ]) + [bad]

            def gradient_chunks():
                # One row per segment: each chunk's attributions are final, so they are
                # summed per example right away (a padded row goes to an extra segment
                # that is dropped) and the noise is drawn per chunk: memory grows with
                # the chunk size, not with the number of samples.
                n_chunks = (rows_total + chunk - 1) // chunk

                def step(i, bad, *acc):
                    first = i * chunk
                    rows = first + tf.range(chunk)
                    valid = rows < rows_total
                    b = tf.minimum(rows, rows_total - 1) % batch
                    owner = tf.where(valid, b, batch)
                    points = []
                    for j, x in enumerate(xs_t):
                        xg = tf.gather(x, b)
                        points.append(tf.cond(
                            sds[j] > 0,
                            lambda xg=xg, j=j, x=x: xg + _noise(x, sds[j], seed, j, seg0 + first, chunk),
                            lambda xg=xg: xg,
                        ))
                    grads, score = gradients(
                        points, [tf.gather(c, b) for c in ctx_t], tf.gather(target, b),
                        tf.gather(contrast, b), None,
                    )
                    bad = tf.minimum(bad, status(score, grads, rows, valid))
                    new_sums, new_sq = [], []
                    for j, (gr, pt) in enumerate(zip(grads, points)):
                        attr = post(j, gr, pt, None)
                        new_sums.append(acc[j] + _segment_sum(attr, owner, batch + 1))
                        new_sq.append(tf.cond(
                            squares,
                            lambda attr=attr, q=acc[n_x + j]: q + _segment_sum(
                                tf.square(attr), owner, batch + 1),
                            lambda q=acc[n_x + j]: q,
                        ))
                    return (i + 1, bad, *new_sums, *new_sq)

                zeros = [
                    tf.zeros(tf.concat([[batch + 1], tf.shape(x)[1:]], 0), F32) for x in xs_t
                ]
                out = tf.while_loop(
                    lambda i, *_: i < n_chunks,
                    step,
                    (tf.constant(0), tf.constant(_NO_BAD_ROW, tf.int64), *zeros, *zeros),
                    parallel_iterations=PARALLEL_CHUNKS,
                )
                return [acc[:-1] for acc in out[2:]] + [out[1]]

            def path_chunks():
                # Fixed-size chunks of path points (the last one padded) in a while loop:
                # the points exist for one chunk at a time; the weighted gradients are
                # added up per segment.
                noisy = [segments(j, x) for j, x in enumerate(xs_t)]
                bases_g = [repeat_samples(bs) for bs in bases_t]
                flat_a = tf.reshape(alphas, [-1])
                flat_w = tf.reshape(weights, [-1])
                n_chunks = (rows_total + chunk - 1) // chunk

                def step(i, bad, *acc):
                    rows = i * chunk + tf.range(chunk)
                    valid = rows < rows_total
                    rows = tf.minimum(rows, rows_total - 1)
                    g = rows // m_count
                    b = g % batch
                    p = b * m_count + rows % m_count
                    a = tf.gather(flat_a, p)
                    points = []
                    for xn, bg in zip(noisy, bases_g):
                        xg, bgg = tf.gather(xn, g), tf.gather(bg, g)
                        points.append(bgg + tf.reshape(a, _ones_like_rank(xg, [-1])) * (xg - bgg))
                    w = tf.gather(flat_w, p) * tf.cast(valid, F32)
                    grads, score = gradients(
                        points, [tf.gather(c, b) for c in ctx_t], tf.gather(target, b),
                        tf.gather(contrast, b), w,
                    )
                    bad = tf.minimum(bad, status(score, grads, rows, valid))
                    idx = tf.expand_dims(g, 1)
                    return (
                        i + 1, bad,
                        *(tf.tensor_scatter_nd_add(s, idx, gr) for s, gr in zip(acc, grads)),
                    )

                out = tf.while_loop(
                    lambda i, *_: i < n_chunks,
                    step,
                    (
                        tf.constant(0), tf.constant(_NO_BAD_ROW, tf.int64),
                        *(tf.zeros_like(xn) for xn in noisy),
                    ),
                    parallel_iterations=PARALLEL_CHUNKS,
                )
                return finish([
                    post(j, acc, xn, bg)
                    for j, (acc, xn, bg) in enumerate(zip(out[2:], noisy, bases_g))
                ]) + [out[1]]

            chunks = path_chunks if path else gradient_chunks
            return tuple(tf.nest.flatten(tf.cond(rows_total <= chunk, one_call, chunks)))

        signature = [spec_for(a) for a in xs]
        if path:
            signature += [spec_for(a) for a in xs]
        signature += [spec_for(a) for a in ctx]
        if path:
            signature += [tf.TensorSpec((None, None), F32)] * 2  # alphas, weights (1|B, M)
        signature += [
            tf.TensorSpec((None,), tf.int32),  # target (B,)
            tf.TensorSpec((None,), tf.int32),  # contrast (B,), -1: none
            tf.TensorSpec((), tf.int32),  # chunk: rows per model call
            tf.TensorSpec((), tf.int32),  # samples per example S
            tf.TensorSpec((), tf.int32),  # index of the first sample
            tf.TensorSpec((n_x,), F32),  # noise stdev per input
            tf.TensorSpec((), tf.int64),  # seed
            tf.TensorSpec((n_x,), tf.int32),  # post mode per input
            tf.TensorSpec((), tf.bool),  # abs
            tf.TensorSpec((), tf.bool),  # also return the sums of squares
        ]
        return tf_compat.function(body, input_signature=signature)

    def run(self, plan: Plan, noise=None, squares=False, eager=False):
        """Run `plan`; return the attributions (a tuple, one per input).

        Args:
            plan: The method's `Plan`.
            noise: None, or `(stdevs, seed, sample0, n_samples)`: run the plan
                on `n_samples` noisy copies of every example (samples
                `sample0...` of the seeded noise) and return the sums over
                the samples.
            squares: Also return the sums of the squared attributions:
                `(sums, squares)`.
            eager: Run the same body eagerly (for testing).
        """
        xs, ctx = plan.xs, plan.ctx
        path = plan.bases is not None
        if noise is None:
            sds, seed, sample0, samples = (0.0,) * len(xs), 0, 0, 1
        else:
            sds, seed, sample0, samples = noise
        rows = samples * xs[0].shape[0] * (int(plan.alphas.shape[1]) if path else 1)
        if rows > MAX_ROWS:
            raise ValueError(
                f"Received too much work: {rows} model evaluations (examples x path points "
                f"x samples) in one call, more than {MAX_ROWS}. Split the batch, or lower "
                "`n_steps` / `nt_samples` / `n_samples` (tens to hundreds are typical)."
            )
        fn, key = self._get(xs, ctx, plan.target, path, plan.layout)
        chunk = plan.internal_batch_size
        if chunk is None:
            if not eager:
                tf_compat.concrete(fn)  # traced once: records the size of the model outputs
            per_row = sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in (*xs, *ctx))
            chunk = auto_batch_size(per_row + self._out_elems.get(key, 0))
        chunk = max(1, min(int(chunk), rows))
        self.last_chunks = -(-rows // chunk)
        args = [tf.constant(x) for x in xs]
        if path:
            args += [tf.constant(b) for b in plan.bases]
        args += [tf.constant(c) for c in ctx]
        if path:
            args += [tf.convert_to_tensor(plan.alphas), tf.convert_to_tensor(plan.weights)]
        args += [
            tf.constant(plan.target.indices),
            tf.constant(plan.target.contrast),
            constant(chunk, tf.int32),
            constant(int(samples), tf.int32),
            constant(int(sample0), tf.int32),
            constant(tuple(float(s) for s in sds), F32),
            constant(int(seed), tf.int64),
            constant(tuple(int(m) for m in plan.modes), tf.int32),
            constant(bool(plan.use_abs), tf.bool),
            constant(bool(squares), tf.bool),
        ]
        out = fn.python_function(*args) if eager else call_compiled(fn, args)
        out = tf.nest.flatten(out)
        n = len(xs)
        bad = int(out[-1].numpy())
        if bad != _NO_BAD_ROW:
            self._raise_bad_row(plan, bad, sample0 if noise is not None else None)
        sums = tuple(o.numpy() for o in out[:n])
        sq = tuple(o.numpy() for o in out[n : 2 * n]) if squares else ()
        for j, a in enumerate(sums + sq):
            if not np.all(np.isfinite(a)):
                b = int(np.argwhere(~np.isfinite(a))[0][0])
                raise ValueError(
                    f"The attributions of {self.label(j % n, n, plan.layout)} overflow "
                    f"float32 at {plan.where(b) if plan.where else f'example {b}'} (the "
                    "model's outputs and gradients are finite, their products or sums are "
                    "not). Scale the inputs, baselines or noise down."
                )
        return (sums, sq) if squares else sums

    def _raise_bad_row(self, plan, bad, sample0):
        """Raise the error for the first row whose score or gradient is NaN/inf."""
        row, code = divmod(bad, _CODES)
        batch = plan.xs[0].shape[0]
        m_count = int(plan.alphas.shape[1]) if plan.bases is not None else 1
        g, m = divmod(row, m_count)
        sample, b = divmod(g, batch)
        where = plan.where(b) if plan.where else f"example {b}"
        if plan.bases is not None:
            alphas = np.asarray(plan.alphas)
            a = float(alphas[b if alphas.shape[0] > 1 else 0, m])
            if m_count > 1:
                where += f", path step {m} of {m_count} (alpha={a:.4g})"
            else:
                where += f", path point alpha={a:.4g}"
        if sample0 is not None:
            where += f", noise sample {sample0 + sample}"
        if code == 1:
            raise nonfinite_score_error(where)
        n_x = len(plan.xs)
        raise nonfinite_gradient_error(self.label(code - 2, n_x, plan.layout), where)


class ForwardEngine:
    """Compiled, chunked forward pass returning the target score per row.

    `forward(flat_inputs, layout) -> outputs`. The chunk size is a tensor
    argument, so new chunk sizes, batch sizes or values do not retrace.
    """

    def __init__(self, forward):
        self.forward = forward
        self.trace_count = 0
        self._fns = {}

    def _get(self, xs, target_spec, layout):
        key = (tuple((a.shape[1:], a.dtype.str) for a in xs), target_spec.key, layout)
        fn = self._fns.get(key)
        if fn is not None:
            return fn
        engine = self
        target_fn, space = target_spec.fn, target_spec.space

        def body(xs_t, target, contrast, chunk):
            engine.trace_count += 1
            n = tf.shape(target)[0]
            n_chunks = (n + chunk - 1) // chunk

            def step(i, ta):
                rows = tf.minimum(i * chunk + tf.range(chunk), n - 1)
                outputs = engine.forward(tuple(tf.gather(x, rows) for x in xs_t), layout)
                score = select_scores(
                    outputs, tf.gather(target, rows), target_fn, tf.gather(contrast, rows), space
                )
                return i + 1, ta.write(i, score)

            ta = tf.TensorArray(F32, size=n_chunks, element_shape=(None,), infer_shape=False)
            _, ta = tf.while_loop(lambda i, _: i < n_chunks, step, (tf.constant(0), ta))
            return ta.concat()[:n]

        signature = (
            tuple(spec_for(a) for a in xs),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.int32),
        )
        fn = tf_compat.function(body, input_signature=signature)
        self._fns[key] = fn
        return fn

    def scores(self, xs, target: TargetSpec, chunk=None, layout=None, where=None):
        """Target score `(N,)` float32 of every row of the flat inputs `xs`.

        Raises a `ValueError` naming the row (`where(row) -> str`, default
        `"example row"`) when a score is NaN or inf.
        """
        xs = tuple(np.asarray(x) for x in xs)
        n = xs[0].shape[0]
        if layout is None:
            layout = Layout("tuple" if len(xs) > 1 else "array", tuple(range(len(xs))),
                            tuple(range(len(xs))))
        chunk = int(chunk or max(1, min(n, 256)))
        fn = self._get(xs, target, layout)
        args = [
            *(tf.constant(x) for x in xs),
            tf.constant(np.asarray(target.indices, np.int32)),
            tf.constant(np.asarray(target.contrast, np.int32)),
            constant(max(1, min(chunk, n)), tf.int32),
        ]
        out = tf.nest.flatten(call_compiled(fn, args))[0].numpy()
        check_finite_scores(out, where)
        return out
