"""Settings: read once at the edge, flags > environment (GENLOOM_*) > a TOML file > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_DATA_DIR = Path("genloom-data")


class Settings(BaseSettings):
    """Every knob genloom has. Periods are seconds."""

    model_config = SettingsConfigDict(env_prefix="GENLOOM_", extra="ignore")

    # where things live
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""  # empty: a SQLite file in data_dir
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "auto"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_prefix: str = ""
    s3_path_style: bool = False  # MinIO and other self-hosted S3 servers want path-style URLs

    # serving
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # how providers reach our callback route; default http://host:port
    admin_token: SecretStr = SecretStr("")
    metrics_token: SecretStr = SecretStr("")  # for a Prometheus scraper: /metrics only
    max_body_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024
    rate_limit_per_minute: int = 600

    # queue and worker
    concurrency: int = 4
    claim_batch: int = 16
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    # after a claim that found nothing, a wake-up waits this long before the next claim: every
    # process's listener hears every NOTIFY, and each answering at once is an empty claim apiece
    claim_settle_seconds: float = 0.005
    shutdown_grace_seconds: float = 20.0
    max_attempts: int = 3
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 300.0

    # reconciler
    reconcile_seconds: float = 60.0
    provider_requery_after_seconds: float = 25.0
    provider_stall_after_seconds: float = 600.0
    callback_deadline_seconds: float = 900.0

    # webhooks
    webhook_timeout_seconds: float = 5.0
    webhook_schedule_seconds: list[float] = Field(default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0])
    webhook_disable_after_seconds: float = 5 * 24 * 3600

    # media and fetching
    fetch_allow_networks: list[str] = Field(default_factory=list)
    fetch_max_bytes: int = 25 * 1024 * 1024
    fetch_timeout_seconds: float = 20.0
    max_image_pixels: int = 40_000_000
    max_video_seconds: float = 60.0

    # providers: "local" everywhere unless configured
    replicate_url: str = "https://api.replicate.com"
    replicate_token: SecretStr = SecretStr("")
    replicate_webhook_secret: SecretStr = SecretStr("")
    static_ad_provider: Literal["local", "replicate"] = "local"
    static_ad_model: str = "black-forest-labs/flux-schnell"
    tts_provider: Literal["local", "replicate"] = "local"
    tts_model: str = ""
    chat_url: str = ""
    chat_api_key: SecretStr = SecretStr("")
    chat_model: str = "llama3.1"

    db_pool_size: int = Field(10, ge=1)  # PostgreSQL: connections each of a process's two pools keeps
    auto_migrate: bool = True  # bring the schema to head on start (advisory-locked on PostgreSQL)

    # billing: the embedded default project is unmetered unless this is set
    default_project_billing: bool = False
    prices: dict[str, int] = Field(
        default_factory=lambda: {"motion": 10, "video": 20, "copy": 1, "scrape": 1, "static_ad": 5, "tts": 2}
    )

    log_level: str = "info"
    log_json: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = Path(os.environ.get("GENLOOM_CONFIG", "genloom.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml))

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'genloom.db').resolve()}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def masked(self) -> dict[str, object]:
        """The effective configuration with secrets and database passwords hidden."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                out[name] = "********" if getattr(self, name).get_secret_value() else ""
            elif name == "database_url" and "@" in str(value):
                scheme, rest = str(value).split("://", 1)
                out[name] = f"{scheme}://********@{rest.rsplit('@', 1)[1]}"
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        out["db_url"] = out["database_url"] or self.db_url
        return out
