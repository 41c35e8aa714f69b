"""Realistic, seeded event generators for demos, tests and benchmarks."""
