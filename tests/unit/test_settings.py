"""Settings: defaults, .env.example stays loadable, bad values give one line naming them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from gateway.core import bots as bots_module
from gateway.core import files as files_module
from gateway.core import receipt_settings as receipt_settings_module
from gateway.core import settings as settings_module
from gateway.core import telegram_settings as telegram_settings_module
from gateway.core.bots import BotsSettings
from gateway.core.errors import ConfigError
from gateway.core.files import FilesSettings
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings import (
    ConsumerSettings,
    IngressSettings,
    LogSettings,
    MetricsSettings,
    PipelineSettings,
    RedisSettings,
    ReferencePipelineSettings,
    SenderSettings,
    TelegramSettings,
    WorkerSettings,
    load,
)

ROOT = Path(__file__).resolve().parents[2]
ALL = (
    TelegramSettings,
    RedisSettings,
    PipelineSettings,
    IngressSettings,
    WorkerSettings,
    SenderSettings,
    ConsumerSettings,
    MetricsSettings,
    LogSettings,
    ReferencePipelineSettings,
    FilesSettings,  # gateway/core/files.py (settings.py is at its size bound)
    ReceiptSettings,
    BotsSettings,  # gateway/core/bots.py
)
TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"


def test_all_names_every_settings_class() -> None:
    """The tests below see every settings class of the modules that hold them."""
    classes = {
        c
        for module in (
            settings_module,
            files_module,
            telegram_settings_module,
            receipt_settings_module,
            bots_module,
        )
        for c in vars(module).values()
        if isinstance(c, type)
        and issubclass(c, BaseSettings)
        and c.__module__ == module.__name__
        and not c.__name__.startswith("_")
    }
    assert classes == set(ALL)


def test_every_variable_is_read_by_one_field() -> None:
    """Two fields reading one variable could never differ: each variable has one field."""
    names = [name.upper() for cls in ALL for name in cls.model_fields]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_env_example_lists_every_setting_and_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every field is documented in .env.example, and the file itself is valid."""
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", text, flags=re.M))
    fields = {name.upper() for cls in ALL for name in cls.model_fields}
    assert fields - documented == set(), "settings missing from .env.example"
    assert documented - fields == set(), ".env.example names unknown settings"
    env = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env)
    env.write_text(env.read_text().replace("TELEGRAM_BOT_TOKEN=", f"TELEGRAM_BOT_TOKEN={TOKEN}"))
    monkeypatch.chdir(tmp_path)
    for cls in ALL:
        load(cls)
    assert load(TelegramSettings).bot_id == 7689012345
    assert load(WorkerSettings).apology_text.startswith("Sorry")


def test_defaults_pick_polling_without_webhook_url() -> None:
    tg = load(TelegramSettings, telegram_bot_token=TOKEN)
    assert tg.mode == "polling"
    assert tg.telegram_api_url == "https://api.telegram.org"
    hooked = load(TelegramSettings, telegram_bot_token=TOKEN, telegram_webhook_url="https://x/y")
    assert hooked.mode == "webhook"
    forced = load(
        TelegramSettings,
        telegram_bot_token=TOKEN,
        telegram_webhook_url="https://x/y",
        telegram_mode="polling",
    )
    assert forced.mode == "polling"


def test_disabled_telegram_needs_no_token() -> None:
    tg = load(TelegramSettings, telegram_enabled=False)
    assert tg.telegram_bot_token is None and tg.bot_id == 0


def test_comma_lists_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", "1, 2,3")
    monkeypatch.setenv("TELEGRAM_ALLOWED_UPDATES", "message,callback_query")
    monkeypatch.setenv("TELEGRAM_ENABLED", "false")
    assert load(WorkerSettings).admin_user_ids == [1, 2, 3]
    assert load(TelegramSettings).telegram_allowed_updates == ["message", "callback_query"]


@pytest.mark.parametrize(
    ("env", "cls", "names"),
    [
        ({}, TelegramSettings, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": "nope"}, TelegramSettings, "TELEGRAM_BOT_TOKEN"),
        (
            {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": "has space"},
            TelegramSettings,
            "TELEGRAM_WEBHOOK_SECRET",
        ),
        (
            {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_MAX_CONNECTIONS": "500"},
            TelegramSettings,
            "TELEGRAM_MAX_CONNECTIONS",
        ),
        ({"TELEGRAM_ENABLED": "maybe"}, TelegramSettings, "TELEGRAM_ENABLED"),
        ({"REDIS_URL": "http://x"}, RedisSettings, "REDIS_URL"),
        ({"PARTITIONS": "0"}, RedisSettings, "PARTITIONS"),
        ({"PIPELINE_URL": "ftp://x"}, PipelineSettings, "PIPELINE_URL"),
        ({"DELIVERY_SECRET": "short"}, PipelineSettings, "DELIVERY_SECRET"),
        ({"ADMIN_USER_IDS": "1,abc"}, WorkerSettings, "ADMIN_USER_IDS"),
        ({"SENDER_GLOBAL_PER_SECOND": "-1"}, SenderSettings, "SENDER_GLOBAL_PER_SECOND"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], cls: type, names: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load(cls)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(names), line


def test_secrets_never_appear_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:short-but-secret")
    with pytest.raises(ConfigError) as info:
        load(TelegramSettings)
    assert "short-but-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("REDIS_URL", "ftp://user:secret@host", "(got 'ftp://***@host')"),
        ("REDIS_URL", "user:secret@host:6379", "(got '***@host:6379')"),
        ("REDIS_URL", "http://host/0?password=secret", "(got 'http://host/0?password=***')"),
        ("PIPELINE_URL", "ftp://bot:secret@pipeline.internal/api", "ftp://***@pipeline.internal"),
        ("PIPELINE_URL", "bot:secret@pipeline.internal", "(got '***@pipeline.internal')"),
        ("GATEWAY_PUBLIC_URL", "gopher://:secret@gw.example", "(got 'gopher://***@gw.example')"),
    ],
)
def test_urls_in_the_error_lose_their_credentials(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, shown: str
) -> None:
    """The error still shows which URL was wrong, never the password inside it."""
    monkeypatch.setenv(name, value)
    cls = RedisSettings if name == "REDIS_URL" else PipelineSettings
    with pytest.raises(ConfigError) as info:
        load(cls)
    line = str(info.value)
    assert line.startswith(f"{name}: ") and shown in line, line
    assert "secret" not in line


def test_cli_config_error_hides_url_credentials(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "streams"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "ftp://user:secret@host"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "tg-gateway: configuration error: REDIS_URL: must start with redis://, rediss:// or "
        "unix:// (got 'ftp://***@host')"
    ]


def test_cli_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """What an operator sees: one line naming the variable, exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "worker"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PARTITIONS": "zero", "TELEGRAM_ENABLED": "false"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tg-gateway: configuration error: PARTITIONS:")


def test_readme_configuration_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    fields = {name.upper() for cls in ALL for name in cls.model_fields}
    missing = sorted(f for f in fields if f"`{f}`" not in readme)
    assert missing == [], f"README's configuration table lacks {missing}"
