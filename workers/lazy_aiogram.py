"""Import aiogram with its pydantic models built on first use, not all at import.

aiogram's ``types/__init__`` rebuilds all of its ~450 models eagerly: about 105 MB of RSS
on CPython 3.11, which put every worker and sender near 180 MB idle. The gateway touches a
few dozen of them. While aiogram imports, its own ``model_rebuild`` calls are recorded
instead of run; each incomplete model then gets the namespace that call would have used,
and pydantic builds it the first time it validates (measured: 74 MB with every fixture
update and every method the sender uses). ``TG_GATEWAY_EAGER_AIOGRAM=1`` turns this off;
any surprise falls back to the normal import.
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
    types_ns = {k: v for k, v in vars(aiogram.types).items() if not k.startswith("_")}
    given = {cls: kw.get("_types_namespace") or {} for cls, kw in recorded}
    for cls in set(_subclasses(pydantic.BaseModel)):
        if not cls.__module__.startswith("aiogram"):
            continue
        if getattr(cls, "__pydantic_complete__", True):
            continue
        namespace = dict(types_ns)
        namespace.update(vars(sys.modules[cls.__module__]))
        namespace.update(given.get(cls, {}))
        cls.__pydantic_parent_namespace__ = namespace  # type: ignore[attr-defined]
    # Models built later as parts of others (``Response[Message]`` is parametrized at call
    # time) resolve forward refs in their own module's globals, where aiogram imports the
    # types only under TYPE_CHECKING: give every aiogram module the names it lacks.
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("aiogram.") and module is not None:
            module_ns = vars(module)
            for name, value in types_ns.items():
                module_ns.setdefault(name, value)
    _state["lazy"] = True
    return True
