"""Every exception the project defines hangs under ``GatewayError`` and is drawn in its tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gateway
import workers
from gateway.core import errors
from gateway.core.errors import GatewayError


def _project_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in (gateway, workers):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue  # runs the CLI when imported
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if obj.__module__ == info.name and issubclass(obj, BaseException):
                    found.append(obj)
    return found


def test_every_project_exception_is_a_gateway_error() -> None:
    """No exception of gateway/ or workers/ stands outside the one root."""
    found = _project_exceptions()
    assert len(found) > 15  # the walk saw the whole project
    outside = [f"{e.__module__}.{e.__qualname__}" for e in found if not issubclass(e, GatewayError)]
    assert outside == []


def test_the_tree_in_the_docstring_names_every_exception() -> None:
    """The drawing in gateway.core.errors cannot fall behind the code."""
    doc = errors.__doc__ or ""
    missing = [e.__qualname__ for e in _project_exceptions() if e.__qualname__ not in doc]
    assert missing == []
