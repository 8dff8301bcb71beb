"""The sidecar's HTTP API (FastAPI): ``create_app(config)`` in :mod:`billing.api.app`."""
