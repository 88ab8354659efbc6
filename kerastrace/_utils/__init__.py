"""Private helpers shared by kerastrace subpackages. Not public API."""
