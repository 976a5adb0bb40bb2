"""`bullphish-billing alerts install`: the alerts of automations.yaml, installed on the
configured Prefect server.

It saves one notification block (Prefect's CustomWebhookNotificationBlock, which POSTs JSON to
the webhook) and creates or updates the automations of the file, found by name, so running it
again leaves one of each. The webhook URL is a secret: it is kept only in the block, as one of
its secret values (the block's `url` is the placeholder `{{webhook_url}}`, filled in when the
block sends), and never printed: the messages here name the server, not the webhook.

An automation lives on a Prefect server; a command run with no PREFECT_API_URL gets a
throwaway one, so installing there would install nothing that lasts: exit 2.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bullphish_billing.errors import ConfigurationError, UsageError

AUTOMATIONS_FILE = Path(__file__).resolve().parents[1] / "automations.yaml"
DEFAULT_WINDOW = dt.timedelta(hours=26)
MIN_WINDOW = dt.timedelta(seconds=10)  # Prefect's least `within` for a proactive trigger
PAYLOADS = ("slack", "teams")
URL_SECRET = "webhook_url"
NO_SERVER = (
    "alerts need a real Prefect server: set PREFECT_API_URL to it (a command run without it "
    "uses a throwaway server, where no automation exists)"
)


@dataclass(frozen=True)
class Installed:
    server: str
    block: str
    automations: tuple[tuple[str, str], ...]  # (name, "created" | "updated")
    window: str


def window_text(window: dt.timedelta) -> str:
    """`26 hours`, `1.5 hours`, `90 minutes`, `12 seconds`."""
    seconds = window.total_seconds()
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size and math.isclose(round(seconds / size, 2), seconds / size):
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def check_window(window: dt.timedelta) -> None:
    if window < MIN_WINDOW:
        raise UsageError(
            f"the window must be at least {MIN_WINDOW.total_seconds():g} seconds "
            f"(Prefect's least for a proactive automation), got {window_text(window)}"
        )


def check_webhook_url(url: str) -> None:
    """An http(s) URL with a host; the message never shows the URL (it is a secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise UsageError("--webhook-url must be an http:// or https:// URL with a host")
    if any(c.isspace() for c in url):
        raise UsageError("--webhook-url must not contain spaces or line breaks")


def load_spec(path: Path = AUTOMATIONS_FILE) -> dict[str, Any]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(spec, dict) or not spec.get("automations"):
        raise ConfigurationError(f"{path} holds no automations")
    return spec


def automations_from(spec: dict[str, Any], block_id: Any, window: dt.timedelta) -> list[Any]:
    """The file's automations, their notifications sent by the block, the proactive ones'
    window set."""
    from prefect.events.schemas.automations import AutomationCore

    made = []
    text = window_text(window)
    for entry in spec["automations"]:
        trigger = dict(entry["trigger"])
        if trigger.get("posture") == "Proactive":
            trigger["within"] = window.total_seconds()
        actions = []
        for action in entry["actions"]:
            action = {
                k: v.replace("<window>", text) if isinstance(v, str) else v
                for k, v in action.items()
            }
            if action.get("type") == "send-notification":
                action["block_document_id"] = block_id
            actions.append(action)
        made.append(
            AutomationCore.model_validate(
                {**entry, "trigger": trigger, "actions": actions, "enabled": True}
            )
        )
    return made


def notification_block(spec: dict[str, Any], payload: str, webhook_url: str) -> Any:
    """The file's block, posting `payload`'s JSON to the URL, which it holds as a secret."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block_spec = spec["notification_block"]
    return CustomWebhookNotificationBlock(
        name=block_spec["name"],
        url="{{" + URL_SECRET + "}}",
        method="POST",
        json_data=block_spec["payloads"][payload],
        headers={"Content-Type": "application/json"},
        secrets={URL_SECRET: webhook_url},
    )


def server_warnings(client: Any) -> list[str]:
    """What the server's own settings would keep the alerts from working, as far as its
    /admin/settings tells (nothing if it does not answer)."""
    try:  # the client's own HTTP client, which carries the API's authentication
        answer = client._client.get("/admin/settings")
        settings = answer.json() if answer.status_code == 200 else None
    except Exception:  # a server that does not say is not checked
        settings = None
    if not isinstance(settings, dict):
        return []
    warnings = []
    services = settings.get("server", {}).get("services", {})
    off = [
        f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED"
        for name in ("triggers", "actions", "event_persister")
        if services.get(name, {}).get("enabled") is False
    ]
    if off:
        warnings.append(f"the server runs with {', '.join(off)}=false: no alert will be sent")
    if not settings.get("ui_url"):
        warnings.append(
            "the server has no PREFECT_UI_URL: notifications will link to no run; start it "
            "with PREFECT_UI_URL set to the address of its UI (e.g. http://127.0.0.1:4200)"
        )
    return warnings


def install(
    webhook_url: str,
    window: dt.timedelta = DEFAULT_WINDOW,
    payload: str = "slack",
    path: Path = AUTOMATIONS_FILE,
    say: Callable[[str], None] = print,
) -> Installed:
    """Save the block and create or update the automations on PREFECT_API_URL's server."""
    check_webhook_url(webhook_url)
    check_window(window)
    from prefect.settings import PREFECT_API_URL

    server = PREFECT_API_URL.value()
    if not server:
        raise ConfigurationError(NO_SERVER)
    spec = load_spec(path)
    block_spec = spec["notification_block"]
    if payload not in block_spec["payloads"]:
        raise UsageError(f"no payload {payload!r} in {path.name}: {sorted(block_spec['payloads'])}")

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            unhealthy = client.api_healthcheck()
            if unhealthy is not None:
                raise ConfigurationError(
                    f"the Prefect server at {server} does not answer: "
                    f"{type(unhealthy).__name__} (is it running?)"
                )
            for warning in server_warnings(client):
                say(f"warning: {warning}")
            block = notification_block(spec, payload, webhook_url)
            block_id = block.save(block_spec["name"], overwrite=True)
            say(f"notification block {block_spec['name']} (custom webhook, {payload}): saved")
            done = []
            for automation in automations_from(spec, block_id, window):
                existing = client.read_automations_by_name(automation.name)
                if existing:
                    client.update_automation(existing[0].id, automation)
                    for extra in existing[1:]:
                        client.delete_automation(extra.id)
                    done.append((automation.name, "updated"))
                else:
                    client.create_automation(automation)
                    done.append((automation.name, "created"))
                say(f"automation {automation.name}: {done[-1][1]}")
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        raise ConfigurationError(
            f"the Prefect server at {server} refused or did not answer: {type(exc).__name__}"
        ) from None
    return Installed(server, block_spec["name"], tuple(done), window_text(window))
