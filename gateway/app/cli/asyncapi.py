"""``tg-gateway asyncapi``: the AsyncAPI 3.0 document of the public streams, generated with
FastStream (``gateway/app/asyncapi/``), checked in as ``docs/asyncapi.yaml``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gateway.core.errors import UsageError

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands

CHECKED_IN = "docs/asyncapi.yaml"
REGENERATE = f"tg-gateway asyncapi --output {CHECKED_IN}"


def cmd_asyncapi(args: argparse.Namespace) -> int:
    """Print the document, or write it to ``--output``; no Redis, no settings read."""
    output: Path | None = args.output
    json_file = output is not None and output.suffix == ".json"
    fmt: Literal["yaml", "json"] = args.format or ("json" if json_file else "yaml")
    if fmt == "yaml" and importlib.util.find_spec("yaml") is None:
        raise UsageError(
            "--format yaml needs PyYAML: pip install 'tg-gateway[docs]', or use --format json"
        )
    from gateway.app.asyncapi.document import render  # FastStream is loaded here, not before

    return write_document(render(fmt), output, f"the AsyncAPI document ({fmt})")


def write_document(text: str, output: Path | None, what: str) -> int:
    """A generated document to stdout, or to ``output`` (``tg-gateway asyncapi|openapi``)."""
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {output}: {exc.strerror or exc}") from None
    print(f"wrote {what} to {output}", file=sys.stderr)
    return 0


def add_asyncapi(sub: Subcommands) -> None:
    doc = sub.add_parser(
        "asyncapi",
        help="the AsyncAPI 3.0 document of the streams (YAML or JSON)",
        description="Writes the AsyncAPI 3.0 description of the public streams (updates, "
        "outbound, results, dead, parked) and their envelopes, generated with FastStream; "
        f"no connection. The checked-in copy is {CHECKED_IN} (`{REGENERATE}`); view it "
        f"with `faststream docs serve {CHECKED_IN}`.",
    )
    doc.add_argument(
        "--format",
        choices=["yaml", "json"],
        help="default: json for an --output ending in .json, else yaml",
    )
    doc.add_argument("--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    doc.set_defaults(func=cmd_asyncapi)
