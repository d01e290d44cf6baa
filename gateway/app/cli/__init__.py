"""The ``tg-gateway`` command (also ``python -m gateway``): one subcommand per role and task.

Part of the composition root (``gateway.app``): each subcommand imports its role's modules
when it runs, so ``tg-gateway ingress`` never loads ``workers`` or aiogram. ``main`` runs
one and turns every failure a user can cause or fix into one stderr line and an exit code
(``gateway.app.running``); the subcommands live by group:

- ``parser``: the parser, the subcommands in ``--help``'s order; ``argtypes``: its types
- ``serve``: ``ingress``, ``worker``, ``sender``, ``run``, ``check-config``, ``webhook``
- ``testkit``: ``emulator``, ``pipeline``, ``sandbox``
- ``send``: ``send``; ``ops``: ``health``, ``dlq``, ``streams``, ``layout``
- ``bots``: ``bots add|list|show|rotate-token``; ``bots_remove``: ``bots remove``
- ``tapes``: ``record``, ``replay``, ``diff``; ``load``: ``load``
- ``asyncapi``: ``asyncapi`` (loads FastStream only when it runs); ``openapi``: ``openapi``
- ``timeouts``: how long the operator's commands wait for Redis (``bounded``)
"""

from __future__ import annotations

import os
import sys

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.app.cli.parser import build_parser
from gateway.app.cli.timeouts import REDIS_BULK_TIMEOUT, REDIS_COMMAND_TIMEOUT
from gateway.app.running import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PIPE_CLOSED,
    EXIT_UNAVAILABLE,
)
from gateway.core.errors import (
    ConfigError,
    GatewayError,
    RedisUnavailable,
    TelegramFatal,
    UsageError,
)
from gateway.core.redact import redact_url
from gateway.core.settings import RedisSettings, load

__all__ = ["REDIS_BULK_TIMEOUT", "REDIS_COMMAND_TIMEOUT", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure a user can cause or fix is one stderr line."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
        return code
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, f"configuration error: {exc}")
    except UsageError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except TelegramFatal as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except RedisUnavailable as exc:
        return _fail(EXIT_UNAVAILABLE, f"Redis unreachable at {_redis_url()}: {exc}")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _fail(EXIT_UNAVAILABLE, f"Redis unreachable at {_redis_url()}: {_reason(exc)}")
    except GatewayError as exc:
        return _fail(EXIT_FAILED, f"{type(exc).__name__}: {exc}")
    except BrokenPipeError:
        # The reader went away (`streams | head`): end quietly. Python's recipe: point
        # stdout at devnull so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(code: int, message: str) -> int:
    """One line on stderr, credentials in any URL in it redacted; returns ``code``."""
    print(f"tg-gateway: {redact_url(message)}", file=sys.stderr)
    return code


def _redis_url() -> str:
    """The REDIS_URL the command used (its settings loaded before it connected)."""
    try:
        return load(RedisSettings).redis_url
    except ConfigError:
        return "REDIS_URL"


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed connection (``Connection refused``), else redis-py's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            return os.strerror(seen.errno) if seen.errno else str(seen.strerror)
        if isinstance(seen, TimeoutError | RedisTimeoutError):
            return f"timed out ({seen})" if str(seen) else "timed out"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
