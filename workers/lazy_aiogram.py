"""Import aiogram with its pydantic models built on first use, not all at import.

aiogram's ``types/__init__`` rebuilds all of its ~450 models eagerly: about 89 MB of RSS
on CPython 3.11 (``TG_GATEWAY_EAGER_AIOGRAM=1 python -m bench.idle_rss``), which put every
worker and sender near 185 MB idle. The gateway touches a
few dozen of them. While aiogram imports, its own ``model_rebuild`` calls are recorded
instead of run; then every aiogram module gets the type names it imports only under
TYPE_CHECKING, so pydantic can resolve a model's forward references whenever it first
builds it (alone, or inside ``Response[Message]`` at call time). Measured: idle worker
~96 MB, sender ~93 MB (``bench/idle_rss.py``). ``TG_GATEWAY_EAGER_AIOGRAM=1`` turns this
off; any surprise during the import falls back to the normal import.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import pydantic

log = logging.getLogger(__name__)

_state = {"lazy": False}


def lazy() -> bool:
    """True if this process imported aiogram lazily."""
    return _state["lazy"]


def _subclasses(cls: type) -> Iterator[type]:
    sub: type
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def import_aiogram() -> bool:
    """Import aiogram (lazily when possible); returns whether the lazy path was taken."""
    if "aiogram" in sys.modules or os.environ.get("TG_GATEWAY_EAGER_AIOGRAM") == "1":
        return False
    original = pydantic.BaseModel.__dict__["model_rebuild"]
    recorded: list[tuple[type, dict[str, Any]]] = []

    def deferred(cls: type[pydantic.BaseModel], *args: Any, **kwargs: Any) -> bool | None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not str(caller).startswith("aiogram"):
            return original.__func__(cls, *args, **kwargs)  # type: ignore[no-any-return]
        recorded.append((cls, kwargs))
        return None

    pydantic.BaseModel.model_rebuild = classmethod(deferred)  # type: ignore[method-assign,assignment]
    # Models aiogram does not rebuild itself are completed at class creation: pydantic's
    # own ``defer_build`` default, switched on only while aiogram imports, builds them on
    # first use instead (with the loop below, 0.15-0.2 s less CPU per role start:
    # ``/usr/bin/time .venv/bin/python -c 'import gateway.app.roles'``, against this
    # file as of 7cd7d79). A private dict: if a pydantic release drops it, this part is
    # skipped and the import stays correct.
    from pydantic._internal import _config

    defaults: dict[str, Any] = getattr(_config, "config_defaults", {})
    defer_before = defaults.get("defer_build", False)
    if "defer_build" in defaults:
        defaults["defer_build"] = True
    try:
        import aiogram.methods
        import aiogram.types
    except Exception:  # pragma: no cover - an aiogram/pydantic we do not know
        pydantic.BaseModel.model_rebuild = original  # type: ignore[method-assign]
        for name in [m for m in sys.modules if m == "aiogram" or m.startswith("aiogram.")]:
            del sys.modules[name]
        log.warning("lazy aiogram import failed; importing eagerly", exc_info=True)
        import aiogram

        return False
    finally:
        pydantic.BaseModel.model_rebuild = original  # type: ignore[method-assign]
        if "defer_build" in defaults:
            defaults["defer_build"] = defer_before
    types_ns = {k: v for k, v in vars(aiogram.types).items() if not k.startswith("_")}
    for _, kw in recorded:  # names aiogram passed to its rebuilds (List, Optional, Default)
        for name, value in (kw.get("_types_namespace") or {}).items():
            types_ns.setdefault(name, value)
    # Models built later as parts of others (``Response[Message]`` is parametrized at call
    # time) resolve forward refs in their own module's globals, where aiogram imports the
    # types only under TYPE_CHECKING: give every aiogram module the names it lacks.
    # (One C-level dict update per module, not a setdefault per name: ~890 names times
    # ~735 modules.)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("aiogram.") and module is not None:
            module_ns = vars(module)
            module_ns.update({**types_ns, **module_ns})
    _state["lazy"] = True
    return True
