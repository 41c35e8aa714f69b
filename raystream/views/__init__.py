"""Materialized views served with SQL: snapshots of committed checkpoints, a sandboxed DuckDB,
a view-server actor per app, HTTP, and the helper that lets plain ``duckdb`` read them."""
