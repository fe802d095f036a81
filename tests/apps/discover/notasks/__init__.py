"""A package without a tasks module: skipped."""
