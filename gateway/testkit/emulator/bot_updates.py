"""Bot API: getMe, getUpdates (long poll) and the webhook methods."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gateway.testkit.emulator.api import Described, method
from gateway.testkit.emulator.errors import TERMINATED, WEBHOOK_ACTIVE, ApiError, bad_request
from gateway.testkit.emulator.params import Params

if TYPE_CHECKING:
    from gateway.testkit.emulator.core import EmulatorCore

_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _clamp(value: int | None, low: int, high: int, default: int) -> int:
    return default if value is None else max(low, min(high, value))


@method("getMe")
async def get_me(emu: EmulatorCore, p: Params) -> Any:
    return {
        **emu.state.bot,
        "can_join_groups": True,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
    }


@method("getUpdates")
async def get_updates(emu: EmulatorCore, p: Params) -> Any:
    state = emu.state
    if state.webhook is not None:
        raise ApiError(409, WEBHOOK_ACTIVE)
    offset = p.integer("offset")
    limit = _clamp(p.integer("limit"), 1, 100, 100)
    timeout = min(max(p.number("timeout"), 0.0), emu.max_poll_timeout)
    allowed = p.str_list("allowed_updates")
    if allowed is not None:
        state.poll_allowed = allowed
    state.poll_generation += 1
    mine = state.poll_generation
    emu.signal.fire()  # an earlier long poll still waiting now answers 409
    if offset is not None:
        state.confirm(offset)

    def done() -> bool:
        if state.poll_generation != mine or state.webhook is not None or emu.closing:
            return True
        return bool(state.fetch(limit, state.poll_allowed))

    await emu.signal.wait_for(done, timeout)
    if state.poll_generation != mine:
        raise ApiError(409, TERMINATED)
    if state.webhook is not None:
        raise ApiError(409, WEBHOOK_ACTIVE)
    return state.fetch(limit, state.poll_allowed)


@method("setWebhook")
async def set_webhook(emu: EmulatorCore, p: Params) -> Any:
    state = emu.state
    url = (p.text("url") or "").strip()
    if not url:
        return await delete_webhook(emu, p)
    if not url.lower().startswith(("http://", "https://")):
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    secret = p.text("secret_token") or None
    if secret is not None and not _SECRET.fullmatch(secret):
        raise bad_request("secret token contains unallowed characters")
    max_connections = _clamp(p.integer("max_connections"), 1, 100, 40)
    allowed = p.str_list("allowed_updates")
    hook = state.webhook
    unchanged = (
        hook is not None
        and (hook.url, hook.secret_token, hook.max_connections) == (url, secret, max_connections)
        and (allowed is None or allowed == hook.allowed_updates)
    )
    if p.flag("drop_pending_updates"):
        state.drop_pending()
    if unchanged:
        return Described(True, "Webhook is already set")
    state.set_webhook(url, secret, max_connections, allowed)
    return Described(True, "Webhook was set")


@method("deleteWebhook")
async def delete_webhook(emu: EmulatorCore, p: Params) -> Any:
    state = emu.state
    if p.flag("drop_pending_updates"):
        state.drop_pending()
    if state.webhook is None:
        return Described(True, "Webhook is already deleted")
    state.delete_webhook()
    return Described(True, "Webhook was deleted")


@method("getWebhookInfo")
async def get_webhook_info(emu: EmulatorCore, p: Params) -> Any:
    return emu.state.webhook_info()


@method("logOut")
async def log_out(emu: EmulatorCore, p: Params) -> Any:
    return True


@method("close")
async def close(emu: EmulatorCore, p: Params) -> Any:
    return True
