"""The canonical HTTP API, v1: ``create_app(settings, background=True)`` for any ASGI server, or
``run_server(settings)`` to serve it with uvicorn."""

from genloom.api.app import create_app, run_server

__all__ = ["create_app", "run_server"]
