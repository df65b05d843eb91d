"""Request validation and the OpenAPI document of the embedding server.

Both are built from the same :class:`~embedrt.serve.config.ServerConfig`, so the
document states the limits the server enforces (``maxItems``, ``maxLength``, the
``dimensions`` range and the prompt names), and a request the document allows is one the
server accepts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from embedrt.runtime.errors import EmbedrtError, Param, json_spelling

from .config import ServerConfig

# The JSON field of each library keyword a request spells differently (OpenAI's
# ``dimensions`` is the runtime's ``truncate_dim``); every other keyword is its own field.
JSON_FIELDS = {"truncate_dim": "dimensions"}


def json_field(param: Param) -> str:
    """The request field that sets ``param``: ``dimensions`` for ``truncate_dim``."""
    return JSON_FIELDS.get(param.keyword, param.keyword)


def field_spelling(param: Param) -> str:
    """``param`` as a request spells it: ``"dimensions"``, ``"truncate": true``."""
    return json_spelling(Param(json_field(param), param.fix))


class RequestError(EmbedrtError, ValueError):
    """A request the server refuses; becomes a 4xx with a JSON error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, limit: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = param  # the JSON field at fault, reported as "param"
        self.limit = limit

    def body(self) -> dict[str, Any]:
        """The JSON error body (OpenAI's shape, plus the limit when one was exceeded)."""
        kind = "invalid_request_error" if self.status < 500 else (
            "server_unavailable" if self.status == 503 else "server_error")
        error: dict[str, Any] = {"message": str(self), "type": kind, "param": self.field, "code": self.status}
        if self.limit is not None:
            error["limit"] = self.limit
        return {"error": error}


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object.

    Raises:
        RequestError: 400 when it is not valid JSON, 422 when it is not an object.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, deep nesting
        raise RequestError(400, f"the request body is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise RequestError(422, f"the request body must be a JSON object, got {_kind(payload)}")
    return payload


def texts_field(
    payload: dict[str, Any], name: str, limits: ServerConfig, label: str | None = None
) -> tuple[list[str], bool]:
    """Read a string-or-list-of-strings field; returns the texts and whether it was a list.

    ``label`` names the field in messages (default: ``name``).

    Raises:
        RequestError: 422 when it is missing, of the wrong type, empty, or over a limit.
    """
    where = label or name
    if name not in payload:
        raise RequestError(422, f"'{where}' is required: a string or a list of strings", where)
    value = payload[name]
    if isinstance(value, str):
        return [check_text(value, where, limits)], False
    if not isinstance(value, list):
        raise RequestError(422, f"'{where}' must be a string or a list of strings, got {_kind(value)}", where)
    if not value:
        raise RequestError(422, f"'{where}' is an empty list; send at least one string", where)
    if len(value) > limits.max_inputs:
        raise RequestError(
            422, f"'{where}' has {len(value)} items; at most {limits.max_inputs} are accepted per "
            "request (--max-inputs, EMBEDRT_MAX_INPUTS). Split it into several requests.",
            where, limits.max_inputs,
        )
    return [check_text(item, f"{where}[{i}]", limits) for i, item in enumerate(value)], True


def check_text(value: Any, where: str, limits: ServerConfig) -> str:
    """Check one text's type, length and encodability.

    Raises:
        RequestError: 422 naming ``where`` and the problem.
    """
    if not isinstance(value, str):
        hint = " (token arrays are not supported; send text)" if isinstance(value, (int, list)) else ""
        raise RequestError(422, f"'{where}' must be a string, got {_kind(value)}{hint}", where)
    if len(value) > limits.max_chars:
        raise RequestError(
            422, f"'{where}' has {len(value)} characters; at most {limits.max_chars} are accepted "
            "(--max-chars, EMBEDRT_MAX_CHARS)", where, limits.max_chars,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(422, f"'{where}' is not valid Unicode text ({err.reason})", where) from err
    return value


def optional(payload: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """Read an optional field of one JSON type (null means absent).

    Raises:
        RequestError: 422 when it is present with another type.
    """
    value = payload.get(name)
    if value is None:
        return default
    # bool is an int subclass in Python; JSON true is not an integer
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(422, f"'{name}' must be {_JSON_NAMES[kind]}, got {_kind(value)}", name)
    return value


_JSON_NAMES: dict[type, str] = {
    str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "a list"
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _JSON_NAMES.items():
        if isinstance(value, kind):
            return name
    return "a number"


def _texts_schema(limits: ServerConfig) -> dict[str, Any]:
    text = {"type": "string", "maxLength": limits.max_chars}
    return {"oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}]}


def _error_responses(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "The body is not valid JSON.",
        413: "The body is larger than max_body_bytes.",
        422: "A field is missing, of the wrong type, empty, or over a limit (the message says which).",
        503: "The model is still loading, the queue is full, or the server is stopping (see Retry-After).",
    }
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(status): {"description": reasons[status], **error} for status in statuses}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(
    model_name: str | None, dim: int, limits: ServerConfig, prompt_names: Sequence[str] = (),
    *, reranker_name: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route, with this server's models, prompts and limits.

    ``model_name`` None (a reranker-only server) leaves the embedding routes out;
    ``reranker_name`` adds ``/rerank`` and ``/v1/rerank``.
    """
    texts = _texts_schema(limits)
    options = _embedding_options(dim, prompt_names)
    vector = {"type": "array", "items": {"type": "number"}}
    post_errors = _error_responses(400, 413, 422, 503)
    paths = {
        "/v1/embeddings": {"post": {
            "summary": "OpenAI-compatible embeddings",
            "description": "Inputs over the model's max_seq_length tokens are truncated; the "
            "x-embedrt-truncated header counts them.",
            "requestBody": _json_body(_openai_request(texts, options)),
            "responses": {"200": _ok({"$ref": "#/components/schemas/EmbeddingList"},
                                     "One item per input, in order."), **post_errors},
        }},
        "/embed": {"post": {
            "summary": "text-embeddings-inference-style embeddings",
            "description": "normalize=true returns unit vectors; normalize=false returns the model "
            "pipeline's own output (already unit length when the model has a Normalize stage). "
            "truncate=false rejects over-long inputs with 422.",
            "requestBody": _json_body({"type": "object", "required": ["inputs"], "properties": {
                "inputs": texts, "normalize": {"type": ["boolean", "null"]},
                "truncate": {"type": ["boolean", "null"]}, **options}}),
            "responses": {"200": _ok({"type": "array", "items": vector}, "One vector per input, in order."),
                          **post_errors},
        }},
        "/similarity": {"post": {
            "summary": "Cosine similarity of a source sentence to each of several sentences",
            "requestBody": _json_body(_similarity_request(limits)),
            "responses": {"200": _ok({"type": "array", "items": {"type": "number"}},
                                     "One score per sentence."), **post_errors},
        }},
        "/tokenize": {"post": {
            "summary": "text-embeddings-inference-style tokens of each input, as the model is fed them",
            "description": "Truncation and prompts as the embedding routes; the x-embedrt-tokens header "
            "counts the tokens listed (a list's length is an input's count). start/stop index the "
            "input's characters (code points); null for special tokens.",
            "requestBody": _json_body({"type": "object", "required": ["inputs"], "properties": {
                "inputs": texts, "add_special_tokens": {"type": ["boolean", "null"]},
                "truncate": {"type": ["boolean", "null"]}, "prompt_name": options["prompt_name"]}}),
            "responses": {"200": _ok({"type": "array", "items": {"type": "array", "items": _TOKEN}},
                                     "One list of tokens per input, in order."), **post_errors},
        }},
        "/health": {"get": {"summary": "Ready once the model is loaded", "responses": {
            "200": _ok(_STATUS, "The model is loaded."),
            "503": _ok(_STATUS, "The model is loading (or failed to load)."),
        }}},
        "/info": {"get": {"summary": "The model's manifest, the limits and the batching settings",
                          "responses": {"200": _ok({"type": "object"}, "Manifest and limits.")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    if model_name is None:
        for path in _EMBEDDING_PATHS:
            del paths[path]
    if reranker_name is not None:
        paths.update(_rerank_paths(limits, post_errors))
    served = [f"{model_name} ({dim} dimensions)"] if model_name is not None else []
    served += [f"the reranker {reranker_name}"] if reranker_name is not None else []
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "embedrt embedding server", "version": "1",
                 "description": f"Serves {' and '.join(served)}."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR, "EmbeddingList": _embedding_list()}},
    }
    if limits.api_keys is not None:
        _require_bearer(document)
    return document


_EMBEDDING_PATHS = ("/v1/embeddings", "/embed", "/similarity", "/tokenize")


def _rerank_paths(limits: ServerConfig, post_errors: dict[str, Any]) -> dict[str, Any]:
    """``/rerank`` (text-embeddings-inference's shape) and ``/v1/rerank`` (Cohere's and Jina's)."""
    text = {"type": "string", "maxLength": limits.max_chars}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}
    documents = {"type": "array", "minItems": 1, "maxItems": limits.max_inputs, "items": {"oneOf": [
        text, {"type": "object", "required": ["text"], "properties": {"text": text}}]}}
    flag = {"type": ["boolean", "null"]}
    tei_item = {"type": "object", "required": ["index", "score"], "properties": {
        "index": {"type": "integer"}, "score": {"type": "number"}, "text": {"type": "string"}}}
    result = {"type": "object", "required": ["index", "relevance_score"], "properties": {
        "index": {"type": "integer"}, "relevance_score": {"type": "number"},
        "document": {"type": "object", "properties": {"text": {"type": "string"}}}}}
    return {
        "/rerank": {"post": {
            "summary": "text-embeddings-inference-style reranking of texts against a query",
            "requestBody": _json_body({"type": "object", "required": ["query", "texts"], "properties": {
                "query": text, "texts": texts, "raw_scores": flag, "return_text": flag, "truncate": flag}}),
            "responses": {"200": _ok({"type": "array", "items": tei_item}, "Best first."), **post_errors},
        }},
        "/v1/rerank": {"post": {
            "summary": "Cohere/Jina-style reranking of documents against a query",
            "requestBody": _json_body({"type": "object", "required": ["query", "documents"], "properties": {
                "model": {"type": ["string", "null"]}, "query": text, "documents": documents,
                "top_n": {"type": ["integer", "null"], "minimum": 1}, "return_documents": flag}}),
            "responses": {"200": _ok({"type": "object", "required": ["model", "results", "usage"],
                                      "properties": {"model": {"type": "string"},
                                                     "results": {"type": "array", "items": result},
                                                     "usage": {"type": "object"}}}, "Best first."),
                          **post_errors},
        }},
    }


def _require_bearer(document: dict[str, Any]) -> None:
    """Mark every operation but /health as needing ``Authorization: Bearer`` (401 otherwise)."""
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    document["security"] = [{"bearer": []}]
    unauthorised = {"description": "The API key is missing, malformed, not valid, or in the URL.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path == "/health":
                operation["security"] = []
            else:
                operation["responses"]["401"] = unauthorised


_TOKEN = {"type": "object", "required": ["id", "text", "special", "start", "stop"], "properties": {
    "id": {"type": "integer"}, "text": {"type": "string"}, "special": {"type": "boolean"},
    "start": {"type": ["integer", "null"]}, "stop": {"type": ["integer", "null"]}}}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["integer", "string"]}, "limit": {"type": "integer"}}}}}


def _embedding_options(dim: int, prompt_names: Sequence[str]) -> dict[str, Any]:
    """``dimensions`` and ``prompt_name``, which both embedding routes take."""
    return {
        "dimensions": {"type": ["integer", "null"], "minimum": 1, "maximum": dim,
                       "description": "Keep the first this many dimensions (Matryoshka models), "
                       "normalised again when the model normalises. Default: all."},
        "prompt_name": {"enum": [*prompt_names, None], "description": "Prepend the model's prompt "
                        "of this name (an embedrt extension on /v1/embeddings). Default: the model's "
                        "default prompt, if it has one."},
    }


def _openai_request(texts: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["input"], "properties": {
        "input": texts,
        "model": {"type": ["string", "null"]},
        "encoding_format": {"enum": ["float", "base64", None]},
        "user": {"type": ["string", "null"]},
        **options,
    }}


def _similarity_request(limits: ServerConfig) -> dict[str, Any]:
    text = {"type": "string", "maxLength": limits.max_chars}
    sentences = {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}
    inputs = {"type": "object", "required": ["source_sentence", "sentences"],
              "properties": {"source_sentence": text, "sentences": sentences}}
    return {"type": "object", "required": ["inputs"], "properties": {
        "inputs": inputs, "truncate": {"type": ["boolean", "null"]}}}


def _embedding_list() -> dict[str, Any]:
    item = {"type": "object", "required": ["object", "index", "embedding"], "properties": {
        "object": {"const": "embedding"}, "index": {"type": "integer"},
        "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 of little-endian float32"}]}}}
    usage = {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
        "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}
    return {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": item},
        "model": {"type": "string"}, "usage": usage}}
