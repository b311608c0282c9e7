"""Temporal activities: the workflows' only way to touch PostgreSQL and Redis."""
