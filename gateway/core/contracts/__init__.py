"""The one place that spells stream, group and key names, and the stream envelopes.

Every Redis key the gateway touches is built here; `gateway/` and `workers/` import
this package (``from gateway.core.contracts import Keys, OutboundEntry``) and never format
a key themselves. Entries are flat string fields (readable with XRANGE by testers and a
CRM) and carry a ``schema`` version.

- ``keys``: ``Keys`` (every stream and key name), the group names, ``partition_for``, the
  parking streams' hash tags
- ``encoding``: ``SCHEMA``, ``decode_fields``, ``EnvelopeError``
- ``updates``: the inbound envelope (``update_fields``, ``UpdateEntry``,
  ``extract_update_ids``)
- ``outbound``: the outbound envelope (``OutboundEntry``) and its ``result_fields``, with
  the outcome's ``result_status`` (``sent``, ``failed``, ``expired``)
- ``dead``: dead letters (``Stage``, ``Reason``, ``dead_fields``)
"""

from gateway.core.contracts.dead import Reason, Stage, dead_fields
from gateway.core.contracts.encoding import SCHEMA, EnvelopeError, decode_fields
from gateway.core.contracts.keys import (
    COUNTER_MINUTE_TTL,
    GROUP_RECEIPTS,
    GROUP_SENDERS,
    GROUP_WORKERS,
    PARK_CAP,
    PARK_TAGS,
    REPLIED_TTL,
    Keys,
    partition_for,
)
from gateway.core.contracts.outbound import (
    BUSINESS_METHODS,
    RESULT_STATUSES,
    OutboundEntry,
    OutboundMethod,
    ResultStatus,
    result_fields,
    result_status,
)
from gateway.core.contracts.updates import UpdateEntry, extract_update_ids, update_fields

__all__ = [
    "BUSINESS_METHODS",
    "COUNTER_MINUTE_TTL",
    "GROUP_RECEIPTS",
    "GROUP_SENDERS",
    "GROUP_WORKERS",
    "PARK_CAP",
    "PARK_TAGS",
    "REPLIED_TTL",
    "RESULT_STATUSES",
    "SCHEMA",
    "EnvelopeError",
    "Keys",
    "OutboundEntry",
    "OutboundMethod",
    "Reason",
    "ResultStatus",
    "Stage",
    "UpdateEntry",
    "dead_fields",
    "decode_fields",
    "extract_update_ids",
    "partition_for",
    "result_fields",
    "result_status",
    "update_fields",
]
