"""vjepa-fast: fast, faithful V-JEPA."""
