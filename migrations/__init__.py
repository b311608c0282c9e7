"""Alembic revisions of Tickler's schema; `tickler migrate` applies them."""
