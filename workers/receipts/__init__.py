"""Delivery receipts: the ``receipts`` consumer group on ``{prefix}:results``, run as lanes
inside the worker role (``gateway.app.roles.serve_worker``)."""
