"""Vercel played locally for the tests: one project's environment variables and deployments,
every request and answer judged by tests/platform_api/vercel.openapi.json (VendorServer).

    with VercelStandin(team_id="team_abc") as vercel:
        old = vercel.add_production(version="1.0.0")           # serving production
        new = vercel.add_preview(version="1.1.0", sha="a1b2c3d")  # what Git built
        vercel.versions_broken.add("1.1.0")                     # its app fails /health
        ... the code under test calls vercel.url with vercel.token ...
        assert vercel.production == old and vercel.mismatches == []

How Vercel behaves, as modelled here (module_utils/opsbook_vercel.py has the sources):

- A deployment is created QUEUED; each ``GET /v13/deployments/{id}`` of a building one is a
  poll - after ``build_polls`` of them (default 0: the first GET finds it done) it is READY, or
  ERROR when its version is in ``failing_versions``. It is built with the project's
  environment variables of its target (production; a preview: preview) as they were at
  creation, and its app runs with them for good (``app.serve(..., env=...)``; ``app_env``):
  "Changes to environment variables are not applied to previous deployments, they only apply
  to new deployments" (vercel.com/docs/environment-variables/managing-environment-variables),
  so a redeploy is how an env change reaches the app; during an Instant Rollback "Vercel won't
  update environment variables if you change them in the project settings and will roll back
  to a previous build" (vercel.com/docs/instant-rollback): the old build keeps the env it was
  built with. Its app answers 503 when MAINTENANCE_MODE was "true" in that env.
- A READY production deployment is assigned production's domains (readySubstate PROMOTED,
  aliasAssigned = now) - unless an Instant Rollback paused the automatic assignment
  (``rolled_back``): then it stays STAGED until promoted. A promotion assigns production and
  ends the pause; an Instant Rollback assigns production to a deployment that served before
  and starts it.
- The deployment serving production is the one the app front routes to (``app.route``);
  every READY deployment is reachable by its id (``app.serve``), healthy unless its version
  is in ``versions_broken``.
- Errors are ``{"error": {"code", "message"}}``; a bad or expired token is answered 403 with
  ``invalidToken`` (what Vercel sends). The document declares no body on its error
  responses, but carries the SDK's error schemas (VercelForbiddenError, ...): an error body
  is judged against those (``VercelApi`` below) instead of being refused.
- Two oneOfs of the document cannot be met by a full answer: the env list with
  ``pagination`` (its ``{envs}`` variant matches too) and the full deployment of
  ``GET /v13/deployments/{id}`` (its public variant matches too). So the env list is answered
  without ``pagination`` and a deployment in its public variant (no ``projectId``, ``build``,
  ``env``); ``PATCH`` of an env var is answered without ``value`` for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from typing import Any

from tests.platform_standin import PlatformApi, PlatformStandin
from tests.vendor_api import ApiMismatch, Operation
from tests.vendor_server import Call

TARGETS = ("production", "preview", "development")
ERROR_CODES = {
    400: "bad_request",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limited",
}
#: the SDK's error schemas (components of the document), by status
ERROR_SCHEMAS = {
    400: "VercelBadRequestError",
    403: "VercelForbiddenError",
    404: "VercelNotFoundError",
    429: "VercelRateLimitError",
}
BUILDING = ("QUEUED", "BUILDING", "INITIALIZING")
WRITES = frozenset(
    {
        "createProjectEnv",
        "editProjectEnv",
        "removeProjectEnv",
        "createDeployment",
        "requestPromote",
        "requestRollback",
    }
)


def vercel_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """Vercel's error body. An invalid token: 403 ``forbidden`` with ``invalidToken``."""
    error: dict[str, Any] = {
        "code": code or ERROR_CODES.get(status, "internal_server_error"),
        "message": message,
    }
    if message == "invalid token":
        error.update(message="Not authorized", invalidToken=True)
    return {"error": error}


class VercelApi(PlatformApi):
    """The Vercel document, with error bodies judged by the SDK's error schemas where the
    operation declares the status without a body."""

    def _check_response(
        self, operation: Operation, status: int, body: bytes, content_type: str
    ) -> None:
        spec = operation.spec.get("responses", {}).get(str(status))
        if status >= 400 and spec is not None and not spec.get("content") and body:
            name = ERROR_SCHEMAS.get(status, "VercelBadRequestError")
            where = f"{self.name}: {operation.method.upper()} {operation.template}"
            try:
                value = json.loads(body)
            except ValueError as exc:
                raise ApiMismatch(f"{where}: status {status}: not JSON: {exc}") from None
            problem = self._schema_problem(
                {"$ref": f"#/components/schemas/{name}"}, value, write=False
            )
            if problem:
                raise ApiMismatch(f"{where}: status {status} body is no {name}: {problem}")
            return
        super()._check_response(operation, status, body, content_type)


class VercelStandin(PlatformStandin):
    """One Vercel project (``project_id``, ``project_name``), in a team when ``team_id``."""

    def __init__(
        self,
        *,
        project_name: str = "opsbook-app",
        team_id: str = "",
        build_polls: int = 0,
    ) -> None:
        self.project_name = project_name
        self.project_id = "prj_" + secrets.token_hex(12)
        self.team_id = team_id
        self.build_polls = build_polls
        self.failing_versions: set[str] = set()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.envs: dict[str, dict[str, Any]] = {}
        self.production: str | None = None
        self.rolled_back = False  # automatic assignment of production paused
        self.rollbacks: list[str] = []
        self.promotions: list[str] = []
        self._last_ms = 0
        self._state = threading.RLock()
        handlers = {
            "filterProjectEnvs": self._list_env,
            "createProjectEnv": self._create_env,
            "editProjectEnv": self._edit_env,
            "removeProjectEnv": self._remove_env,
            "createDeployment": self._create_deployment,
            "getDeployment": self._get_deployment,
            "getDeployments": self._list_deployments,
            "requestPromote": self._promote,
            "requestRollback": self._rollback,
        }
        super().__init__(
            "vercel",
            {op: self._scoped(handler) for op, handler in handlers.items()},
            auth_status=403,
            error_body=vercel_error,
        )
        self.server.api = VercelApi(self.server.api.name, self.server.api.doc)
        #: (monotonic time, path) of every request that reached the server, faults included
        self.stamps: list[tuple[float, str]] = []
        serve = self.server._serve

        def stamped(request: Any) -> None:
            self.stamps.append((time.monotonic(), request.path.split("?")[0]))
            serve(request)

        self.server._serve = stamped  # type: ignore[method-assign]

    # ------------------------------------------------------------------ for the tests

    def add_preview(
        self,
        dpl_id: str | None = None,
        *,
        version: str,
        sha: str = "",
        meta: dict[str, str] | None = None,
    ) -> str:
        """A READY preview deployment (what Git builds for a commit) running ``version``."""
        record = self._new(dpl_id, version=version, target=None, sha=sha, meta=meta, source="git")
        self._finish(record)
        return record["id"]

    def add_production(
        self,
        dpl_id: str | None = None,
        *,
        version: str,
        sha: str = "",
        meta: dict[str, str] | None = None,
    ) -> str:
        """A READY production deployment that serves production now."""
        record = self._new(
            dpl_id, version=version, target="production", sha=sha, meta=meta, source="git"
        )
        self._finish(record)
        return record["id"]

    def set_env(
        self, key: str, value: str, targets: tuple[str, ...] = TARGETS, env_type: str = "encrypted"
    ) -> str:
        """A variable set by someone else (no opsbook comment)."""
        with self._state:
            entry = self._env_entry(key, value, list(targets), env_type, "")
            return entry["id"]

    def env_value(self, key: str, target: str = "production") -> str | None:
        with self._state:
            entry = self._env_on(key, [target])
            return entry["value"] if entry else None

    def env_entries(self, key: str) -> list[dict[str, Any]]:
        with self._state:
            return [dict(e) for e in self.envs.values() if e["key"] == key]

    def writes(self) -> list[str]:
        """The calls that change something, in order (operation ids)."""
        return [c for c in self.calls if c in WRITES]

    def deployment(self, dpl_id: str) -> dict[str, Any]:
        return self.deployments[dpl_id]

    def serving_version(self) -> str | None:
        return self.deployments[self.production]["version"] if self.production else None

    # ------------------------------------------------------------------ plumbing

    def _now(self) -> int:
        """Epoch milliseconds, strictly increasing (events are ordered by them)."""
        with self._state:
            self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            return self._last_ms

    def _scoped(self, handler: Any) -> Any:
        """Every call names the team the project belongs to (``teamId``), as Vercel needs."""

        def play(call: Call) -> tuple[Any, ...]:
            given = (call.query.get("teamId") or [""])[-1]
            if given != self.team_id:
                scope = f"team {self.team_id}" if self.team_id else "a personal account"
                return 403, vercel_error(
                    403, f"Not authorized: the project belongs to {scope} (teamId={given!r})"
                )
            with self._state:
                return handler(call)

        return play

    def _project_ok(self, name: str | None) -> bool:
        return name in (self.project_id, self.project_name)

    # ------------------------------------------------------------------ env vars

    def _env_entry(
        self, key: str, value: str, targets: list[str], env_type: str, comment: str
    ) -> dict[str, Any]:
        now = self._now()
        entry = {
            "id": secrets.token_urlsafe(12).replace("-", "x").replace("_", "y"),
            "key": key,
            "value": value,
            "type": env_type,
            "target": [t for t in TARGETS if t in targets],
            "comment": comment,
            "createdAt": now,
            "updatedAt": now,
        }
        self.envs[entry["id"]] = entry
        return entry

    def _env_on(self, key: str, targets: list[str]) -> dict[str, Any] | None:
        return next(
            (e for e in self.envs.values() if e["key"] == key and set(e["target"]) & set(targets)),
            None,
        )

    def _env_view(self, entry: dict[str, Any], decrypt: bool, with_value: bool = True) -> dict:
        view = {k: v for k, v in entry.items() if k != "value"}
        if not with_value:
            return view
        if entry["type"] == "sensitive":
            view.update(value="", decrypted=False)
        elif entry["type"] == "encrypted":
            if decrypt:
                view.update(value=entry["value"], decrypted=True)
            else:
                digest = hashlib.sha256(entry["value"].encode()).hexdigest()
                view.update(value="enc:" + digest, decrypted=False)
        else:
            view["value"] = entry["value"]
        return view

    def _list_env(self, call: Call) -> tuple[Any, ...]:
        if not self._project_ok(call.params.get("idOrName")):
            return 400, vercel_error(400, f"Project not found: {call.params.get('idOrName')}")
        decrypt = (call.query.get("decrypt") or ["false"])[-1] == "true"
        envs = [self._env_view(e, decrypt) for e in self.envs.values()]
        return 200, {"envs": envs}

    def _create_env(self, call: Call) -> tuple[Any, ...]:
        if not self._project_ok(call.params.get("idOrName")):
            return 404, vercel_error(404, f"Project not found: {call.params.get('idOrName')}")
        upsert = (call.query.get("upsert") or [""])[-1] == "true"
        items = call.body if isinstance(call.body, list) else [call.body]
        created, failed = [], []
        for item in items:
            targets = list(item.get("target") or [])
            if item["type"] == "sensitive" and "development" in targets:
                failed.append(
                    {"error": {"code": "invalid_target", "key": item["key"],
                               "message": "sensitive variables cannot target development"}}
                )  # fmt: skip
                continue
            existing = self._env_on(item["key"], targets)
            if existing is not None and not upsert:
                return 403, vercel_error(
                    403, f"The environment variable {item['key']} already exists", "ENV_CONFLICT"
                )
            if existing is not None:
                existing.update(
                    value=item["value"], type=item["type"], comment=item.get("comment", ""),
                    target=[t for t in TARGETS if t in targets], updatedAt=self._now(),
                )  # fmt: skip
                created.append(existing)
            else:
                created.append(
                    self._env_entry(
                        item["key"], item["value"], targets, item["type"], item.get("comment", "")
                    )
                )
        views = [self._env_view(e, decrypt=False) for e in created]
        return 201, {"created": views[0] if len(views) == 1 else views, "failed": failed}

    def _edit_env(self, call: Call) -> tuple[Any, ...]:
        entry = self.envs.get(call.params.get("id") or "")
        if not self._project_ok(call.params.get("idOrName")) or entry is None:
            return 404, vercel_error(404, "Environment variable not found")
        body = call.body or {}
        for field in ("key", "value", "type", "comment"):
            if field in body:
                entry[field] = body[field]
        if "target" in body:
            entry["target"] = [t for t in TARGETS if t in body["target"]]
        entry["updatedAt"] = self._now()
        # without value: the document's oneOf cannot tell a full entry from its other variant
        return 200, self._env_view(entry, decrypt=False, with_value=False)

    def _remove_env(self, call: Call) -> tuple[Any, ...]:
        entry = self.envs.get(call.params.get("id") or "")
        if not self._project_ok(call.params.get("idOrName")) or entry is None:
            return 404, vercel_error(404, "Environment variable not found")
        del self.envs[entry["id"]]
        return 200, [self._env_view(entry, decrypt=False)]

    # ------------------------------------------------------------------ deployments

    def _new(
        self,
        dpl_id: str | None,
        *,
        version: str,
        target: str | None,
        sha: str = "",
        meta: dict[str, str] | None = None,
        source: str = "redeploy",
    ) -> dict[str, Any]:
        with self._state:
            dpl_id = dpl_id or "dpl_" + secrets.token_hex(10)
            now = self._now()
            env = self._env_snapshot(target)
            record = {
                "id": dpl_id,
                "url": f"{self.project_name}-{dpl_id[4:13].lower()}.vercel.app",
                "created": now,
                "building_at": now,
                "ready_at": None,
                "state": "QUEUED",
                "substate": None,
                "target": target,
                "meta": {**({"githubCommitSha": sha} if sha else {}), **dict(meta or {})},
                "version": version,
                "app_env": env,
                "maintenance": env.get("MAINTENANCE_MODE") == "true",
                "polls_left": self.build_polls,
                "alias_assigned": None,
                "source": source,
            }
            self.deployments[dpl_id] = record
            return record

    def _env_snapshot(self, target: str | None) -> dict[str, str]:
        """The env a deployment of ``target`` (None: a preview) is built with: the project's
        variables of that target now, whatever their type (a sensitive one is readable by
        the build and the app, only not through the API)."""
        wanted = target or "preview"
        return {e["key"]: e["value"] for e in self.envs.values() if wanted in e["target"]}

    def _finish(self, record: dict[str, Any]) -> None:
        """The build is done: READY (or ERROR), served, assigned production if due."""
        if record["version"] in self.failing_versions:
            record["state"] = "ERROR"
            return
        record.update(state="READY", ready_at=self._now())
        self.app.serve(
            record["id"],
            record["version"],
            healthy=record["version"] not in self.versions_broken,
            maintenance=record["maintenance"],
            env=record["app_env"],
        )
        if record["target"] == "production":
            if self.rolled_back:
                record["substate"] = "STAGED"
            else:
                self._assign(record)
        else:
            record["substate"] = "STAGED"

    def _assign(self, record: dict[str, Any]) -> None:
        """Production's domains to this deployment."""
        record.update(substate="PROMOTED", alias_assigned=self._now())
        self.production = record["id"]
        self.app.route(record["id"])
        # a version marked broken after the build still answers as broken
        self.app.serve(
            record["id"],
            record["version"],
            healthy=record["version"] not in self.versions_broken,
            maintenance=record["maintenance"],
            env=record["app_env"],
        )

    def _find(self, id_or_url: str) -> dict[str, Any] | None:
        for record in self.deployments.values():
            if id_or_url in (record["id"], record["url"]):
                return record
        return None

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        """GET /v13/deployments/{id}: the public variant (see the module docstring)."""
        body: dict[str, Any] = {
            "id": record["id"],
            "url": record["url"],
            "name": self.project_name,
            "meta": dict(record["meta"]),
            "readyState": record["state"],
            "status": record["state"],
            "type": "LAMBDAS",
            "createdAt": record["created"],
            "buildingAt": record["building_at"],
            "bootedAt": record["building_at"],
            "buildSkipped": False,
            "aliasAssigned": record["alias_assigned"] is not None,
            "creator": {"uid": "opsbook-standin", "username": "opsbook"},
            "public": False,
            "regions": ["iad1"],
            "version": 2,
            "source": record["source"],
            "alias": [f"{self.project_name}.vercel.app"] if record["id"] == self.production else [],
            "aliasError": None,
        }
        if record["target"]:  # a preview has none: the document's enum has no null
            body["target"] = record["target"]
        if record["ready_at"]:
            body["ready"] = record["ready_at"]
        if record["substate"]:
            body["readySubstate"] = record["substate"]
        return body

    def _full(self, record: dict[str, Any]) -> dict[str, Any]:
        """POST /v13/deployments: the created deployment, every documented required field."""
        return {
            **self._public(record),
            "build": {"env": []},
            "env": [],
            "inspectorUrl": f"https://vercel.com/opsbook/{self.project_name}/{record['id'][4:]}",
            "isInConcurrentBuildsQueue": False,
            "isInSystemBuildsQueue": False,
            "projectSettings": {},
            "projectId": self.project_id,
            "plan": "pro",
            "createdIn": "iad1",
            "ownerId": self.team_id or "user_standin",
            "routes": None,
        }

    def _listed(self, record: dict[str, Any]) -> dict[str, Any]:
        """One item of GET /v6/deployments."""
        item: dict[str, Any] = {
            "uid": record["id"],
            "name": self.project_name,
            "projectId": self.project_id,
            "url": record["url"],
            "created": record["created"],
            "createdAt": record["created"],
            "buildingAt": record["building_at"],
            "type": "LAMBDAS",
            "creator": {"uid": "opsbook-standin", "username": "opsbook"},
            "inspectorUrl": f"https://vercel.com/opsbook/{self.project_name}/{record['id'][4:]}",
            "meta": dict(record["meta"]),
            "state": record["state"],
            "readyState": record["state"],
            "source": record["source"],
            # the time production's domains were last assigned to it; false: never
            "aliasAssigned": record["alias_assigned"] or False,
            "isRollbackCandidate": record["substate"] == "PROMOTED",
        }
        if record["target"]:
            item["target"] = record["target"]
        if record["ready_at"]:
            item["ready"] = record["ready_at"]
        if record["substate"]:
            item["readySubstate"] = record["substate"]
        return item

    def _create_deployment(self, call: Call) -> tuple[Any, ...]:
        body = call.body or {}
        project = body.get("project") or body.get("name")
        if not self._project_ok(project):
            return 404, vercel_error(404, f"Project not found: {project}")
        source = self._find(body.get("deploymentId") or "")
        if source is None:
            return 404, vercel_error(404, f"Deployment not found: {body.get('deploymentId')}")
        target = body.get("target") if body.get("target") in ("production", "staging") else None
        record = self._new(
            None,
            version=source["version"],
            target=target,
            meta={**source["meta"], **dict(body.get("meta") or {})},
        )
        return 200, self._full(record)

    def _get_deployment(self, call: Call) -> tuple[Any, ...]:
        record = self._find(call.params.get("idOrUrl") or "")
        if record is None:
            return 404, vercel_error(404, "The deployment was not found")
        if record["state"] in BUILDING:
            if record["polls_left"] <= 0:
                self._finish(record)
            else:
                record["polls_left"] -= 1
                record["state"] = "BUILDING"
        return 200, self._public(record)

    def _list_deployments(self, call: Call) -> tuple[Any, ...]:
        query = {k: v[-1] for k, v in call.query.items()}
        records = sorted(self.deployments.values(), key=lambda r: r["created"], reverse=True)
        if "projectId" in query and not self._project_ok(query["projectId"]):
            records = []
        if query.get("target") == "production":
            records = [r for r in records if r["target"] == "production"]
        elif query.get("target") == "preview":
            records = [r for r in records if r["target"] is None]
        if query.get("state"):
            states = set(query["state"].split(","))
            records = [r for r in records if r["state"] in states]
        if query.get("sha"):
            records = [
                r for r in records if r["meta"].get("githubCommitSha", "").startswith(query["sha"])
            ]
        if query.get("until"):
            records = [r for r in records if r["created"] < float(query["until"])]
        limit = int(float(query.get("limit") or 20))
        page, rest = records[:limit], records[limit:]
        pagination = {
            "count": len(page),
            "next": page[-1]["created"] if rest and page else None,
            "prev": page[0]["created"] if page else None,
        }
        return 200, {"pagination": pagination, "deployments": [self._listed(r) for r in page]}

    def _promote(self, call: Call) -> tuple[Any, ...]:
        if not self._project_ok(call.params.get("projectId")):
            return 400, vercel_error(400, f"Project not found: {call.params.get('projectId')}")
        record = self._find(call.params.get("deploymentId") or "")
        if record is None:
            return 400, vercel_error(400, "Deployment not found")
        if record["state"] != "READY" or record["target"] != "production":
            return 409, vercel_error(
                409, "Only a READY production deployment can be promoted", "not_promotable"
            )
        self.promotions.append(record["id"])
        self.rolled_back = False
        self._assign(record)
        return 201, None

    def _rollback(self, call: Call) -> tuple[Any, ...]:
        if not self._project_ok(call.params.get("projectId")):
            return 400, vercel_error(400, f"Project not found: {call.params.get('projectId')}")
        record = self._find(call.params.get("deploymentId") or "")
        if record is None or record["substate"] != "PROMOTED" or record["state"] != "READY":
            return 422, vercel_error(
                422,
                "The deployment is not eligible for rollback: it never served production",
                "not_eligible",
            )
        if record["id"] == self.production:
            return 409, vercel_error(409, "The deployment serves production already")
        self.rollbacks.append(record["id"])
        self.rolled_back = True
        self._assign(record)
        return 201, None
