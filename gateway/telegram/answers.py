"""What the gateway does with a failed Bot API call: one table, for both Telegram clients.

Both edges feed it: aiogram's exceptions (the sender) and ``BotApiError`` of the raw
httpx client (the poller, start-up, the CLI) are first reduced to one ``Answer`` (the
method, Telegram's ``error_code``, description and parameters), then ``decide`` walks
``TABLE`` top to bottom and the first matching row says what to do:

    Wait(seconds)   429 with retry_after: wait that long, then send again (no budget spent)
    Retry(detail)   transient (no answer, 5xx, HTML): retry with backoff, within a budget
    Resend(...)     send again changed, once: at the new chat id, or without parse_mode;
                    ``otherwise`` says what to do if that was already tried
    Dead(reason)    permanent: never retried; the sender dead-letters with the reason code
    Fatal(message)  the configuration is wrong (401 token, 409 webhook/polling): stop the role
    Done(detail)    what the call asked for already holds (an edit to the text the message
                    has, a delete of a message already gone): count it as done

Callers that cannot dead-letter (getUpdates, getMe) treat ``Dead`` as ``Fatal``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from gateway.core.contracts import Reason
from gateway.core.errors import TelegramFatal
from gateway.telegram.client import BotApiError

NO_ANSWER = 0
"""``Answer.code`` of a call that got no usable answer: network error, timeout, non-JSON."""

UNAUTHORIZED_HELP = "Telegram answered 401 Unauthorized: TELEGRAM_BOT_TOKEN is wrong or revoked."
CONFLICT_HELP = (
    "Telegram answered 409: {description}. A webhook is set or another process polls this "
    "bot. Run `tg-gateway webhook delete` (or set TELEGRAM_WEBHOOK_URL to use webhook mode), "
    "and run one polling ingress per bot."
)
INGRESS_METHODS = frozenset({"getUpdates", "setWebhook", "deleteWebhook", "getWebhookInfo"})
"""Methods whose 409 names a configuration error (webhook vs polling, two pollers)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A failed Bot API call, whichever client made it."""

    method: str
    code: int  # Telegram's error_code (= HTTP status); NO_ANSWER for none
    description: str
    retry_after: int | None = None
    migrate_to_chat_id: int | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: int


@dataclass(frozen=True, slots=True)
class Retry:
    detail: str


@dataclass(frozen=True, slots=True)
class Dead:
    reason: Reason
    code: int | None
    description: str


@dataclass(frozen=True, slots=True)
class Resend:
    otherwise: Dead  # what to do if this resend was already made
    chat_id: int | None = None  # send to this chat id instead (a group became a supergroup)
    plain: bool = False  # send without parse_mode (Telegram could not parse the entities)


@dataclass(frozen=True, slots=True)
class Fatal:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Done:
    detail: str


Decision = Wait | Retry | Resend | Dead | Fatal | Done


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: which answers it matches, and the decision it builds."""

    codes: range
    decide: Callable[[Answer], Decision]
    text: str | None = None  # a lower-case piece of the description that must appear
    methods: frozenset[str] | None = None  # None: any method
    migrate: bool = False  # matches only answers carrying migrate_to_chat_id

    def matches(self, a: Answer) -> bool:
        return (
            a.code in self.codes
            and (self.text is None or self.text in a.description.lower())
            and (self.methods is None or a.method in self.methods)
            and (not self.migrate or a.migrate_to_chat_id is not None)
        )


def _code(code: int) -> range:
    return range(code, code + 1)


def _dead(reason: Reason) -> Callable[[Answer], Decision]:
    return lambda a: Dead(reason, a.code, a.description)


def _retry(a: Answer) -> Decision:
    return Retry(f"{a.code or 'no answer'} {a.description}".strip())


def _done(a: Answer) -> Decision:
    return Done(a.description)


TABLE: tuple[Row, ...] = (
    Row(_code(NO_ANSWER), _retry),
    Row(_code(429), lambda a: Wait(a.retry_after) if a.retry_after else _retry(a)),
    Row(
        range(400, 500),
        lambda a: Resend(
            Dead(Reason.BAD_REQUEST, a.code, "migrated twice"), chat_id=a.migrate_to_chat_id
        ),
        migrate=True,
    ),
    Row(
        _code(400),
        lambda a: Resend(Dead(Reason.BAD_REQUEST, a.code, a.description), plain=True),
        text="can't parse entities",
    ),
    Row(_code(400), _dead(Reason.CHAT_NOT_FOUND), text="chat not found"),
    # A redone edit or delete (a crash after Telegram's 200, a redelivery) finds it done.
    Row(_code(400), _done, text="message is not modified", methods=frozenset({"editMessageText"})),
    Row(
        _code(400), _done, text="message to delete not found", methods=frozenset({"deleteMessage"})
    ),
    Row(_code(401), lambda a: Fatal(401, UNAUTHORIZED_HELP)),
    Row(_code(403), _dead(Reason.BOT_BLOCKED)),
    Row(
        _code(409),
        lambda a: Fatal(409, CONFLICT_HELP.format(description=a.description)),
        methods=INGRESS_METHODS,
    ),
    Row(range(400, 500), _dead(Reason.BAD_REQUEST)),  # 400, 404, 409 on a send, 413, ...
    Row(range(500, 600), _retry),
)
"""First match wins. An answer no row matches (a 3xx, a code outside HTTP) is retried."""


def answer_of(exc: BaseException) -> Answer | None:
    """The ``Answer`` an exception of either client stands for; None if it is no Bot API
    failure (a bug, Redis, a cancellation: those are not the table's business)."""
    if isinstance(exc, BotApiError):
        return Answer(
            exc.method, exc.error_code, exc.description, exc.retry_after, exc.migrate_to_chat_id
        )
    if not type(exc).__module__.startswith("aiogram."):
        return None  # (checked by name: the ingress, which never raises them, never loads aiogram)
    return _aiogram_answer(exc)


def _aiogram_answer(exc: BaseException) -> Answer | None:
    from aiogram.exceptions import (
        ClientDecodeError,
        TelegramAPIError,
        TelegramMigrateToChat,
        TelegramRetryAfter,
        TelegramServerError,
    )

    if isinstance(exc, ClientDecodeError):  # an HTML page or a body that is not an answer
        return Answer("", NO_ANSWER, exc.message)
    if not isinstance(exc, TelegramAPIError):
        return None
    method = type(exc.method).__name__
    method = method[:1].lower() + method[1:]  # aiogram's SendMessage -> sendMessage
    if isinstance(exc, TelegramRetryAfter):
        return Answer(method, 429, exc.message, retry_after=exc.retry_after)
    if isinstance(exc, TelegramMigrateToChat):
        return Answer(method, 400, exc.message, migrate_to_chat_id=exc.migrate_to_chat_id)
    code = _aiogram_codes().get(type(exc))
    if code is None:
        # TelegramServerError (RestartingTelegram too): 5xx. TelegramNetworkError (aiohttp
        # failed, timed out), or aiogram's catch-all for a status it has no class for (its
        # code is not kept): treated as no answer.
        code = 500 if isinstance(exc, TelegramServerError) else NO_ANSWER
    return Answer(method, code, exc.message)


@cache
def _aiogram_codes() -> dict[type[BaseException], int]:
    from aiogram.exceptions import (
        TelegramBadRequest,
        TelegramConflictError,
        TelegramEntityTooLarge,
        TelegramForbiddenError,
        TelegramNotFound,
        TelegramUnauthorizedError,
    )

    return {
        TelegramBadRequest: 400,
        TelegramUnauthorizedError: 401,
        TelegramForbiddenError: 403,
        TelegramNotFound: 404,
        TelegramConflictError: 409,
        TelegramEntityTooLarge: 413,
    }


def decide(answer: Answer) -> Decision:
    """The first row of ``TABLE`` that matches ``answer``, applied to it."""
    for row in TABLE:
        if row.matches(answer):
            return row.decide(answer)
    return _retry(answer)


def classify(exc: BaseException) -> Decision | None:
    """``decide(answer_of(exc))``; None if ``exc`` is not a Bot API failure."""
    answer = answer_of(exc)
    return None if answer is None else decide(answer)


def fatal(decision: Decision, exc: BaseException) -> TelegramFatal:
    """The ``TelegramFatal`` that stops a role for ``decision``: a ``Fatal``'s own help
    text, or, where the caller has nothing to dead-letter, the permanent answer itself."""
    if isinstance(decision, Fatal):
        return TelegramFatal(decision.message, decision.code)
    answer = answer_of(exc)
    code = answer.code if answer is not None else NO_ANSWER
    method = answer.method if answer is not None else "a Bot API call"
    description = answer.description if answer is not None else type(exc).__name__
    return TelegramFatal(
        f"Telegram answered {code} to {method} ({description}): a permanent error, "
        "retrying will not help; check TELEGRAM_API_URL and TELEGRAM_BOT_TOKEN",
        code,
    )
