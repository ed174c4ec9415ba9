"""The research query API (FastAPI): ClickHouse history and live Redis books over HTTP, with
API keys. ``tickflow api`` runs it; docs/api.md describes it."""
