"""``tg-gateway openapi``: the OpenAPI 3.1 document of the ingress's HTTP API
(``gateway/ingress/openapi/``), checked in as ``docs/openapi.json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.app.cli.asyncapi import write_document

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands

CHECKED_IN = "docs/openapi.json"
REGENERATE = f"tg-gateway openapi --output {CHECKED_IN}"


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the document, or write it to ``--output``; no Redis, no settings read."""
    from gateway.ingress.openapi.document import render

    return write_document(render(), args.output, "the OpenAPI document")


def add_openapi(sub: Subcommands) -> None:
    doc = sub.add_parser(
        "openapi",
        help="the OpenAPI 3.1 document of the ingress's HTTP API (JSON)",
        description="Writes the OpenAPI 3.1 description of the ingress's routes (webhook, "
        "callback, files, health, metrics) with every answer they give; no connection, no "
        f"setting read. The checked-in copy is {CHECKED_IN} (`{REGENERATE}`); a running "
        "ingress serves the same at /openapi.json with OPENAPI_ENABLED=true.",
    )
    doc.add_argument("--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    doc.set_defaults(func=cmd_openapi)
