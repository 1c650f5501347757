"""Demo material: synthetic data that can ship with the project (no real patients)."""
