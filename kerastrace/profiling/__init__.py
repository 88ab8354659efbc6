"""kerastrace.profiling (under construction)."""
