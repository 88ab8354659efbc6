"""Matplotlib pictures of attention, attributions and profiles; self-contained HTML views.

`matplotlib.pyplot` is imported on the first plot call, not on import. Every
function takes `ax=None` (multi-axes ones `fig=None`), returns `(fig, ax)` and
never calls `plt.show()`.

Tokens, feature names and layer names are drawn as they are: every `$` is
escaped, so matplotlib never reads them as mathtext (`"$5"`, `"$x^2$"` are
shown literally); the HTML views escape every token (`html.escape`) and ask
Jupyter's MathJax to leave them alone. Titles passed as `title=` are the
caller's own and keep matplotlib's mathtext.

The HTML views (`attribution_html`, `explanation_html`, `generation_html`,
their pages) are one file each, with no network: they
back the result objects' `_repr_html_`/`to_html`, the command line, the
demo and the scripts. Their colours come from one diverging palette whose
text colour (black or white) keeps a contrast ratio of at least 4.5.

Example:

>>> import numpy as np
>>> from kerastrace import visualization as viz
>>> fig, ax = viz.plot_attention_head(np.full((2, 2), 0.5), ["hi", "there"])
>>> fig.get_size_inches().tolist() != []
True
"""

from kerastrace.visualization._attention import (
    plot_attention_head,
    plot_head_statistics,
    plot_model_view,
    plot_rollout,
)
from kerastrace.visualization._attribution import (
    plot_feature_attributions,
    plot_image_attribution,
    plot_profile,
    plot_token_attributions,
    profile_rows,
)
from kerastrace.visualization._html import (
    HTMLView,
    TokenAttributionsHTML,
    attribution_html,
    attributions_page,
    contrast_ratio,
    diverging_color,
    explanation_html,
    explanations_page,
    generation_html,
    generation_page,
    html_page,
    legend_html,
    relative_luminance,
    sequential_color,
    text_color,
    token_attributions_html,
    write_html,
)

__all__ = [
    "HTMLView",
    "TokenAttributionsHTML",
    "attribution_html",
    "attributions_page",
    "contrast_ratio",
    "diverging_color",
    "explanation_html",
    "explanations_page",
    "generation_html",
    "generation_page",
    "html_page",
    "legend_html",
    "relative_luminance",
    "sequential_color",
    "text_color",
    "write_html",
    "plot_attention_head",
    "plot_feature_attributions",
    "plot_head_statistics",
    "plot_image_attribution",
    "plot_model_view",
    "plot_profile",
    "plot_rollout",
    "plot_token_attributions",
    "profile_rows",
    "token_attributions_html",
]
