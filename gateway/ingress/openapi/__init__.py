"""The OpenAPI 3.1 document of the ingress's HTTP API (``GET /openapi.json``,
``tg-gateway openapi``, ``docs/openapi.json``).

- ``bodies``: the schemas of the webhook's update and of the routes' answers
- ``replies``: the schema of a pipeline's callback body, from the parsers' constants
- ``paths``: the operations, every answer each route gives
- ``document``: the whole document; ``render`` (its JSON text), ``served`` (its bytes)
"""
