"""Lowering: compute definitions (the algorithm) and per-target schedules."""
