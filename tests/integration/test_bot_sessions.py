"""Each bot's aiogram session (``gateway.app.roles.make_bot``): its own connection pool,
one TLS context for the process (aiogram's constructor builds a new one per session, 40 ms
of CPU on the event loop), and closing one bot's session leaves the others working."""

from __future__ import annotations

from aiogram.client.session.aiohttp import AiohttpSession

from gateway.app.roles import make_bot
from gateway.core.settings import TelegramSettings, load
from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN

SECOND = "7001234567:SECONDsecondSECONDsecond0000000"


async def test_bots_get_their_own_sessions_on_one_tls_context(emu: Emulator) -> None:
    emu.add_bot(SECOND, username="second_bot")
    tg = load(TelegramSettings, telegram_bot_token=TOKEN, telegram_api_url=emu.api_url)
    first, second = make_bot(tg, TOKEN), make_bot(tg, SECOND)
    a, b = first.session, second.session
    assert isinstance(a, AiohttpSession) and isinstance(b, AiohttpSession)
    assert a is not b and a.middleware is not b.middleware
    assert a._connector_init["ssl"] is b._connector_init["ssl"]  # built once, not per bot
    try:
        assert (await first.get_me()).username != (await second.get_me()).username
        await a.close()
        assert (await second.get_me()).username == "second_bot"  # its own pool still open
        assert a._session is None or a._session.closed
    finally:
        await a.close()
        await b.close()
