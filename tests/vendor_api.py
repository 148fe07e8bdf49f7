"""The vendors' own API documents as the judge of the test stand-ins (Vercel, Render, Fly.io,
Supabase, Twilio, Stripe): one validator for every local HTTP server that plays a platform.

A stand-in calls ``check_request`` on every request it receives and ``check_response`` on
every answer it sends; either raises ``ApiMismatch`` saying what the document does not allow
(an undocumented path or method, a missing or wrong parameter, a body its schema refuses, no
credentials where the operation needs them, a status code or body the operation does not
document). The stand-in answers such a request with an error and records the mismatch, so a
test cannot pass by agreeing with our own client: ``VendorApi.mismatches`` must stay empty.

The documents are the OpenAPI 3.0 subsets of the vendors' published descriptions kept in
``tests/platform_api/`` (copied unchanged from the team's ``shared/platform-api/``; where each
came from and what was cut: ``SOURCES.md`` there). Schemas are checked with
``openapi_schema_validator``'s OAS 3.0 dialect (``nullable``, ``readOnly``/``writeOnly``),
every ``$ref`` resolved inside the document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.loaders import PROJECT_ROOT

API_DIR = PROJECT_ROOT / "tests" / "platform_api"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_DOC_URI = "urn:opsbook:vendor-api"


class ApiMismatch(AssertionError):
    """A request or response the vendor's document does not allow."""


@dataclass
class Operation:
    method: str
    template: str  # the document's path, e.g. /v1/projects/{ref}/secrets
    spec: dict[str, Any]
    parameters: list[dict[str, Any]]


@dataclass
class VendorApi:
    """One vendor's document: ``VendorApi.load("twilio")``."""

    name: str
    doc: dict[str, Any]
    mismatches: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, name: str) -> VendorApi:
        return cls(name, _document(name))

    # ------------------------------------------------------------------ requests

    def check_request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[Operation, dict[str, str]]:
        """The documented operation this request is, and its path parameters; raises
        ApiMismatch (and records it) when the document does not allow the request."""
        try:
            return self._check_request(method, path, query, dict(headers or {}), body)
        except ApiMismatch as exc:
            self.mismatches.append(str(exc))
            raise

    def _check_request(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[Operation, dict[str, str]]:
        operation, path_params = self.operation(method, path)
        where = f"{self.name}: {method.upper()} {operation.template}"
        lowered = {k.lower(): v for k, v in headers.items()}
        self._check_security(where, operation, lowered)
        values = {"path": path_params, "query": parse_qs(query, keep_blank_values=True)}
        for param in operation.parameters:
            self._check_parameter(where, param, values, lowered)
        self._check_body(where, operation, lowered.get("content-type", ""), body)
        return operation, path_params

    def operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        path = "/" + path.lstrip("/")
        base = self._base_path()
        if base and path.startswith(base + "/"):
            path = path[len(base) :]
        known = []
        for operation in self._operations():
            pattern, names = _template_regex(operation.template)
            match = pattern.fullmatch(path)
            if match and operation.method == method.lower():
                return operation, dict(zip(names, match.groups(), strict=True))
            if match:
                known.append(operation.method.upper())
        if known:
            raise ApiMismatch(
                f"{self.name}: {method.upper()} {path} is not documented "
                f"(the path takes {', '.join(sorted(known))})"
            )
        raise ApiMismatch(f"{self.name}: no documented path matches {method.upper()} {path}")

    def _check_security(self, where: str, operation: Operation, headers: dict[str, str]) -> None:
        requirements = operation.spec.get("security", self.doc.get("security"))
        if not requirements or any(not req for req in requirements):
            return  # none, or one alternative that needs nothing
        schemes = self.doc.get("components", {}).get("securitySchemes", {})
        for requirement in requirements:
            if all(_credential_given(schemes.get(name, {}), headers) for name in requirement):
                return
        wanted = " or ".join("+".join(req) for req in requirements)
        raise ApiMismatch(f"{where}: no credentials ({wanted}) in the request")

    def _check_parameter(
        self,
        where: str,
        param: dict[str, Any],
        values: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        place, name = param["in"], param["name"]
        if place == "header":
            given: Any = headers.get(name.lower())
        elif place in values:
            given = values[place].get(name)
        else:
            return  # cookies: never sent by our clients
        if given is None:
            if param.get("required"):
                raise ApiMismatch(f"{where}: the required {place} parameter {name!r} is missing")
            return
        if place == "query":
            given = given if _is_array(param.get("schema")) else given[-1]
        value = _coerce(given, param.get("schema") or {})
        problem = self._schema_problem(param.get("schema") or {}, value, write=True)
        if problem:
            raise ApiMismatch(f"{where}: {place} parameter {name!r}={given!r}: {problem}")

    def _check_body(self, where: str, operation: Operation, content_type: str, body: bytes) -> None:
        spec = operation.spec.get("requestBody")
        if spec and "$ref" in spec:
            spec = self._resolve(spec["$ref"])
        if not body:
            if spec and spec.get("required"):
                raise ApiMismatch(f"{where}: the request body is required")
            return
        if not spec:
            raise ApiMismatch(f"{where}: takes no request body, got {len(body)} bytes")
        media = content_type.split(";")[0].strip().lower()
        content = spec.get("content", {})
        if media not in content:
            raise ApiMismatch(
                f"{where}: body of type {media or 'none'!r}; the document takes {sorted(content)}"
            )
        value = _decode(where, media, body)
        problem = self._schema_problem(content[media].get("schema") or {}, value, write=True)
        if problem:
            raise ApiMismatch(f"{where}: request body: {problem}")

    # ----------------------------------------------------------------- responses

    def check_response(
        self, operation: Operation, status: int, body: bytes = b"", content_type: str = ""
    ) -> None:
        """Raise ApiMismatch (and record it) unless the operation documents this answer."""
        try:
            self._check_response(operation, status, body, content_type)
        except ApiMismatch as exc:
            self.mismatches.append(str(exc))
            raise

    def _check_response(
        self, operation: Operation, status: int, body: bytes, content_type: str
    ) -> None:
        where = f"{self.name}: {operation.method.upper()} {operation.template}"
        responses = operation.spec.get("responses", {})
        key = next(
            (k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None
        )
        if key is None:
            raise ApiMismatch(f"{where}: status {status} is not documented ({sorted(responses)})")
        spec = responses[key]
        if "$ref" in spec:
            spec = self._resolve(spec["$ref"])
        content = spec.get("content") or {}
        if not body:
            if content and status != 204:
                raise ApiMismatch(f"{where}: status {status} documents a body; none was sent")
            return
        media = content_type.split(";")[0].strip().lower()
        if media not in content:
            raise ApiMismatch(
                f"{where}: status {status} answered {media or 'no type'!r}; "
                f"documented: {sorted(content) or 'no body'}"
            )
        schema = content[media].get("schema") or {}
        problem = self._schema_problem(schema, _decode(where, media, body), write=False)
        if problem:
            raise ApiMismatch(f"{where}: status {status} body: {problem}")

    # ------------------------------------------------------------------- helpers

    def _operations(self) -> Iterator[Operation]:
        for template, item in self.doc.get("paths", {}).items():
            shared = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    spec = item[method]
                    params = {
                        (p["in"], p["name"]): p
                        for p in (self._deref(x) for x in [*shared, *spec.get("parameters", [])])
                    }
                    yield Operation(method, template, spec, list(params.values()))

    def _base_path(self) -> str:
        servers = self.doc.get("servers") or [{}]
        url = servers[0].get("url", "")
        match = re.match(r"^[a-z]+://[^/]+(/.*)?$", url)
        return (match.group(1) or "").rstrip("/") if match else ""

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        return self._resolve(node["$ref"]) if "$ref" in node else node

    def _resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _schema_problem(self, schema: dict[str, Any], value: Any, *, write: bool) -> str | None:
        registry = _registry(self.name)
        validator_class = OAS30WriteValidator if write else OAS30ReadValidator
        validator = validator_class(_with_base(schema, self.name), registry=registry)
        error = next(iter(sorted(validator.iter_errors(value), key=lambda e: e.path)), None)
        if error is None:
            return None
        at = "/".join(str(p) for p in error.absolute_path)
        return f"{error.message}" + (f" (at {at})" if at else "")


@cache
def _document(name: str) -> dict[str, Any]:
    path = API_DIR / f"{name}.openapi.json"
    if not path.is_file():
        raise FileNotFoundError(f"no API document for {name!r}: {path}")
    return json.loads(path.read_text())


@cache
def _registry(name: str) -> Registry:
    resource = Resource.from_contents(_document(name), default_specification=DRAFT4)
    return Registry().with_resource(f"{_DOC_URI}/{name}", resource)


def _with_base(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The schema with local refs (``#/components/...``) pointed at the document."""
    text = json.dumps(schema).replace('"$ref": "#/', f'"$ref": "{_DOC_URI}/{name}#/')
    return json.loads(text)


@cache
def _template_regex(template: str) -> tuple[re.Pattern[str], list[str]]:
    """The path template as a regex, and its placeholders' names in order."""
    parts = re.split(r"(\{[^}]+\})", template)
    names = [p[1:-1] for p in parts if p.startswith("{")]
    pattern = "".join("([^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(pattern), names


def _is_array(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "array"


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    """A parameter's text as the type its schema names (what a server would parse)."""
    kind = schema.get("type")
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [_coerce(v, items) for v in value]
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _decode(where: str, media: str, body: bytes) -> Any:
    if media == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    if media.endswith("json"):
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiMismatch(f"{where}: the JSON body does not parse: {exc}") from None
    return body.decode(errors="replace")


def _credential_given(scheme: dict[str, Any], headers: dict[str, str]) -> bool:
    kind = scheme.get("type")
    if kind == "http":
        auth = headers.get("authorization", "")
        return auth.lower().startswith(scheme.get("scheme", "").lower() + " ") and len(auth) > 8
    if kind == "apiKey" and scheme.get("in") == "header":
        return bool(headers.get(scheme.get("name", "").lower()))
    return False


def documents() -> list[str]:
    """The vendors whose documents are here."""
    return sorted(p.name.split(".")[0] for p in Path(API_DIR).glob("*.openapi.json"))
