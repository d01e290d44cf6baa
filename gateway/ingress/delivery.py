"""``POST /api/delivery/{token}``: a pipeline's reply → the outbound stream.

The token (``gateway.core.tokens``) names the bot, update and chat it answers. The bot
must be one this deployment serves (403 ``bot not served``: unknown, or removed from the
registry; a bot being removed still gets its replies while it drains), and the token is
checked with that bot's key (``delivery_key``: its own ``delivery_secret``, else
DELIVERY_SECRET; neither: 503). With
``CALLBACK_SIGNING_KEYS`` the request must also carry a Standard Webhooks signature
(checked on the headers before the body is read, then on the body). 200 only once every
part of the reply is stored; 503 (retry) if Redis does not take it in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from gateway.core.bot_keys import delivery_key
from gateway.core.contracts import REPLIED_TTL
from gateway.core.drafts import DRAFT_FINAL_TTL, Draft, draft_id
from gateway.core.errors import (
    DeliveryTokenError,
    RedisUnavailable,
    ReplyShapeError,
    SignatureError,
)
from gateway.core.replies import Reply, parse_reply, reply_entries
from gateway.core.signing import SigningKeys, check_headers
from gateway.core.status_urls import reply_status_url, with_status_url
from gateway.core.tokens import route_bot_id, verify_route
from gateway.ingress.config import IngressConfig
from gateway.ingress.http import STORAGE_ERROR, Door, Receive, Scope, Send, json_response
from gateway.ingress.http import text_headers as _text_headers
from gateway.runtime.bots import BotRegistry
from gateway.runtime.streams import publish_outbound

log = logging.getLogger(__name__)


class Delivery:
    """The callback endpoint of one ingress (``redis`` is read per request: the app
    creates its client in the lifespan)."""

    def __init__(
        self,
        config: IngressConfig,
        door: Door,
        redis: Callable[[], aioredis.Redis | None],
        bots: BotRegistry,
    ) -> None:
        self.config = config
        self.door = door
        self._redis = redis
        self._bots = bots
        self._stored = door.observe.callbacks["stored"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        refuse = self.door.refuse
        try:
            bot_id = route_bot_id(token)  # claimed: its key says whether it is true
        except DeliveryTokenError as exc:
            await refuse(send, "delivery", "bad_token", 403, f"invalid delivery token: {exc}")
            return
        secret = self.config.delivery_secret
        if bot_id != self.config.bot_id:  # not the default bot: the registry's, if served
            bot = await self._bots.lookup(bot_id)
            if bot is None:
                error = "bot not served: the token's bot is not one this deployment serves"
                await refuse(send, "delivery", "bot_not_served", 403, error)
                return
            secret = delivery_key(bot, secret)
        if secret is None:
            error = "delivery disabled: no DELIVERY_SECRET (nor the bot's delivery_secret)"
            await refuse(send, "delivery", "delivery_disabled", 503, error)
            return
        try:
            route = verify_route(secret, token, bot_id=bot_id)
        except DeliveryTokenError as exc:
            await refuse(send, "delivery", "bad_token", 403, f"invalid delivery token: {exc}")
            return
        keys = self.config.callback_keys
        signed = _text_headers(scope) if keys else {}
        if keys and not await self._signed(send, route.update_id, signed, None, keys):
            return  # refused before reading the body: missing, malformed or stale
        body = await self.door.read_json_body(scope, receive, send, "delivery")
        if body is None:
            return
        if keys and not await self._signed(send, route.update_id, signed, body, keys):
            return
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await refuse(send, "delivery", "bad_json", 400, f"body is not valid JSON: {exc}")
            return
        try:
            reply = parse_reply(data, self.config.reply_fields)
            status_url = reply_status_url(data, self.config.status_urls)
        except ReplyShapeError as exc:
            await refuse(send, "delivery", "bad_reply", 422, str(exc))
            return
        entries = reply_entries(route, reply, origin="pipeline", ttl=self.config.outbound_ttl)
        entries = with_status_url(entries, status_url)
        if not entries:  # a draft for a chat that shows none: the final will be sent
            skipped = "skipped: drafts are shown in private chats only; send the final reply"
            await json_response(send, 200, {"ok": True, "reply_ids": [], "draft": skipped})
            return
        redis = self._redis()
        assert redis is not None
        # The update is answered: its typing indicator stops (workers/worker/typing_indicator.py).
        names = self.config.keys
        marks = [(names.replied(route.bot_id, route.chat_id, route.update_id), REPLIED_TTL)]
        if isinstance(reply, Reply) and reply.reply_key is not None:  # a streamed reply's final
            drafted = draft_id(route, reply.reply_key)
            marks.append((names.draft_final(route.bot_id, route.chat_id, drafted), DRAFT_FINAL_TTL))
        try:
            async with asyncio.timeout(self.config.store_timeout):
                await publish_outbound(redis, names, entries, marks=marks)
        except TimeoutError:
            log.warning(
                "reply for update %s not stored: no answer from Redis within %gs",
                route.update_id,
                self.config.store_timeout,
            )
            await refuse(send, "delivery", "storage_unavailable", 503, STORAGE_ERROR)
            return
        except RedisUnavailable as exc:
            log.warning("reply for update %s not stored: %s", route.update_id, exc)
            await refuse(send, "delivery", "storage_unavailable", 503, STORAGE_ERROR)
            return
        self._stored.inc()
        answer: dict[str, object] = {"ok": True, "reply_ids": [e.reply_id for e in entries]}
        if isinstance(reply, Draft):
            answer["draft_id"] = draft_id(route, reply.reply_key)
        await json_response(send, 200, answer)

    async def _signed(
        self,
        send: Send,
        update_id: int,
        headers: dict[str, str],
        body: bytes | None,
        keys: SigningKeys,
    ) -> bool:
        """Check a callback's Standard Webhooks headers (``body`` None: all but the HMAC);
        on failure answer 401 with the reason (counted: ``bad_signature``), return False."""
        try:
            if body is None:
                check_headers(headers, time.time())
            else:
                keys.verify(headers, body, time.time())
        except SignatureError as exc:
            log.info("callback for update %s refused: %s (%s)", update_id, exc.reason, exc)
            self.door.observe.rejected("delivery", "bad_signature")
            error = f"signature refused: {exc}"
            await json_response(send, 401, {"ok": False, "error": error, "reason": exc.reason})
            return False
        return True
