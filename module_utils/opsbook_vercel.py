# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_vercel: Vercel's REST API (https://api.vercel.com) as functions over
``opsbook_rest.RestClient`` - shared by library/vercel_env.py, library/vercel_deployment.py
and whoever else needs a Vercel call (the secret rotation's env store, the bench).

Built from the document in tests/platform_api/vercel.openapi.json (a subset of vercel/sdk's
``vercel-spec.json``; SOURCES.md, section Vercel). Every call carries ``teamId`` when the
project belongs to a team (``VercelApi(client, team_id)``).

- Project environment variables: list (``GET /v10/projects/{idOrName}/env``), create or
  update (``POST`` with ``upsert=true``), edit (``PATCH /v9/.../env/{id}``), delete
  (``DELETE /v9/.../env/{id}``). A key may exist once per target (production, preview,
  development); one entry may cover several targets.
- Deployments: redeploy an existing one (``POST /v13/deployments`` with ``deploymentId``,
  ``name``, ``target``, ``meta``), get one (``GET /v13/deployments/{idOrUrl}``), list a
  project's (``GET /v6/deployments``, newest first; ``pagination.next`` sent back as
  ``until``), promote one to production (``POST /v10/projects/{projectId}/promote/{id}``),
  instant rollback (``POST /v1/projects/{projectId}/rollback/{id}``).
- Errors: ``{"error": {"code", "message"}}`` (the SDK's Vercel*Error schemas); RestClient
  quotes the message. An invalid or expired token is answered 403 (``invalidToken``).
- Rate limits: 429 with ``X-RateLimit-Reset`` (epoch seconds), which RestClient honours.

WHICH DEPLOYMENT SERVES PRODUCTION - the rule of ``serving()``. The document has no "serving
now" flag on a deployment (the project's ``targets.production`` is not in the subset), so it
is worked out from the documented fields of the project's deployments:

1. Only READY deployments with ``target: production`` can serve production.
2. Of those, only the ones that have served production traffic: ``readySubstate`` PROMOTED
   ("has seen production traffic"; STAGED - "never seen production traffic" - is a
   production build whose domains were not assigned, e.g. one made while automatic
   assignment is paused after an Instant Rollback). A deployment listed without
   ``readySubstate`` counts as promoted when ``aliasAssigned`` is set.
3. The one whose production domains were assigned LAST serves: the list's ``aliasAssigned``
   is the time (epoch ms) its aliases were assigned. A promotion and an Instant Rollback
   both work "by assigning your domains to an existing deployment"
   (vercel.com/docs/deployments/promoting-a-deployment), so the deployment rolled back to
   carries the newest assignment even though newer (PROMOTED) deployments exist. Equal or
   boolean ``aliasAssigned``: the newest created wins.

The inference in 3 (that a re-assignment renews ``aliasAssigned``) is not stated field by
field in Vercel's docs; where it matters (after a promote or a rollback) the modules poll
until ``serving()`` names the deployment asked for, so a wrong reading shows up as a clear
wait timeout rather than a wrong report.

INSTANT ROLLBACK PAUSES AUTOMATIC PROMOTION. After an Instant Rollback Vercel stops assigning
the production domains to new production deployments (they stay STAGED) until a deployment is
promoted ("To undo a rollback, promote a deployment using vercel promote" -
vercel.com/docs/cli/rollback; the dashboard's "Undo Rollback"). So a redeploy to production
that comes out READY but STAGED is promoted explicitly (``ensure_serving``) before anyone
health-gates it.

Standard library and opsbook_rest only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    MASK,
    RestClient,
    RestError,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

VERCEL_API = "https://api.vercel.com"
TOKEN_ENV = "VERCEL_TOKEN"
TARGETS = ("production", "preview", "development")
ENV_TYPES = ("encrypted", "plain", "sensitive")
LIST_LIMIT = 100  # deployments per page (Vercel's maximum for /v6/deployments)

READY = "READY"
FAILED_STATES = frozenset({"ERROR", "CANCELED", "DELETED"})
PROMOTED = "PROMOTED"
STAGED = "STAGED"

#: Waiting: 1 s first, then half as long again each time, at most 10 s apart.
WAIT_FIRST_S = 1.0
WAIT_FACTOR = 1.5
WAIT_MAX_S = 10.0

#: What vercel_env writes in an env var's ``comment``: the fingerprint of the value it set,
#: so that a value Vercel will not show again (type sensitive) can still be compared.
COMMENT_RE = re.compile(r"\bopsbook (sha256:[0-9a-f]{12})\b")
DEPLOYMENT_ID_RE = re.compile(r"^dpl_[A-Za-z0-9]+$")


class DeploymentFailed(RestError):
    """A deployment that ended without being READY (ERROR, CANCELED), or not within the wait;
    ``deployment`` is its last known state (normalized)."""

    def __init__(self, call: str, deployment: Mapping[str, Any], reason: str, **kw: Any) -> None:
        super().__init__(call, reason=reason, **kw)
        self.deployment = dict(deployment)


# ------------------------------------------------------------------------------ the API


@dataclass
class VercelApi:
    """The calls, on one client, on behalf of ``team_id`` ('' - the token's own account)."""

    client: RestClient
    team_id: str = ""

    def query(self, **extra: Any) -> dict[str, Any]:
        """``teamId`` (when set) and ``extra`` (None values left out)."""
        query = {k: v for k, v in extra.items() if v is not None}
        if self.team_id:
            query["teamId"] = self.team_id
        return query

    # ------------------------------------------------------------------ env vars

    def list_env(self, project: str) -> list[dict[str, Any]]:
        """The project's environment variables, normalized (``env_entry``), values asked
        decrypted (``decrypt=true``: documented, marked deprecated - Vercel may ignore it,
        and never decrypts a sensitive one). The list answer may come with
        ``pagination`` (one variant of the documented oneOf): ``pagination.next`` is then
        sent back as ``until``, as on every Vercel list (the document declares no paging
        parameter here)."""
        entries: list[dict[str, Any]] = []
        for response in self.client.paginate(
            project_path(project, "env", version="v10"),
            query=self.query(decrypt="true"),
            next_page=pagination_next,
        ):
            body = response.json() or {}
            items = body.get("envs") if isinstance(body, dict) else None
            if items is None and isinstance(body, dict) and "key" in body:
                items = [body]  # the document's first oneOf variant: one variable
            for item in items or []:
                if isinstance(item, dict) and item.get("key"):
                    entry = env_entry(item)
                    if entry["readable"] and entry["type"] != "plain":
                        self.client.add_secret(entry["value"])  # masked in every message
                    entries.append(entry)
        return entries

    def create_env(
        self, project: str, key: str, value: str, env_type: str, targets: Sequence[str]
    ) -> dict[str, Any]:
        """Create ``key`` on ``targets`` (``upsert=true``: an existing one is updated). The
        answer's ``failed`` list is raised as an error. Repeating it is harmless (upsert), so
        it is retried on 5xx. A value that is not plain is masked in every message."""
        if env_type != "plain":
            self.client.add_secret(value)
        body = {
            "key": key,
            "value": value,
            "type": env_type,
            "target": list(targets),
            "comment": value_comment(value),
        }
        path = project_path(project, "env", version="v10")
        response = self.client.post(
            path, query=self.query(upsert="true"), json=body, retry_unsafe=True
        )
        answer = response.json() or {}
        failed = answer.get("failed") if isinstance(answer, dict) else None
        if failed:
            error = (failed[0] or {}).get("error") or {}
            raise RestError(
                f"POST {path}",
                status=response.status,
                reason="Vercel refused the variable",
                vendor_message=self.client.scrub(str(error.get("message") or "")),
                vendor_code=error.get("code"),
            )
        created = answer.get("created") if isinstance(answer, dict) else None
        if isinstance(created, list):
            created = created[0] if created else {}
        return env_entry(created) if isinstance(created, dict) and created.get("key") else {}

    def edit_env(self, project: str, env_id: str, *, secret: bool = True, **fields: Any) -> None:
        """PATCH an entry (``value``, ``type``, ``target``, ``comment``); a ``secret`` value is
        masked in every message. The same PATCH twice is harmless, so it is retried on 5xx.
        The answer is not read: the document's oneOf for it cannot tell its variants apart."""
        if "value" in fields:
            if secret:
                self.client.add_secret(fields["value"])
            fields.setdefault("comment", value_comment(fields["value"]))
        self.client.patch(
            project_path(project, "env", env_id, version="v9"),
            query=self.query(),
            json=fields,
            retry_unsafe=True,
        )

    def delete_env(self, project: str, env_id: str) -> bool:
        """Delete one entry; False when it did not exist (404)."""
        response = self.client.delete(
            project_path(project, "env", env_id, version="v9"), query=self.query(), accept=(404,)
        )
        return response.status != 404

    # ------------------------------------------------------------------ deployments

    def get_deployment(self, id_or_url: str) -> dict[str, Any]:
        """One deployment by id or hostname (a URL's scheme and path are dropped)."""
        path = "/v13/deployments/" + quote(deployment_key(id_or_url), safe="")
        return deployment_summary(self.client.get(path, query=self.query()).json() or {})

    def list_deployments(
        self,
        project: str,
        *,
        target: str | None = None,
        state: str | None = None,
        sha: str | None = None,
        max_items: int = 1000,
    ) -> list[dict[str, Any]]:
        """The project's deployments, newest first, at most ``max_items`` (pages of 100;
        ``pagination.next`` sent back as ``until``)."""
        limit = max(1, min(LIST_LIMIT, max_items))
        found: list[dict[str, Any]] = []
        for item in self.client.paginate(
            "/v6/deployments",
            query=self.query(projectId=project, target=target, state=state, sha=sha, limit=limit),
            next_page=pagination_next,
            items=lambda response: (response.json() or {}).get("deployments") or [],
        ):
            if isinstance(item, dict) and item.get("uid"):
                found.append(deployment_summary(item))
            if len(found) >= max_items:
                break
        return newest_first(found)

    def redeploy(
        self,
        source: Mapping[str, Any],
        *,
        project: str,
        meta: Mapping[str, str],
        target: str = "production",
    ) -> dict[str, Any]:
        """A new deployment built from ``source`` (a deployment, as ``deployment_summary``
        gives it) for ``target``, with ``meta``; built with the project's environment
        variables as they are now (what makes a redeploy apply an env change). Not retried
        on 5xx: a second POST could build twice (429 is: Vercel did nothing)."""
        body: dict[str, Any] = {
            "name": source.get("name") or project,
            "project": project,
            "deploymentId": source["id"],
            "target": target,
            "meta": {str(k): str(v) for k, v in meta.items()},
        }
        response = self.client.post("/v13/deployments", query=self.query(forceNew="1"), json=body)
        return deployment_summary(response.json() or {})

    def promote(self, project_id: str, deployment_id: str) -> int:
        """Point production at an existing production deployment, without a rebuild (201, or
        202 while it is carried out). Ends a paused state after an Instant Rollback."""
        path = "/".join(
            ["/v10/projects", quote(project_id, safe=""), "promote", quote(deployment_id, safe="")]
        )
        return self.client.post(path, query=self.query(), retry_unsafe=True).status

    def rollback(self, project_id: str, deployment_id: str, description: str = "") -> int:
        """Instant Rollback: production's domains to ``deployment_id`` (one that served
        production before), no rebuild. Pauses automatic assignment to new deployments."""
        path = "/".join(
            ["/v1/projects", quote(project_id, safe=""), "rollback", quote(deployment_id, safe="")]
        )
        query = self.query(description=description[:200] or None)
        return self.client.post(path, query=query, retry_unsafe=True).status

    # ------------------------------------------------------------------ waiting

    def wait_ready(self, deployment: Mapping[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Poll the deployment until READY: after 1 s, 1.5 s, 2.25 s ... (never faster than
        once a second) until ``timeout_s``. Raises DeploymentFailed when it ends ERROR or
        CANCELED or is still building at the timeout."""
        deployment_id = str(deployment.get("id"))
        call = f"GET /v13/deployments/{deployment_id}"
        current = dict(deployment)
        started = self.client.clock()
        delay = 0.0
        while True:
            state = current.get("state")
            if state == READY:
                return current
            if state in FAILED_STATES:
                raise DeploymentFailed(call, current, f"deployment {deployment_id} ended {state}")
            delay = next_delay(delay)
            elapsed = self.client.clock() - started
            if elapsed + delay > timeout_s:
                raise DeploymentFailed(
                    call,
                    current,
                    f"deployment {deployment_id} is still {state or 'building'}",
                    gave_up=f"not READY within wait_timeout_s={timeout_s:g} ({elapsed:.1f} s)",
                )
            self.client.sleep(delay)
            current = self.get_deployment(deployment_id)

    def wait_serving(
        self, project: str, deployment_id: str, *, timeout_s: float
    ) -> list[dict[str, Any]]:
        """Poll the project's production deployments until ``deployment_id`` serves
        (``serving()``): at once, then after 1 s, 1.5 s ... until ``timeout_s``. Returns the
        last list."""
        started = self.client.clock()
        delay = 0.0
        while True:
            listed = self.list_deployments(project, target="production", state=READY)
            now = serving(listed)
            if now and now["id"] == deployment_id:
                return listed
            delay = next_delay(delay)
            elapsed = self.client.clock() - started
            if elapsed + delay > timeout_s:
                raise RestError(
                    "GET /v6/deployments",
                    reason=f"{deployment_id} does not serve production (serving: {describe(now)})",
                    gave_up=f"not serving within wait_timeout_s={timeout_s:g} ({elapsed:.1f} s)",
                )
            self.client.sleep(delay)


def auth_hint(exc: RestError) -> str:
    """What a refused token (401, 403) may mean; '' otherwise."""
    if exc.status in (401, 403):
        return (
            " (the token is refused: expired, revoked or mistyped - or it has no access to "
            "this project or team)"
        )
    return ""


# ---------------------------------------------------------------------------------- paths


def project_path(project: str, *parts: str, version: str) -> str:
    """``/<version>/projects/<project>/<parts...>``, every part quoted."""
    quoted = [quote(project, safe=""), *(quote(p, safe="") for p in parts)]
    return "/".join([f"/{version}/projects", *quoted])


def deployment_key(id_or_url: str) -> str:
    """A deployment id as given, or a URL's hostname (``https://app-x.vercel.app/`` ->
    ``app-x.vercel.app``)."""
    text = id_or_url.strip()
    if "://" in text:
        return urlsplit(text).hostname or text
    return text.split("/", 1)[0]


def pagination_next(response: Any) -> dict[str, Any] | None:
    """Vercel's paging as a ``paginate`` next_page: ``pagination.next`` (a timestamp) sent
    back as ``until``; None when absent or null."""
    body = response.json()
    pagination = body.get("pagination") if isinstance(body, dict) else None
    following = pagination.get("next") if isinstance(pagination, dict) else None
    if following in (None, "", 0):
        return None
    return {"until": int(following) if isinstance(following, float) else following}


def next_delay(previous: float) -> float:
    """The wait's backoff: 1 s first, then half as long again each time, at most 10 s."""
    return WAIT_FIRST_S if previous <= 0 else min(WAIT_MAX_S, previous * WAIT_FACTOR)


# ------------------------------------------------------------------------------ env vars


def env_entry(item: Mapping[str, Any]) -> dict[str, Any]:
    """An env var as Vercel lists it -> ``{id, key, value, type, targets, readable,
    git_branch, comment}``. ``readable``: the value is the real one (type plain, or
    ``decrypted`` true); a sensitive or still-encrypted value is not."""
    target = item.get("target")
    targets = [target] if isinstance(target, str) else list(target or [])
    env_type = str(item.get("type") or "")
    readable = env_type == "plain" or item.get("decrypted") is True
    if env_type == "sensitive":
        readable = False
    return {
        "id": str(item.get("id") or ""),
        "key": str(item.get("key") or ""),
        "value": str(item.get("value") or "") if readable else None,
        "type": env_type,
        "targets": sorted(targets, key=_target_order),
        "readable": readable,
        "git_branch": item.get("gitBranch") or "",
        "comment": str(item.get("comment") or ""),
    }


def value_comment(value: str) -> str:
    """The comment vercel_env leaves on a variable it wrote: the value's fingerprint."""
    return f"opsbook {fingerprint(value)} - set by opsbook's vercel_env"


def value_matches(entry: Mapping[str, Any], value: str) -> bool | None:
    """Whether the entry holds ``value``: compared when readable, else by the fingerprint
    vercel_env left in its comment; None when it cannot be told (unreadable, no comment)."""
    if entry.get("readable"):
        return entry.get("value") == value
    match = COMMENT_RE.search(str(entry.get("comment") or ""))
    if match:
        return match.group(1) == fingerprint(value)
    return None


def normalize_targets(targets: Iterable[str]) -> list[str]:
    """Targets in Vercel's order, without duplicates."""
    return sorted(set(targets), key=_target_order)


def _target_order(target: str) -> int:
    return TARGETS.index(target) if target in TARGETS else len(TARGETS)


@dataclass
class EnvStep:
    """One call of a plan: ``op`` create | edit | delete, on ``key``; ``entry`` the existing
    entry (edit, delete); ``fields`` what an edit sets besides the value (never a value:
    ``set_value`` says whether the value is written too)."""

    op: str
    key: str
    entry: dict[str, Any] | None = None
    fields: dict[str, Any] | None = None
    set_value: bool = False
    why: str = ""


def plan_env(
    entries: Iterable[Mapping[str, Any]],
    key: str,
    *,
    state: str,
    value: str | None,
    env_type: str,
    targets: Sequence[str],
) -> tuple[list[EnvStep], str]:
    """The calls that make ``key`` hold ``value`` on exactly ``targets`` (state present) or
    be absent from them (state absent), and a note (why a value was written unseen).

    Entries of ``key`` restricted to a Git branch are not touched. Present: an entry on
    exactly these targets is edited when its value, type or comment differ; otherwise every
    entry overlapping the targets gives them up (edited to its other targets, or deleted
    when none are left) and one entry is created on them. Absent: every overlapping entry
    gives up these targets the same way."""
    wanted = set(targets)
    mine = [dict(e) for e in entries if e.get("key") == key and not e.get("git_branch")]
    overlapping = [e for e in mine if wanted & set(e.get("targets") or [])]
    steps: list[EnvStep] = []
    note = ""
    if state == "present":
        if value is None:
            raise AssertionError("value is not None")
        exact = next((e for e in overlapping if set(e.get("targets") or []) == wanted), None)
        if exact is not None:
            same = value_matches(exact, value)
            fields: dict[str, Any] = {}
            set_value = same is not True
            if set_value and same is None:
                note = (
                    f"{key}: the value Vercel holds cannot be read (type {exact['type']}) "
                    "and carries no opsbook fingerprint: written"
                )
            if exact.get("type") != env_type:
                fields["type"] = env_type
            if set_value or fields:
                fields["comment"] = value_comment(value)
                why = "value" if set_value else "type"
                steps.append(EnvStep("edit", key, exact, fields, set_value=set_value, why=why))
            return steps, note
        steps += _give_up(overlapping, wanted, key)
        steps.append(EnvStep("create", key, None, None, set_value=True, why="missing"))
        return steps, note
    return _give_up(overlapping, wanted, key), note


def _give_up(entries: Iterable[dict[str, Any]], wanted: set[str], key: str) -> list[EnvStep]:
    steps = []
    for entry in entries:
        rest = [t for t in entry.get("targets") or [] if t not in wanted]
        if rest:
            steps.append(EnvStep("edit", key, entry, {"target": rest}, why="targets"))
        else:
            steps.append(EnvStep("delete", key, entry, why="absent"))
    return steps


def env_view(entries: Iterable[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """What a diff shows of ``keys``: per key, its entries' targets and type, the value
    masked. Never a value."""
    keys = set(keys)
    view: dict[str, Any] = {}
    for entry in entries:
        if entry.get("key") in keys and not entry.get("git_branch"):
            view.setdefault(str(entry["key"]), []).append(
                {
                    "targets": list(entry.get("targets") or []),
                    "type": entry.get("type"),
                    "value": MASK,
                }
            )
    return {k: sorted(v, key=lambda e: e["targets"]) for k, v in sorted(view.items())}


# ----------------------------------------------------------------------------- deployments


def deployment_summary(item: Mapping[str, Any]) -> dict[str, Any]:
    """A deployment as the list (``uid``, ``state``, ``created``) or the get/create answer
    (``id``, ``readyState``, ``createdAt``) gives it -> ``{id, url, name, project_id, state,
    substate, target, meta, version, release, source, sha, created, alias_assigned}``.
    ``target`` is production, staging or preview (Vercel's null)."""
    meta = {str(k): str(v) for k, v in (item.get("meta") or {}).items()}
    return {
        "id": str(item.get("uid") or item.get("id") or ""),
        "url": str(item.get("url") or ""),
        "name": str(item.get("name") or ""),
        "project_id": str(item.get("projectId") or ""),
        "state": str(item.get("readyState") or item.get("state") or ""),
        "substate": str(item.get("readySubstate") or ""),
        "target": str(item.get("target") or "preview"),
        "meta": meta,
        "version": meta.get("opsbook_version", ""),
        "release": meta.get("opsbook_release", ""),
        "source": meta.get("opsbook_source", ""),
        "sha": meta.get("githubCommitSha", ""),
        "created": item.get("createdAt") or item.get("created") or 0,
        "alias_assigned": item.get("aliasAssigned"),
    }


def newest_first(deployments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sorted newest created first (stable: Vercel's own order among equal times)."""
    return sorted((dict(d) for d in deployments), key=lambda d: _number(d.get("created")),
                  reverse=True)  # fmt: skip


def has_served(deployment: Mapping[str, Any]) -> bool:
    """READY, target production, and it has seen production traffic (see the module's rule)."""
    if deployment.get("state") != READY or deployment.get("target") != "production":
        return False
    substate = deployment.get("substate")
    if substate:
        return substate == PROMOTED
    return bool(deployment.get("alias_assigned"))


def serving(deployments: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The deployment serving production now (the module's rule), or None."""
    served = [d for d in newest_first(deployments) if has_served(d)]
    if not served:
        return None
    return max(
        served,
        key=lambda d: (_alias_time(d), _number(d.get("created"))),
    )


def previous_good(
    deployments: Iterable[Mapping[str, Any]], current_id: str | None = None
) -> dict[str, Any] | None:
    """What to roll back to from ``current_id`` (default: the one serving): the newest
    deployment created before it that served production, was built from other code or another
    version (rolling back to the same build changes nothing), and was not itself rolled back
    from - one that an older deployment replaced later (an Instant Rollback assigned production
    to an older build after it) was judged bad and is skipped, as a release rolled back from is
    on app hosts."""
    ordered = newest_first(deployments)
    current = (
        next((d for d in ordered if d["id"] == current_id), None)
        if current_id
        else serving(ordered)
    )
    if current is None:
        return None
    created = _number(current.get("created"))
    for deployment in ordered:
        if deployment["id"] == current["id"] or not has_served(deployment):
            continue
        if _number(deployment.get("created")) >= created:
            continue
        if _same_build(deployment, current):
            continue
        if rolled_back_from(deployment, ordered):
            continue
        return deployment
    return None


def rolled_back_from(
    deployment: Mapping[str, Any], deployments: Iterable[Mapping[str, Any]]
) -> bool:
    """Whether production went back from ``deployment`` to an older build: a deployment
    created before it was assigned production's domains after it was (the aliasAssigned
    times of the list: an Instant Rollback reassigns an older build)."""
    assigned = _alias_time(deployment)
    created = _number(deployment.get("created"))
    return assigned > 0 and any(
        _number(other.get("created")) < created and _alias_time(other) > assigned
        for other in deployments
        if other.get("id") != deployment.get("id") and has_served(other)
    )


def find_deployment(deployments: Iterable[Mapping[str, Any]], wanted: str) -> dict[str, Any] | None:
    """A deployment named by its id, its URL (with or without scheme) or the version it
    runs (meta ``opsbook_version``); by version, the newest that served production."""
    wanted = wanted.strip()
    if not wanted:
        return None
    ordered = newest_first(deployments)
    key = deployment_key(wanted)
    for deployment in ordered:
        if deployment["id"] == key or (deployment["url"] and deployment["url"] == key):
            return deployment
    for deployment in ordered:
        if has_served(deployment) and deployment.get("version") == wanted:
            return deployment
    return None


def describe(deployment: Mapping[str, Any] | None) -> str:
    """``dpl_abc (1.2.0, READY/PROMOTED)`` for messages."""
    if not deployment:
        return "none"
    version = deployment.get("version") or "version unknown"
    state = "/".join(s for s in (deployment.get("state"), deployment.get("substate")) if s)
    return f"{deployment.get('id')} ({version}, {state or '?'})"


def candidates(deployments: Iterable[Mapping[str, Any]]) -> str:
    """The deployments a rollback may go to, for an error message."""
    served = [describe(d) for d in newest_first(deployments) if has_served(d)]
    return ", ".join(served[:10]) or "none"


def meta_holds(deployment: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> bool:
    """Whether the deployment's meta holds every pair of ``meta`` (False when empty)."""
    if not deployment or not meta:
        return False
    have = deployment.get("meta") or {}
    return all(str(have.get(k)) == str(v) for k, v in meta.items())


def _same_build(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    for field in ("source", "sha"):
        if (
            one.get(field)
            and one.get(field) == other.get(field)
            and (one.get("version") == other.get("version"))
        ):
            return True
    return False


def _alias_time(deployment: Mapping[str, Any]) -> float:
    value = deployment.get("alias_assigned")
    if isinstance(value, bool) or value is None:
        return 0.0
    return _number(value)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def is_deployment_id(text: str) -> bool:
    return bool(DEPLOYMENT_ID_RE.match(text or ""))
