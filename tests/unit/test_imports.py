"""Imports: the layers hold, no import circle, and what each role loads (idle RSS goals
live in bench/idle_rss.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.helpers import FIXTURES

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("module", ["gateway.app.roles", "gateway.app.sandbox"])
def test_the_roles_import_aiogram_lazily(module: str) -> None:
    """What `tg-gateway worker|sender|run|sandbox` import first must still take the lazy
    path: an aiogram import ahead of ``workers`` builds every model (2 s, 90 MB a process)."""
    out = run(f"import {module}\nfrom workers.lazy_aiogram import lazy\nprint(lazy())")
    assert out == "True"


def test_worker_and_sender_do_not_load_the_web_server() -> None:
    """uvicorn and the ingress app are for the ingress (and `run`), not every consumer."""
    out = run("import sys, gateway.app.cli, gateway.app.roles\nprint('uvicorn' in sys.modules)")
    assert out == "False"


def test_only_the_asyncapi_command_loads_faststream() -> None:
    """FastStream builds the AsyncAPI document (``tg-gateway asyncapi``); no role, nor the
    CLI's parser, nor the envelope models load it."""
    out = run(
        "import sys, gateway.app.cli, gateway.app.roles, gateway.app.sandbox\n"
        "import gateway.app.asyncapi.envelopes, gateway.app.cli.asyncapi\n"
        "print('faststream' in sys.modules)"
    )
    assert out == "False"


def test_only_a_diff_report_loads_matplotlib() -> None:
    """matplotlib (the report's PNG, ~0.5 s to import) is for ``diff --report`` alone:
    neither the CLI, nor the tape tools, nor a role loads it."""
    out = run(
        "import sys, gateway.app.cli, gateway.app.cli.tapes, gateway.app.roles\n"
        "import gateway.testkit.tapes.diff, gateway.testkit.tapes.report\n"
        "import gateway.testkit.tapes.replay, gateway.testkit.tapes.progress\n"
        "print('matplotlib' in sys.modules)"
    )
    assert out == "False"


def test_lazy_aiogram_models_validate_every_fixture_and_method() -> None:
    """The lazy import must give the same working models as aiogram's eager one."""
    out = run(
        "import glob, json, workers\n"
        "from workers.lazy_aiogram import lazy\n"
        "from aiogram.types import Update, Message\n"
        "from workers.sender.parts import METHODS\n"
        f"files = sorted(glob.glob('{FIXTURES}/updates/*.json'))\n"
        "kinds = []\n"
        "for f in files:\n"
        "    u = Update.model_validate(json.load(open(f)))\n"
        "    kinds.append(u.event_type)\n"
        "samples = {'sendMessage': {'chat_id': 1, 'text': 'hi'},\n"
        "  'sendPhoto': {'chat_id': 1, 'photo': 'AgAC'},\n"
        "  'sendDocument': {'chat_id': 1, 'document': 'https://x/a.pdf'},\n"
        "  'sendChatAction': {'chat_id': 1, 'action': 'typing'},\n"
        "  'answerCallbackQuery': {'callback_query_id': '1'},\n"
        "  'editMessageText': {'chat_id': 1, 'message_id': 2, 'text': 'hi',\n"
        "    'reply_markup': {'inline_keyboard': [[{'text': 'a', 'callback_data': 'b'}]]},\n"
        "    'link_preview_options': {'is_disabled': True}},\n"
        "  'deleteMessage': {'chat_id': 1, 'message_id': 2}}\n"
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
    assert int(count) == 12
    assert kinds.split(",") == [
        "message",
        "message",
        "callback_query",
        "edited_message",
        "message",
        "my_chat_member",
        "message",
        "my_chat_member",
        "business_connection",
        "business_message",
        "edited_business_message",
        "message_reaction",
    ]


def test_import_contracts_hold() -> None:
    """``lint-imports``: the layers in pyproject's ``[tool.importlinter]`` are kept."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected set of two or more modules, or one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm; the graph is small
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_circle() -> None:
    """No module reaches itself through imports, counting imports inside functions and
    under ``TYPE_CHECKING`` (grimp sees both); the layer contracts miss circles in a layer."""
    graph = grimp.build_graph("gateway", "workers", cache_dir=None)
    assert len(graph.modules) > 50  # the whole tree was read
    assert import_cycles(graph) == []


def test_cycle_finder_finds_a_circle() -> None:
    """The finder itself: one import added to the real graph makes a circle it reports."""
    graph = grimp.build_graph("gateway", "workers", cache_dir=None)
    graph.add_import(importer="gateway.core.errors", imported="gateway.app.cli")
    cycles = import_cycles(graph)
    assert len(cycles) == 1
    assert {"gateway.core.errors", "gateway.app.cli"} <= set(cycles[0])
