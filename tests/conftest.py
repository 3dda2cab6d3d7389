"""Shared fixtures: a throw-away PostgreSQL server (`pg_cluster`, `pg_url`; see tests/pg.py)."""

from pg import pg_cluster, pg_url  # noqa: F401
