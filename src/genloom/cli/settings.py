"""Flags override the environment (GENLOOM_*), which overrides genloom.toml, which overrides defaults."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from genloom.cli.output import fail
from genloom.config import Settings


def load(**flags: Any) -> Settings:
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"invalid configuration: {'.'.join(map(str, first['loc']))}: {first['msg']}",
             "see `genloom config show` and the README's configuration table", code=2)
