"""Segment files, the SQLite index and start-up recovery."""
