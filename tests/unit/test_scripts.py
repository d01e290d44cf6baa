"""Every Lua script documents the KEYS and ARGV its source uses (gateway/runtime/scripts.py)."""

from __future__ import annotations

import re

import pytest

from gateway.runtime import scripts
from gateway.runtime.scripts import SCRIPTS, Script


def used(source: str, name: str) -> int:
    """The highest ``NAME[i]`` with a literal index in the source (0: none)."""
    return max((int(i) for i in re.findall(rf"\b{name}\[(\d+)\]", source)), default=0)


def test_scripts_lists_every_script_of_the_module() -> None:
    defined = {v for v in vars(scripts).values() if isinstance(v, Script)}
    assert defined == set(SCRIPTS)
    assert len({s.name for s in SCRIPTS}) == len(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_documented_keys_and_argv_cover_the_source(script: Script) -> None:
    """No KEYS[i] / ARGV[i] past the documented ones, unless the last says ``...`` (more)."""
    for doc, name in ((script.keys, "KEYS"), (script.argv, "ARGV")):
        if doc and doc[-1].startswith("..."):
            continue
        assert used(script.source, name) <= len(doc), (script.name, name)
        assert used(script.source, name) == len(doc), (script.name, name, "documented, unused")
