"""Roles as separate processes, started the way users start them (`tg-gateway <role>`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, env_without_gateway_vars, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789


@pytest.mark.parametrize("mode", ["webhook", "polling"])
def test_roles_as_processes(cluster: Cluster, redis_url: str, mode: str) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    emu_url, pipe_url = cluster.start_services("emulator", "pipeline")
    ingress_port = free_port()
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "REDIS_URL": redis_url,
        "PIPELINE_URL": pipe_url,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{ingress_port}",
        "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(ingress_port),
        "WORKER_BLOCK_MS": "200",
        "SENDER_BLOCK_MS": "200",
        "LOG_FORMAT": "json",
    }
    if mode == "webhook":
        env["TELEGRAM_WEBHOOK_URL"] = f"http://127.0.0.1:{ingress_port}/webhook/telegram"
        env["TELEGRAM_WEBHOOK_SECRET"] = "e2e_secret-token"
    ingress = cluster.start("ingress", ["ingress"], env)
    cluster.start("worker", ["worker"], env)
    cluster.start("sender", ["sender"], env)
    wait_port(ingress_port, ingress)
    with httpx.Client(base_url=emu_url, timeout=30) as client:
        if mode == "webhook":
            deadline = time.monotonic() + 20
            while client.get("/_emu/webhook").json()["info"]["url"] == "":
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.05)
        for text in ("/start", "/help", "My parcel is broken, refund please"):
            client.post("/_emu/send", json={"user_id": ALICE, "text": text}).raise_for_status()
        resp = client.get(f"/_emu/chats/{ALICE}/messages", params={"wait": 3, "timeout": 25})
        assert resp.status_code == 200, cluster.logs()
        texts = [m["text"] for m in resp.json()]
        ready = httpx.get(f"http://127.0.0.1:{ingress_port}/readyz").json()
    assert any(t.startswith("Hello, Alice") for t in texts)
    assert any("/status" in t for t in texts)
    assert any("sorry" in t.lower() for t in texts), texts  # the pipeline's complaint reply
    assert ready == {"ready": True}
    codes = cluster.stop_all()
    assert codes == {name: 0 for name in codes}, cluster.logs()
    logs = cluster.logs(tail=None)
    assert TOKEN not in logs and TOKEN.split(":")[1] not in logs
    # sanity: the check above read what every role logged (JSON lines from the start)
    assert all(f"--- {role}.log\n{{" in logs for role in ("ingress", "worker", "sender")), logs


def test_sandbox_demo_script(tmp_path: Path) -> None:
    """The README's first command's core: a scripted conversation, exit 0, replies shown."""
    script = tmp_path / "chat.txt"
    script.write_text("/start\n# a comment\nWhat time do you open?\nget me a human operator\n")
    env = env_without_gateway_vars()
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "sandbox", "--script", str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "you: /start" in out and "bot: Hello, Alice" in out
    assert "you: What time do you open?" in out
    assert "operator" in out.split("you: get me a human operator", 1)[1]
    assert "# a comment" not in out
    assert os.path.exists(script)


def sandbox_cli(
    tmp_path: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = env_without_gateway_vars()
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "sandbox", *args],
        env=env,
        cwd=tmp_path,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sandbox_plays_the_conversation_piped_on_stdin(tmp_path: Path) -> None:
    proc = sandbox_cli(tmp_path, stdin="/start\n\n# skipped\nWhat time do you open?\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "you: /start" in proc.stdout and "bot: Hello, Alice" in proc.stdout
    assert "you: What time do you open?" in proc.stdout
    assert proc.stdout.count("you: ") == 2, proc.stdout  # stdin's lines, not the demo's


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["--script", "/nonexistent/chat.txt"], "", "--script /nonexistent/chat.txt: No such file"),
        (["--script", "."], "", "--script .: Is a directory"),
        (["--script", "empty.txt"], "", "no messages in --script empty.txt"),
        ([], "# only a comment\n\n", "no messages in stdin"),
        ([], None, "no messages in stdin"),  # stdin is /dev/null
        (["--timeout", "0"], "/start\n", "argument --timeout: must be a positive number"),
    ],
)
def test_sandbox_refuses_bad_input_before_starting_anything(
    tmp_path: Path, args: list[str], stdin: str | None, says: str
) -> None:
    (tmp_path / "empty.txt").write_text("# nothing to say\n\n")
    started = time.monotonic()
    proc = sandbox_cli(tmp_path, *args, stdin=stdin)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()  # one line: nothing was started, nothing to stop
    assert line.startswith("tg-gateway") and says in line, line
    assert proc.stdout == ""
    assert time.monotonic() - started < 30


def test_webhook_commands_against_the_emulator(cluster: Cluster, tmp_path: Path) -> None:
    """`tg-gateway webhook set|info|delete` with the settings an operator would use."""
    [emu_url] = cluster.start_services("emulator")
    env = {
        **env_without_gateway_vars(),
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_WEBHOOK_URL": "https://gw.example.com/webhook/telegram",
        "TELEGRAM_WEBHOOK_SECRET": "op_secret-1",
        "TELEGRAM_MAX_CONNECTIONS": "7",
        "TELEGRAM_ALLOWED_UPDATES": "message,callback_query",
    }

    def webhook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "webhook", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert webhook("set", "--drop-pending").returncode == 0
    info = webhook("info")
    assert info.returncode == 0, info.stderr
    assert '"url": "https://gw.example.com/webhook/telegram"' in info.stdout
    assert '"max_connections": 7' in info.stdout
    assert webhook("delete").returncode == 0
    assert '"url": ""' in webhook("info").stdout
    env["TELEGRAM_BOT_TOKEN"] = "123:wrong-token-wrong-token-xx"
    bad = webhook("info")
    assert bad.returncode == 3
    assert "401" in bad.stderr and "wrong-token" not in bad.stderr


def test_run_all_roles_in_one_process(cluster: Cluster, redis_url: str) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    [emu_url] = cluster.start_services("emulator")
    ingress_port = free_port()
    run = cluster.start(
        "run",
        ["run"],
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": emu_url,
            "TELEGRAM_POLL_TIMEOUT": "1",
            "REDIS_URL": redis_url,
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(ingress_port),
        },
    )
    wait_port(ingress_port, run)
    with httpx.Client(base_url=emu_url, timeout=30) as client:
        client.post("/_emu/send", json={"user_id": ALICE, "text": "hello"}).raise_for_status()
        resp = client.get(f"/_emu/chats/{ALICE}/messages", params={"wait": 1, "timeout": 25})
    assert resp.status_code == 200, cluster.logs()
    assert cluster.stop_all()["run"] == 0, cluster.logs()
