"""Configuration from the environment (and an optional `.env` file).

The names are fixed by DESIGN.md. Secrets are held as `SecretStr` so that they never show in a
repr, a log line or an exception.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigurationError(Exception):
    """Configuration is missing or invalid; the message is one line, safe to print."""


class Settings(BaseSettings):
    """Everything the pipeline needs from its environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    bullphish_api_url: str | None = Field(None, alias="BULLPHISH_API_URL")
    bullphish_api_token: SecretStr | None = Field(None, alias="BULLPHISH_API_TOKEN")
    kaseyaone_api_url: str | None = Field(None, alias="KASEYAONE_API_URL")
    kaseyaone_client_id: str | None = Field(None, alias="KASEYAONE_CLIENT_ID")
    kaseyaone_client_secret: SecretStr | None = Field(None, alias="KASEYAONE_CLIENT_SECRET")
    warehouse: Path = Field(Path("data/warehouse.duckdb"), alias="BILLING_WAREHOUSE")
    hold_threshold: float = Field(
        0.01,
        alias="BILLING_HOLD_THRESHOLD",
        ge=0.0,
        le=1.0,
        description="Share of a partner's records for a date that may be quarantined "
        "before the whole partner-date is held for review (DESIGN.md rule 7).",
    )
    page_limit: int = Field(1000, alias="BILLING_PAGE_LIMIT", ge=1, le=1000)
    max_connections: int = Field(8, alias="BILLING_MAX_CONNECTIONS", ge=1, le=64)
    http_deadline_s: float = Field(
        120.0,
        alias="BILLING_HTTP_DEADLINE_S",
        gt=0,
        description="Longest time one API request may take, retries included.",
    )

    def require_apis(self) -> None:
        """Raise ConfigurationError naming every missing variable the APIs need."""
        required = {
            "BULLPHISH_API_URL": self.bullphish_api_url,
            "BULLPHISH_API_TOKEN": self.bullphish_api_token,
            "KASEYAONE_API_URL": self.kaseyaone_api_url,
            "KASEYAONE_CLIENT_ID": self.kaseyaone_client_id,
            "KASEYAONE_CLIENT_SECRET": self.kaseyaone_client_secret,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise ConfigurationError(
                f"missing configuration: {', '.join(missing)} (set them in the environment "
                "or a .env file; `bullphish-billing demo` needs none)"
            )
        for name in ("BULLPHISH_API_URL", "KASEYAONE_API_URL"):
            url = required[name]
            if not str(url).startswith(("http://", "https://")):
                raise ConfigurationError(f"{name} must be an http(s) URL")


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into a one-line ConfigurationError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "configuration"
        raise ConfigurationError(f"invalid {where}: {first.get('msg')}") from None
