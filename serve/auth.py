"""API-key authentication for the server: ``Authorization: Bearer <key>`` on every route but ``/health``.

Keys come from a file (``embedrt serve --api-key-file FILE``: one key a line, blank lines
and ``#`` comment lines skipped) and from the ``EMBEDRT_API_KEYS`` variable (keys separated
by commas or newlines). When both are given the server accepts the keys of both: adding a
key to one source never disables the other's. A source that is given but holds no key is a
start-up error, not a server that silently runs open.

The server keeps only the SHA-256 digests of its keys. A presented key is hashed, and its
digest compared with :func:`hmac.compare_digest` against every key's digest, with no early
exit on a match: the time a check takes depends neither on how much of a key was right nor
on which key matched (hashing first also makes keys of another length cost the same
comparison). Keys appear in no log line, error message, ``repr``, ``/info`` or ``/metrics``.

Light: plain ASGI, imports nothing from the [serve] extra.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from embedrt.runtime.errors import ConfigurationError, Param

ENV_KEYS = "EMBEDRT_API_KEYS"
OPEN_PATHS = frozenset({"/health"})  # load balancers probe it without credentials
# Query parameters clients put keys in; a URL ends up in proxy logs and shell history.
QUERY_KEY_NAMES = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token"})
REALM = 'Bearer realm="embedrt"'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """The keys a server accepts, held as SHA-256 digests; never shown by ``repr`` or ``str``.

    Args:
        keys: the keys (each one printable ASCII without spaces; duplicates count once).

    Raises:
        ConfigurationError: no key is given.
    """

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(dict.fromkeys(_digest(key.encode("utf-8")) for key in keys))
        if not self._digests:
            raise ConfigurationError("no API key given; pass at least one key")

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} key{'s' if len(self) != 1 else ''})"

    __str__ = __repr__

    def matches(self, presented: bytes) -> bool:
        """Whether ``presented`` is one of the keys, in time independent of which and how close.

        Every key's digest is compared, also after a match (``|`` rather than ``or``).
        """
        digest = _digest(presented)
        found = False
        for expected in self._digests:
            found |= hmac.compare_digest(digest, expected)
        return found


def _check_key(key: str, where: str, params: tuple[Param, ...] = ()) -> str:
    """``key`` if an HTTP header can carry it (the message names ``where``, never the key)."""
    if not key.isascii() or not key.isprintable() or any(char.isspace() for char in key):
        raise ConfigurationError(
            f"{where}: an API key holds a space, a control or a non-ASCII character, which an "
            "Authorization header cannot carry; use printable ASCII without spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            params=params,
        )
    return key


def read_key_file(path: Path) -> list[str]:
    """The keys in ``path``: one a line; blank lines and lines starting with ``#`` skipped.

    Raises:
        ConfigurationError: the file cannot be read, is not UTF-8, holds no key, or a key
            holds a character a header cannot carry.
    """
    param = Param("api_key_file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigurationError(
            f"cannot read the API key file {path} ({reason}); give {{api_key_file}} a readable "
            "text file with one key a line", params=(param,),
        ) from err
    keys = [
        _check_key(line.strip(), f"{path} line {number} ({{api_key_file}})", (param,))
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not keys:
        raise ConfigurationError(
            f"the API key file {path} holds no key (only blank or # comment lines); put one key "
            "a line in it, or leave out {api_key_file} to serve without authentication",
            params=(param,),
        )
    return keys


def parse_env_keys(value: str) -> list[str]:
    """The keys in an ``EMBEDRT_API_KEYS`` value: separated by commas or newlines.

    Raises:
        ConfigurationError: the value holds no key, or a key holds a character a header
            cannot carry.
    """
    keys = [part.strip() for line in value.splitlines() for part in line.split(",")]
    keys = [_check_key(key, ENV_KEYS) for key in keys if key]
    if not keys:
        raise ConfigurationError(
            f"{ENV_KEYS} is set but holds no key; set it to keys separated by commas, or unset "
            "it to serve without authentication"
        )
    return keys


def load_api_keys(key_file: Path | None, environ: Mapping[str, str]) -> ApiKeys | None:
    """The keys of ``key_file`` and of ``environ[EMBEDRT_API_KEYS]`` together; None if neither is given.

    Raises:
        ConfigurationError: as :func:`read_key_file` and :func:`parse_env_keys`.
    """
    keys: list[str] = []
    if key_file is not None:
        keys += read_key_file(key_file)
    if ENV_KEYS in environ:
        keys += parse_env_keys(environ[ENV_KEYS])
    return ApiKeys(keys) if keys else None


class _Refusal:
    """Why a request is refused: a metrics label, the message and the WWW-Authenticate value."""

    def __init__(self, reason: str, message: str, challenge: str = REALM) -> None:
        self.reason = reason
        self.message = message
        self.challenge = challenge

    def body(self) -> bytes:
        """OpenAI's error shape (its clients raise their authentication error on the 401)."""
        error = {"message": self.message, "type": "invalid_request_error", "param": None,
                 "code": "invalid_api_key"}
        return json.dumps({"error": error}).encode("utf-8")


_HOW = "send the key in the header 'Authorization: Bearer <key>'"
_INVALID = f'{REALM}, error="invalid_token"'


class ApiKeyMiddleware:
    """ASGI middleware answering 401 to any request but ``/health`` without a valid key.

    Args:
        app: the application it guards.
        keys: the accepted keys.
        on_reject: called with the reason (``missing``, ``malformed``, ``invalid`` or
            ``key_in_query``) of each refusal, e.g. to count it.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys, on_reject: Callable[[str], None]) -> None:
        self.app = app
        self.keys = keys
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or refuse it."""
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self.on_reject(refusal.reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        body = refusal.body()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", refusal.challenge.encode()),
        ]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> _Refusal | None:
        """Why the request in ``scope`` is refused, or None when its key is valid."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        in_query = sorted({name for name, _ in query if name.lower() in QUERY_KEY_NAMES})
        if in_query:
            return _Refusal("key_in_query", (
                f"API keys are not accepted in the URL (query parameter {in_query[0]!r}): URLs are "
                f"kept in proxy and server logs. Remove it from the URL and {_HOW}"), _INVALID)
        values = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        if not values:
            return _Refusal("missing", f"no API key: this server requires one; {_HOW}")
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        token = token.strip()
        if len(values) > 1 or scheme.lower() != "bearer" or not token:
            return _Refusal("malformed", (
                "the Authorization header is not of the form 'Bearer <key>' (one header, the "
                f"Bearer scheme, a key); {_HOW}"), _INVALID)
        if not self.keys.matches(token.encode("latin-1")):
            return _Refusal("invalid", "the API key is not valid: it matches none of this server's "
                            "keys. Check the key the client sends.", _INVALID)
        return None
