"""The role commands (``ingress``, ``worker``, ``sender``, ``run``), ``check-config`` and
``webhook``: the settings every role loads, and the Telegram webhook they serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.app.running import EXIT_TELEGRAM, run_async
from gateway.core.errors import ConfigError
from gateway.core.files import FilesSettings
from gateway.core.logs import setup_logging
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings import (
    BotsSettings,
    Config,
    ConsumerSettings,
    IngressSettings,
    LogSettings,
    MetricsSettings,
    PipelineSettings,
    RedisSettings,
    SenderSettings,
    TelegramSettings,
    WorkerSettings,
    load,
)
from gateway.telegram.client import webhook_secret_for

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands


def load_config(**telegram_overrides: Any) -> Config:
    """Every settings class, validated; ``ConfigError`` names the first bad variable."""
    config = Config(
        telegram=load(TelegramSettings, **telegram_overrides),
        redis=load(RedisSettings),
        pipeline=load(PipelineSettings),
        ingress=load(IngressSettings),
        worker=load(WorkerSettings),
        sender=load(SenderSettings),
        consumer=load(ConsumerSettings),
        metrics=load(MetricsSettings),
        files=load(FilesSettings),
        receipts=load(ReceiptSettings),
        bots=load(BotsSettings),
    )
    load(LogSettings)
    return config


def _secrets(cfg: Config) -> tuple[str, ...]:
    out = []
    tg = cfg.telegram
    if tg.telegram_bot_token is not None:
        out.append(tg.telegram_bot_token.get_secret_value())
    if tg.mode == "webhook":
        with contextlib.suppress(ConfigError):
            out.append(webhook_secret_for(tg))  # the set or the derived one
    if cfg.pipeline.delivery_secret is not None:
        out.append(cfg.pipeline.delivery_secret.get_secret_value())
    for key in (*cfg.pipeline.pipeline_signing_keys, *cfg.pipeline.callback_signing_keys):
        out.append(key.get_secret_value().strip().removeprefix("whsec_"))  # and with it whsec_…
    if cfg.metrics.metrics_token is not None:
        out.append(cfg.metrics.metrics_token.get_secret_value())
    if cfg.files.files_secret is not None:
        out.append(cfg.files.files_secret.get_secret_value())
    return tuple(out)


RoleMain = Callable[[Config, asyncio.Event], Awaitable[None]]


def _ingress_role() -> RoleMain:
    from gateway.ingress.serve import serve_ingress_role

    return serve_ingress_role


def _worker_role() -> RoleMain:
    from gateway.app.roles import serve_worker

    return serve_worker


def _sender_role() -> RoleMain:
    from gateway.app.roles import serve_sender

    return serve_sender


def _all_roles() -> RoleMain:
    from gateway.app.roles import serve_all

    return serve_all


def _role(role: Callable[[], RoleMain]) -> Callable[[argparse.Namespace], int]:
    """``role()`` imports the role's module only when it runs (ingress never loads aiogram)."""

    def command(args: argparse.Namespace) -> int:
        cfg = load_config()
        logs = load(LogSettings)
        setup_logging(logs.log_level, logs.log_format, _secrets(cfg))
        fn = role()
        return run_async(lambda stop: fn(cfg, stop))

    return command


def cmd_webhook(args: argparse.Namespace) -> int:
    from gateway.telegram.client import BotApi, webhook_params

    tg = load(TelegramSettings, telegram_enabled=True)
    logs = load(LogSettings)
    setup_logging(logs.log_level, logs.log_format, (tg.token,))

    async def go() -> Any:
        async with BotApi(tg.telegram_api_url, tg.token) as api:
            if args.action == "set":
                if not tg.telegram_webhook_url:
                    raise ConfigError("TELEGRAM_WEBHOOK_URL: required for `webhook set`")
                # What the ingress registers and its watchdog keeps (the secret it checks).
                params = {**webhook_params(tg), "drop_pending_updates": args.drop_pending}
                return await api.call("setWebhook", params)
            if args.action == "delete":
                return await api.call("deleteWebhook", {"drop_pending_updates": args.drop_pending})
            return await api.call("getWebhookInfo")

    from gateway.telegram.client import BotApiError

    try:
        result = asyncio.run(go())
    except BotApiError as exc:
        print(f"tg-gateway: webhook {args.action} failed: {exc}", file=sys.stderr)
        return EXIT_TELEGRAM
    import json

    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load what every role needs; one line either way (ConfigError: exit 2 in ``main``)."""
    from gateway.core.settings import ReferencePipelineSettings

    cfg = load_config()
    if cfg.pipeline.pipeline_url is not None:
        cfg.pipeline.require_secret()
    load(ReferencePipelineSettings)
    tg = cfg.telegram
    print(
        f"configuration ok: telegram {tg.mode if tg.telegram_enabled else 'disabled'}, "
        f"{cfg.redis.partitions} partition(s), pipeline "
        f"{'external' if cfg.pipeline.pipeline_url else 'embedded'}"
    )
    return 0


def add_roles(sub: Subcommands) -> None:
    for name, fn, help_ in (
        (
            "ingress",
            _ingress_role,
            "HTTP service: Telegram webhook or long polling, pipeline callbacks, /healthz, /readyz",
        ),
        ("worker", _worker_role, "update consumer: bot commands and the pipeline"),
        (
            "sender",
            _sender_role,
            "outbound consumer: rate-limited sends to the Bot API",
        ),
        ("run", _all_roles, "ingress, worker and sender in one process"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=_role(fn))


def add_webhook(sub: Subcommands) -> None:
    wh = sub.add_parser(
        "webhook",
        help="manage the Telegram webhook",
        description="set uses TELEGRAM_WEBHOOK_URL, TELEGRAM_WEBHOOK_SECRET, "
        "TELEGRAM_ALLOWED_UPDATES and TELEGRAM_MAX_CONNECTIONS",
    )
    wh.add_argument("action", choices=["set", "delete", "info"])
    wh.add_argument("--drop-pending", action="store_true", help="drop updates Telegram is holding")
    wh.set_defaults(func=cmd_webhook)


def add_check_config(sub: Subcommands) -> None:
    cc = sub.add_parser(
        "check-config",
        help="validate the settings every role needs: one line; exit 2 on a bad one",
        description="Loads every settings class (and DELIVERY_SECRET when PIPELINE_URL is "
        "set), as the roles do at start, and prints one line.",
    )
    cc.set_defaults(func=cmd_check_config)
