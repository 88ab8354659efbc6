"""kerastrace.attention (under construction)."""
