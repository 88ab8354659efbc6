"""kerastrace.text (under construction)."""
