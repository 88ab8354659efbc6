"""Result objects of the generation tools: plain data with JSON, HTML, plots, TensorBoard."""

from __future__ import annotations

import dataclasses
import html
import json

import numpy as np

from kerastrace._utils import validation as v


def _floats(a):
    return [float(x) for x in np.asarray(a).ravel()]


def _escape(s) -> str:
    return html.escape(str(s), quote=True)


@dataclasses.dataclass
class GenerationTrace:
    """Where every generated token came from.

    Attributes:
        method: The attribution method.
        prompt_ids: Prompt token ids, one list per example.
        generated_ids: Generated (or forced) token ids, one list per example.
        sources: Per example, a `(K, P + K)` float32 array: row `k` scores
            every token of the sequence for generated token `k`; positions at
            and after the token itself are exactly 0.
        steps: Per example, step scores of every generated token:
            `probability`, `log_probability`, `entropy` (nats) of the
            next-token distribution, `rank` of the token (0 = the most likely),
            `top_tokens` / `top_probabilities` (the most likely alternatives).
        forced: True for a forced continuation (teacher forcing).
        score: What was attributed: `"logit"`, `"probability"` or
            `"log_probability"`.
        contrast: Per example and step, the alternative token (or None).
        token_strings: Per example, the token strings of prompt + generation.
        prompt_texts: The prompt strings, when given as text.
        sampling: `"greedy"`, `"sample"` or `"forced"`.
        details: Method-specific extras (e.g. `attention`: per example
            `(K, layers, heads, T)` attention rows).
    """

    method: str
    prompt_ids: list
    generated_ids: list
    sources: list
    steps: list
    forced: bool = False
    score: str = "logit"
    contrast: list | None = None
    token_strings: list | None = None
    prompt_texts: list | None = None
    sampling: str = "greedy"
    details: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def _tokens(self, i):
        if self.token_strings is not None:
            return self.token_strings[i]
        return [str(t) for t in self.prompt_ids[i] + self.generated_ids[i]]

    def top_sources(self, k: int = 3, example: int = 0) -> list:
        """For each generated token, its `k` strongest sources `(position, token, score)`."""
        k = v.check_positive_int("k", k)
        toks = self._tokens(example)
        out = []
        for row in self.sources[example]:
            order = np.argsort(-np.abs(row), kind="stable")[:k]
            out.append([(int(j), toks[j], float(row[j])) for j in order if row[j] != 0])
        return out

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "score": self.score,
            "sampling": self.sampling,
            "examples": [
                {
                    "prompt": None if self.prompt_texts is None else self.prompt_texts[i],
                    "prompt_ids": list(self.prompt_ids[i]),
                    "generated_ids": list(self.generated_ids[i]),
                    "tokens": self._tokens(i),
                    "sources": [_floats(r) for r in self.sources[i]],
                    "steps": {
                        key: np.asarray(val).tolist() for key, val in self.steps[i].items()
                    },
                    "contrast": None if self.contrast is None else self.contrast[i],
                }
                for i in range(len(self))
            ],
        }

    def to_json(self, path=None) -> str:
        """JSON text (also written to `path` when given)."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        if path is not None:
            _write(path, text)
        return text

    def to_html(self, path=None, example: int | None = None) -> str:
        """One self-contained HTML page: generated text coloured by step probability.

        Hover or click a generated token to colour the tokens it came from
        (red: supported it, blue: spoke against it; a tiny inline script);
        a table lists every step's strongest sources, and each token's
        tooltip gives its probability, rank and entropy. No network needed.
        In a notebook the trace displays itself (`_repr_html_`, the same
        view without the script).

        Args:
            path: When given, the page is also written there
                (`kerastrace.io.atomic_write`).
            example: One example's index, or None for all.

        Returns:
            The page (a `str`).
        """
        from kerastrace.visualization import generation_page, write_html

        page = generation_page(self, example)
        if path is not None:
            write_html(path, page)
        return str(page)

    def _repr_html_(self) -> str:
        from kerastrace.visualization import generation_html

        return str(generation_html(self))

    def plot(self, example: int = 0, ax=None):
        """The generated-token x token matrix of one example; returns `(fig, ax)`."""
        from kerastrace._utils.lazy import pyplot

        plt = pyplot()
        src = np.asarray(self.sources[example])
        toks = [_mathsafe(t) for t in self._tokens(example)]
        gen = toks[len(self.prompt_ids[example]):]
        if ax is None:
            w = max(4.0, 0.35 * len(toks) + 2)
            h = max(2.5, 0.35 * len(gen) + 1.5)
            fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
        else:
            fig = ax.figure
        vmax = float(np.abs(src).max()) or 1.0
        im = ax.imshow(src, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(toks)), toks, rotation=90, fontsize=8)
        ax.set_yticks(range(len(gen)), gen, fontsize=8)
        ax.set_xlabel("source token (prompt, then generated)")
        ax.set_ylabel("generated token")
        ax.set_title(f"{self.method} ({self.score})", fontsize=10)
        fig.colorbar(im, ax=ax, label="contribution")
        return fig, ax

    def to_tensorboard(self, logdir, step: int = 0, name: str = "generation", id_to_token=None):
        """Write a text summary (tokens, step scores, top sources) and the matrix image.

        Also writes the trace for the generation view of the kerastrace
        TensorBoard dashboard (`kerastrace.tensorboard.write_generation_data`,
        tag `"kerastrace/<name>"`): tokens coloured by step score, click one
        to see its sources. `id_to_token` (a callable id -> string, e.g. a
        tokenizer's `id_to_token`) names each step's most likely alternatives.
        """
        import tensorflow as tf

        from kerastrace.tensorboard import get_writer, write_generation_data

        writer = get_writer(logdir)
        with writer.as_default(step=step):
            for i in range(len(self)):
                toks = self._tokens(i)
                p_len = len(self.prompt_ids[i])
                lines = ["| step | token | p | rank | top sources |", "|---|---|---|---|---|"]
                for k, srcs in enumerate(self.top_sources(3, i)):
                    s = ", ".join(f"{_md(t)} ({sc:+.3f})" for _, t, sc in srcs)
                    lines.append(
                        f"| {k} | {_md(toks[p_len + k])} | "
                        f"{float(self.steps[i]['probability'][k]):.3f} | "
                        f"{int(self.steps[i]['rank'][k])} | {s} |"
                    )
                tf.summary.text(f"{name}/example_{i}", "\n".join(lines))
                fig, _ = self.plot(i)
                tf.summary.image(f"{name}/example_{i}/sources", _figure_image(fig))
        write_generation_data(writer, self, step=step, name=name, id_to_token=id_to_token)
        writer.flush()


@dataclasses.dataclass
class LogitLens:
    """How the next-token prediction forms layer by layer.

    Attributes:
        layers: Names of the read points: `"embeddings"` (the input of the
            first block) then every block's path.
        tokens: The input token strings.
        top_tokens: `(L + 1, T, k)` most likely next tokens per layer and position.
        top_probabilities: `(L + 1, T, k)` their probabilities.
        final_tokens: `(T,)` the model's own most likely next token per position.
        final_rank: `(L + 1, T)` rank of `final_tokens` at every layer (0 = top).
        final_probability: `(L + 1, T)` its probability at every layer.
        last_distribution: `(L + 1, V)` the full next-token distribution of the
            last position at every layer.
    """

    layers: list
    tokens: list
    top_tokens: np.ndarray
    top_probabilities: np.ndarray
    final_tokens: np.ndarray
    final_rank: np.ndarray
    final_probability: np.ndarray
    last_distribution: np.ndarray
    token_strings: object = None  # callable id -> string

    def _str(self, t):
        return self.token_strings(int(t)) if self.token_strings else str(int(t))

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "tokens": list(self.tokens),
            "final_tokens": [self._str(t) for t in self.final_tokens],
            "final_rank": self.final_rank.tolist(),
            "final_probability": self.final_probability.tolist(),
            "top_tokens": [[[self._str(t) for t in pos] for pos in layer]
                           for layer in self.top_tokens],
            "top_probabilities": self.top_probabilities.tolist(),
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        if path is not None:
            _write(path, text)
        return text

    def plot(self, ax=None):
        """Probability of the final prediction at every layer and position; `(fig, ax)`."""
        from kerastrace._utils.lazy import pyplot

        plt = pyplot()
        if ax is None:
            fig, ax = plt.subplots(
                figsize=(max(4.0, 0.5 * len(self.tokens) + 2), max(3.0, 0.4 * len(self.layers) + 1.5)),
                layout="constrained",
            )
        else:
            fig = ax.figure
        im = ax.imshow(self.final_probability, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for li in range(self.top_tokens.shape[0]):
            for t in range(self.top_tokens.shape[1]):
                ax.text(t, li, _mathsafe(self._str(self.top_tokens[li, t, 0])), ha="center",
                        va="center", fontsize=7,
                        color="w" if self.final_probability[li, t] < 0.5 else "k")
        ax.set_xticks(range(len(self.tokens)), [_mathsafe(t) for t in self.tokens],
                      rotation=90, fontsize=8)
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=7)
        ax.set_xlabel("input position (cells: the top next token at that layer)")
        ax.set_title("logit lens: probability of the final prediction", fontsize=10)
        fig.colorbar(im, ax=ax, label="p(final token)")
        return fig, ax


@dataclasses.dataclass
class HeadImportance:
    """Per-head importance (Michel et al., 2019) and what masking heads costs.

    Attributes:
        layers: Attention layer paths, in call order.
        importance: `(L, H)` mean |d loss / d gate| over the data (NaN where a
            layer has fewer heads).
        normalized: `importance` L2-normalized per layer (as in the paper).
        loss: The loss on the data with every head on.
    """

    layers: list
    importance: np.ndarray
    normalized: np.ndarray
    loss: float
    ablation: list = dataclasses.field(default_factory=list)

    def least_important(self, n: int) -> list:
        """The `n` least important heads as `(layer, head)` pairs."""
        flat = np.where(np.isnan(self.normalized), np.inf, self.normalized).ravel()
        order = np.argsort(flat, kind="stable")[: v.check_non_negative_int("n", n)]
        width = self.normalized.shape[1]
        return [(self.layers[i // width], int(i % width)) for i in order]

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "importance": np.nan_to_num(self.importance, nan=-1.0).tolist(),
            "normalized": np.nan_to_num(self.normalized, nan=-1.0).tolist(),
            "loss": float(self.loss),
            "ablation": self.ablation,
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            _write(path, text)
        return text

    def plot(self, ax=None):
        """Heatmap of the normalized importance (layer x head); `(fig, ax)`."""
        from kerastrace._utils.lazy import pyplot

        plt = pyplot()
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * self.normalized.shape[1] + 3),
                                            max(2.5, 0.45 * len(self.layers) + 1.5)),
                                   layout="constrained")
        else:
            fig = ax.figure
        im = ax.imshow(self.normalized, cmap="magma", aspect="auto")
        ax.set_yticks(range(len(self.layers)), [_mathsafe(x) for x in self.layers], fontsize=7)
        ax.set_xticks(range(self.normalized.shape[1]))
        ax.set_xlabel("head")
        ax.set_title("head importance |dL/d gate| (normalized per layer)", fontsize=10)
        fig.colorbar(im, ax=ax, label="normalized importance")
        return fig, ax


def _md(s) -> str:
    return _escape(s).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _mathsafe(s) -> str:
    return str(s).replace("$", r"\$")


def _figure_image(fig):
    import io

    import tensorflow as tf

    from kerastrace._utils.lazy import pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    pyplot().close(fig)
    return tf.expand_dims(tf.image.decode_png(buf.getvalue(), channels=4), 0)


def _write(path, text):
    import os
    import tempfile

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
