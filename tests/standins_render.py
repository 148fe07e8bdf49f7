"""Render played by a local server (tests/platform_standin.py's PlatformStandin) that keeps a
service's environment variables, deploys and instance count, every exchange judged by Render's
document (tests/platform_api/render.openapi.json).

    with RenderStandin() as render:
        render.add_commit("a1" * 20, "1.2.0")           # this commit builds version 1.2.0
        first = render.seed_live("a1" * 20)             # a deploy that is live (the app serves)
        ... the code under test calls render.url with render.token, service render.service_id ...
        assert render.live_deploy["id"] != first and render.mismatches == []

- Environment variables: ``render.env`` (key -> value), read and written one key at a time, or
  listed with cursors. The bulk ``PUT /services/{id}/env-vars`` (which replaces every variable)
  is answered 400 and recorded in ``mismatches`` and ``bulk_puts``: calling it fails the test.
- Deploys (``render.deploys``, oldest first): a new one is ``build_in_progress`` (a rollback
  ``update_in_progress``) and becomes ``live`` - the previous live one ``deactivated`` - once it
  has been read ``build_polls`` times (default 0: at the first read), or ``build_failed`` when
  its version is in ``failing_versions``. A deploy that goes live "runs the app":
  ``app.serve(deploy_id, version, healthy=version not in versions_broken,
  maintenance=MAINTENANCE_MODE == "true" in its env, env=its env)``. Its env (``_env``) is the
  service's env vars when the deploy was made - Render applies env changes on the next deploy
  - except for a rollback, which runs with the env of the deploy it rolls back to (see
  ``_rollback``). ``queue_next(n)`` makes the next trigger answer 202 (Queued, no body), as
  Render does when a deploy waits behind another.
- ``num_instances``, ``restarts``; ``deploy_posts`` counts triggers and rollbacks; ``stamps``
  the time of every attempt (a client's waits are measured with them).
Errors in Render's ``error`` shape ``{id, message}``; a bad token gets 401.
"""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.platform_standin import PlatformStandin
from tests.vendor_server import Call

SERVICE_ID = "srv-opsbook0render01"
EPOCH = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
DEFAULT_LIMIT = 20


def render_error(status: int, message: str) -> dict[str, str]:
    ids = {
        400: "bad_request",
        401: "unauthorized",
        404: "not_found",
        409: "conflict",
        429: "rate_limit_exceeded",
        500: "internal_server_error",
        503: "service_unavailable",
    }
    return {"id": ids.get(status, "error"), "message": message}


class RenderStandin(PlatformStandin):
    """One Render service (``service_id``) with its env vars, deploys and instances."""

    def __init__(self, service_id: str = SERVICE_ID, *, build_polls: int = 0) -> None:
        self.service_id = service_id
        self.build_polls = build_polls
        self.env: dict[str, str] = {}
        self.deploys: list[dict[str, Any]] = []  # oldest first; "_" keys are the stand-in's own
        self.commits: dict[str, str] = {}  # commit id -> the version it builds
        self.images: dict[str, str] = {}  # image URL -> version (default: its tag)
        self.head_commit = ""  # the branch's latest commit (a trigger without commitId)
        self.failing_versions: set[str] = set()  # builds of these versions fail
        #: a rollback runs with the target deploy's env (True) or the current env vars (False)
        self.rollback_uses_target_env = True
        self.num_instances = 1
        self.restarts = 0
        self.deploy_posts = 0
        self.bulk_puts: list[Any] = []
        self._queued = 0
        self._tick = itertools.count(1)
        super().__init__(
            "render",
            {
                "get-env-vars-for-service": self._list_env,
                "update-env-vars-for-service": self._bulk_put,
                "retrieve-env-var": self._get_env,
                "update-env-var": self._put_env,
                "delete-env-var": self._delete_env,
                "list-deploys": self._list_deploys,
                "create-deploy": self._create_deploy,
                "retrieve-deploy": self._get_deploy,
                "rollback-deploy": self._rollback,
                "restart-service": self._restart,
                "scale-service": self._scale,
            },
            auth_status=401,
            error_body=render_error,
        )

    # ------------------------------------------------------------------ test set-up

    def add_commit(self, sha: str, version: str, *, head: bool = True) -> str:
        """Commit ``sha`` builds ``version``; it is the branch's latest unless head=False."""
        self.commits[sha] = version
        if head:
            self.head_commit = sha
        return sha

    def add_image(self, ref: str, version: str) -> str:
        self.images[ref] = version
        return ref

    def seed_live(self, source: str, *, trigger: str = "api") -> str:
        """A deploy of ``source`` that is live already (the app serves it); its id."""
        deploy = self._new_deploy(source, trigger=trigger)
        self._go_live(deploy)
        return deploy["id"]

    def queue_next(self, times: int = 1) -> None:
        """The next ``times`` triggers answer 202 Queued without a body (the deploy is made)."""
        self._queued += times

    # ------------------------------------------------------------------ state to assert on

    @property
    def stamps(self) -> list[tuple[float, str]]:
        """(monotonic time, operationId) of every attempt, faults included (the timeline)."""
        return [(at, op) for op, _, at in self.timeline]

    @property
    def live_deploy(self) -> dict[str, Any] | None:
        return next((d for d in reversed(self.deploys) if d["status"] == "live"), None)

    def deploy(self, deploy_id: str) -> dict[str, Any]:
        return next(d for d in self.deploys if d["id"] == deploy_id)

    def version_of(self, source: str) -> str:
        if source in self.commits:
            return self.commits[source]
        if source in self.images:
            return self.images[source]
        name = source.rsplit("/", 1)[-1]
        return name.split(":", 1)[1] if ":" in name else source[:7]

    @property
    def served_version(self) -> str | None:
        live = self.live_deploy
        return live["_version"] if live else None

    # ------------------------------------------------------------------ deploys

    def _time(self) -> str:
        return (EPOCH + timedelta(seconds=next(self._tick))).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _new_deploy(
        self,
        source: str,
        *,
        trigger: str,
        status: str = "build_in_progress",
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A deploy of ``source`` that runs with ``env`` (default: the service's env vars now)."""
        now = self._time()
        env = dict(self.env if env is None else env)
        deploy: dict[str, Any] = {
            "id": "dep-" + secrets.token_hex(10),
            "status": status,
            "trigger": trigger,
            "createdAt": now,
            "updatedAt": now,
            "startedAt": now,
            "_version": self.version_of(source),
            "_env": env,
            "_maintenance": env.get("MAINTENANCE_MODE") == "true",
            "_reads": 0,
        }
        if source.startswith(("http", "docker.io", "registry", "ghcr.io")) or "/" in source:
            deploy["image"] = {"ref": source, "sha": "sha256:" + secrets.token_hex(32)}
        else:
            deploy["commit"] = {"id": source, "message": f"release {deploy['_version']}",
                                "createdAt": now}  # fmt: skip
        self.deploys.append(deploy)
        return deploy

    def _go_live(self, deploy: dict[str, Any]) -> None:
        now = self._time()
        for other in self.deploys:
            if other["status"] == "live" and other is not deploy:
                other.update(status="deactivated", updatedAt=now)
                self.app.drop(other["id"])
        deploy.update(status="live", updatedAt=now, finishedAt=now)
        version = deploy["_version"]
        self.app.serve(
            deploy["id"],
            version,
            healthy=version not in self.versions_broken,
            maintenance=deploy["_maintenance"],
            env=deploy["_env"],
        )
        self.app.route(deploy["id"])

    def _advance(self) -> None:
        """A read moves every pending deploy on (live after build_polls reads)."""
        for deploy in self.deploys:
            if deploy["status"] not in ("build_in_progress", "update_in_progress", "queued"):
                continue
            deploy["_reads"] += 1
            if deploy["_reads"] <= self.build_polls:
                continue
            if deploy["_version"] in self.failing_versions:
                now = self._time()
                deploy.update(status="build_failed", updatedAt=now, finishedAt=now)
            else:
                self._go_live(deploy)

    @staticmethod
    def _public(deploy: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in deploy.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ handlers

    def _service(self, call: Call) -> tuple[Any, ...] | None:
        if call.params.get("serviceId") != self.service_id:
            return 404, render_error(404, "service not found")
        return None

    @staticmethod
    def _page(items: list[Any], call: Call, cursor_of: Any) -> list[Any]:
        limit = int((call.query.get("limit") or [DEFAULT_LIMIT])[-1])
        cursor = (call.query.get("cursor") or [""])[-1]
        start = 0
        if cursor:
            start = next(
                (i + 1 for i, item in enumerate(items) if cursor_of(item) == cursor), len(items)
            )
        return items[start : start + limit]

    def _list_env(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        items = [
            {"envVar": {"key": k, "value": v}, "cursor": "c-" + k} for k, v in self.env.items()
        ]
        return 200, self._page(items, call, lambda item: item["cursor"])

    def _bulk_put(self, call: Call) -> tuple[Any, ...]:
        self.bulk_puts.append(call.body)
        self.server.api.mismatches.append(
            "render: PUT /services/{serviceId}/env-vars (replaces ALL variables) was called: "
            "opsbook must set variables one key at a time"
        )
        return 400, render_error(400, "the bulk replace is refused by this stand-in")

    def _get_env(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        key = call.params["envVarKey"]
        if key not in self.env:
            return 404, render_error(404, f"environment variable {key} not found")
        return 200, {"key": key, "value": self.env[key]}

    def _put_env(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        key = call.params["envVarKey"]
        body = call.body or {}
        value = secrets.token_urlsafe(32) if body.get("generateValue") else body["value"]
        self.env[key] = value
        return 200, {"key": key, "value": value}

    def _delete_env(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        key = call.params["envVarKey"]
        if key not in self.env:
            return 404, render_error(404, f"environment variable {key} not found")
        del self.env[key]
        return 204, None

    def _list_deploys(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        self._advance()
        wanted = set(call.query.get("status") or [])
        newest = [d for d in reversed(self.deploys) if not wanted or d["status"] in wanted]
        items = [{"deploy": self._public(d), "cursor": "c-" + d["id"]} for d in newest]
        return 200, self._page(items, call, lambda item: item["cursor"])

    def _get_deploy(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        self._advance()
        found = next((d for d in self.deploys if d["id"] == call.params["deployId"]), None)
        if found is None:
            return 404, render_error(404, "deploy not found")
        return 200, self._public(found)

    def _create_deploy(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        body = call.body or {}
        source = body.get("commitId") or body.get("imageUrl") or self.head_commit
        if not source:
            return 400, render_error(400, "the service has no commit to deploy")
        if body.get("commitId") and body["commitId"] not in self.commits:
            return 400, render_error(400, f"commit {body['commitId']} not found on the branch")
        self.deploy_posts += 1
        deploy = self._new_deploy(source, trigger="api")
        if self._queued:
            self._queued -= 1
            deploy["status"] = "queued"
            return 202, None
        return 201, self._public(deploy)

    def _rollback(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        target_id = (call.body or {}).get("deployId")
        target = next((d for d in self.deploys if d["id"] == target_id), None)
        if target is None:
            return 404, render_error(404, f"deploy {target_id} not found")
        self.deploy_posts += 1
        source = (target.get("commit") or {}).get("id") or (target.get("image") or {}).get("ref")
        # render.com/docs/rollbacks: a rollback is "a new deploy using the target deploy's build
        # artifact"; "Render reuses certain configuration details from the target deploy [...]
        # only for the rollback" and "Rolling back does not overwrite any of your service's
        # current configuration settings"; its "What's rolled back?" table has a row
        # "Environment variables" (the copy read for this lost the table's marks: which side
        # that row is on was not seen; an earlier version of the page listed it among what is
        # rolled back). Modelled (``rollback_uses_target_env``, default True): the rollback runs
        # with the env the target deploy was made with, ``render.env`` stays as it is, and the
        # next standard deploy takes the current env vars again.
        env = target["_env"] if self.rollback_uses_target_env else None
        deploy = self._new_deploy(source, trigger="rollback", status="update_in_progress", env=env)
        deploy["_version"] = target["_version"]
        return 201, self._public(deploy)

    def _restart(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        self.restarts += 1
        return 200, None

    def _scale(self, call: Call) -> tuple[Any, ...]:
        missing = self._service(call)
        if missing:
            return missing
        count = (call.body or {}).get("numInstances")
        if not isinstance(count, int) or count < 1:
            return 400, render_error(400, "numInstances must be at least 1")
        self.num_instances = count
        return 202, None
