"""Matplotlib pictures of attention, attributions and profiles.

`matplotlib.pyplot` is imported on the first plot call, not on import. Every
function takes `ax=None` (multi-axes ones `fig=None`), returns `(fig, ax)` and
never calls `plt.show()`.

Tokens, feature names and layer names are drawn as they are: every `$` is
escaped, so matplotlib never reads them as mathtext (`"$5"`, `"$x^2$"` are
shown literally); the HTML views escape every token (`html.escape`) and ask
Jupyter's MathJax to leave them alone. Titles passed as `title=` are the
caller's own and keep matplotlib's mathtext.

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
    TokenAttributionsHTML,
    plot_feature_attributions,
    plot_image_attribution,
    plot_profile,
    plot_token_attributions,
    profile_rows,
    token_attributions_html,
)

__all__ = [
    "TokenAttributionsHTML",
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
