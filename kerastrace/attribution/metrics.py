"""Attribution metrics (under construction)."""
