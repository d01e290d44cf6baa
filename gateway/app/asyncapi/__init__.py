"""The AsyncAPI 3.0 document of the public streams (``tg-gateway asyncapi``).

- ``envelopes``: the envelopes as pydantic models of their wire form (no FastStream)
- ``document``: the FastStream broker that declares the streams, and the document itself

Importing this package loads neither; only ``document`` imports FastStream.
"""
