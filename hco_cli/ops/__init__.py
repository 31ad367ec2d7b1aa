"""Low-level array operations shared by the SSL frameworks and inference (connected components)."""
