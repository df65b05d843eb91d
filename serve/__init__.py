"""embedrt's HTTP server (``embedrt serve``, the [serve] extra), on top of the library.

- ``config``: :class:`~embedrt.serve.config.ServerConfig`, the one frozen dataclass
  whose defaults the ``serve`` command, the app and the batcher all read (light: no extra).
- ``app``: the Starlette app and :func:`~embedrt.serve.app.serve` (needs the extra).
- ``schema``: request validation and the OpenAPI document, from the same limits.
- ``batcher``: the inference thread that coalesces concurrent requests into batches.
- ``metrics``: Prometheus metrics; it observes the batcher through its callback protocol.

Importing this package imports nothing from the [serve] extra.
"""
