"""``python -m genloom.api``: serve the API (and the worker and reconciler) from GENLOOM_* settings."""

from genloom.api.app import run_server

if __name__ == "__main__":
    run_server()
