"""kerastrace.cli (under construction)."""
