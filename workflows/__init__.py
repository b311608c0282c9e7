"""Temporal workflows. Modules here are replayed: no I/O, no wall clock, no imports with side effects."""
