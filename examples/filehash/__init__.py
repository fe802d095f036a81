"""Hash files with a pool of workers: see ``producer.py``."""
