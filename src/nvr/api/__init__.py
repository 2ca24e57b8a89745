"""The JSON HTTP API."""
