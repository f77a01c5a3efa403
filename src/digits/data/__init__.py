"""Data sources, preparation and the prepared arrays."""
