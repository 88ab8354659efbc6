"""kerastrace.tensorboard (under construction)."""
