"""kerastrace.visualization (under construction)."""
