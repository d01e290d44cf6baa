"""Webhook delivery: POST pending updates, in order per chat, chats concurrently, with retries."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from gateway.core.tasks import cancel_and_wait
from gateway.testkit.emulator.notify import Signal
from gateway.testkit.emulator.objects import Obj
from gateway.testkit.emulator.state import EmulatorState, WebhookConfig

log = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
MAX_BACKOFF = 2.0


class WebhookDeliverer:
    """Runs while the emulator runs; delivers whenever a webhook is set and updates are pending."""

    def __init__(
        self, state: EmulatorState, signal: Signal, retry_delay: float, timeout: float = 10.0
    ) -> None:
        self.state = state
        self.signal = signal
        self.retry_delay = retry_delay
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._main: asyncio.Task[None] | None = None
        self._active: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Start delivering (from the event loop's thread: it creates the session and task)."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        self._main = asyncio.create_task(self._run(), name="emulator-webhook")

    async def stop(self) -> None:
        await cancel_and_wait(self._main, *self._active.values(), errors=True)
        self._main = None
        self._active.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _startable(self) -> list[str]:
        """Chats with pending updates and no delivery in flight, within max_connections."""
        hook = self.state.webhook
        if hook is None:
            return []
        room = hook.max_connections - len(self._active)
        out: list[str] = []
        for key in self.state.chat_keys():
            if room <= len(out):
                break
            if key not in self._active and self.state.head(key, hook.allowed_updates):
                out.append(key)
        return out

    async def _run(self) -> None:
        while True:
            ready = await self.signal.wait_for(self._startable, 3600.0)
            hook = self.state.webhook
            if hook is None:
                continue
            for key in ready:
                self._active[key] = asyncio.create_task(self._deliver_chat(key, hook))

    async def _deliver_chat(self, key: str, hook: WebhookConfig) -> None:
        """Deliver one chat's updates one at a time until none are left or the webhook changes."""
        try:
            while self.state.webhook is hook:
                update = self.state.head(key, hook.allowed_updates)
                if update is None:
                    return
                if await self._deliver(hook, update):
                    self.state.remove_update(update["update_id"])
        finally:
            self._active.pop(key, None)
            self.signal.fire()

    async def _deliver(self, hook: WebhookConfig, update: Obj) -> bool:
        """Retry one update with exponential backoff; False when the webhook changed."""
        delay = self.retry_delay
        while self.state.webhook is hook:
            self.state.count_attempt(update["update_id"])
            error = await self._post(hook, update)
            if error is None:
                return True
            log.debug("webhook delivery of %s failed: %s", update["update_id"], error)
            self.state.webhook_error(error)
            await self.signal.wait_for(lambda: self.state.webhook is not hook, delay)
            delay = min(delay * 2, MAX_BACKOFF)
        return False

    async def _post(self, hook: WebhookConfig, update: Obj) -> str | None:
        """None on a 2xx answer, else Telegram's ``last_error_message`` wording."""
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if hook.secret_token:
            headers[SECRET_HEADER] = hook.secret_token
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.post(
                    hook.url, data=orjson.dumps(update), headers=headers
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return None
                    return f"Wrong response from the webhook: {resp.status} {resp.reason}"
        except TimeoutError:
            return "Read timeout expired"
        except aiohttp.ClientConnectorError:
            return "Connection refused"
        except aiohttp.ClientError as exc:
            return f"Connection error: {type(exc).__name__}"
