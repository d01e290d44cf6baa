"""Process footprint: what each role imports (idle RSS goals live in bench/idle_rss.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import FIXTURES


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_ingress_never_loads_aiogram() -> None:
    """aiogram's models cost ~100 MB; the ingress role has no use for them."""
    out = run(
        "import sys, gateway.app.cli, gateway.ingress.serve, gateway.ingress.app\n"
        "import gateway.ingress.poller\n"
        "print('aiogram' in sys.modules)"
    )
    assert out == "False"


def test_lazy_aiogram_models_validate_every_fixture_and_method() -> None:
    """The lazy import must give the same working models as aiogram's eager one."""
    out = run(
        "import glob, json, workers\n"
        "from workers.lazy_aiogram import lazy\n"
        "from aiogram.types import Update, Message\n"
        "from workers.sender.handler import METHODS\n"
        f"files = sorted(glob.glob('{FIXTURES}/updates/*.json'))\n"
        "kinds = []\n"
        "for f in files:\n"
        "    u = Update.model_validate(json.load(open(f)))\n"
        "    kinds.append(u.event_type)\n"
        "samples = {'sendMessage': {'chat_id': 1, 'text': 'hi'},\n"
        "  'sendPhoto': {'chat_id': 1, 'photo': 'AgAC'},\n"
        "  'sendDocument': {'chat_id': 1, 'document': 'https://x/a.pdf'},\n"
        "  'sendChatAction': {'chat_id': 1, 'action': 'typing'},\n"
        "  'answerCallbackQuery': {'callback_query_id': '1'}}\n"
        "for name, cls in METHODS.items():\n"
        "    cls(**samples[name])\n"
        "from aiogram.methods.base import Response\n"
        "msg = {'message_id': 1, 'date': 0, 'chat': {'id': 1, 'type': 'private'}}\n"
        "Response[Message].model_validate({'ok': True, 'result': msg})\n"
        "Response[list[Update]].model_validate(\n"
        "    {'ok': True, 'result': [{'update_id': 1, 'message': msg}]})\n"
        "Response[bool].model_validate({'ok': True, 'result': True})\n"
        "print(lazy(), len(files), ','.join(kinds))"
    )
    lazy, count, kinds = out.split()
    assert lazy == "True"
    assert int(count) == 6
    assert kinds.split(",") == [
        "message",
        "message",
        "callback_query",
        "edited_message",
        "message",
        "my_chat_member",
    ]
