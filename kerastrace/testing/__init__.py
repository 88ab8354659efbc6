"""kerastrace.testing (under construction)."""
