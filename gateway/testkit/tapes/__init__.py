"""Tapes: record a conversation from the streams, diff two recordings (issue 12).

``tape`` is the format and its reader/writer, ``redact`` what a tape may not carry,
``record`` reads the streams into a tape, ``diff`` compares the answers of two tapes.
The format is a public contract: ``docs/testing-with-tapes.md``.
"""
