"""Thin compatibility layers: each product document's routes, fields and state names, mapped onto
the one canonical core. They translate vocabulary and nothing else."""
