"""The ``genloom`` command. Exit codes: 0 done; 1 the job failed, was cancelled or expired;
2 bad usage; 3 the server or database refused or could not be reached; 4 a wait timed out;
130 interrupted."""

from genloom.cli.root import app, main

__all__ = ["app", "main"]
