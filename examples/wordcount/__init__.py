"""Word counts of the standard library: a map-reduce chord (see producer.py)."""
