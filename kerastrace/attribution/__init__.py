"""kerastrace.attribution (under construction)."""
