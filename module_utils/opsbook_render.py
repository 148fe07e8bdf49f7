# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_render: Render's public REST API (https://api.render.com/v1) as functions over
``opsbook_rest.RestClient`` - shared by library/render_env.py, library/render_service.py and
whoever else needs a Render call (the secret rotation's env store, the bench).

Built from Render's published document (tests/platform_api/render.openapi.json, a third-party
copy of https://api-docs.render.com/openapi/render-public-api-1.json; SOURCES.md, section
Render):

- Environment variables, ONE KEY AT A TIME: ``GET``/``PUT``/``DELETE
  /services/{serviceId}/env-vars/{envVarKey}``, and the list ``GET
  /services/{serviceId}/env-vars`` (cursor pagination). The bulk ``PUT
  /services/{serviceId}/env-vars`` REPLACES every variable of the service with the list sent
  (it has wiped teams' variables); nothing here calls it, and there is no function for it.
- Deploys: trigger (``POST .../deploys``: 201 with the deploy, or 202 "Queued" without a body),
  retrieve, list (cursor pagination, ``{cursor, deploy}`` items), roll back (``POST
  .../rollback {deployId}``: a new deploy of the old one's code), restart, scale
  (``{numInstances}``, 202).
- Errors: the ``error`` schema ``{id, message}``; RestClient quotes the message.

Render applies a change of environment variables on the next deploy (the dashboard's "Save,
rebuild, and deploy"; an API ``PUT`` only saves - render.com/docs/configure-environment-variables),
so a change the running app must read is followed by a deploy of the code that is live
(``redeploy_source``).

Standard library and opsbook_rest only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import masked_diff
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
)

RENDER_API = "https://api.render.com/v1"
TOKEN_ENV = "RENDER_API_KEY"
PAGE_LIMIT = 100  # the document's limitParam maximum (default 20)

# deployStatus, as the document enumerates it
LIVE = "live"
PENDING_STATUSES = frozenset(
    {"created", "queued", "build_in_progress", "update_in_progress", "pre_deploy_in_progress"}
)
FAILED_STATUSES = frozenset(
    {"build_failed", "update_failed", "canceled", "pre_deploy_failed", "deactivated"}
)
# a deploy that served once: live now, or deactivated (replaced by a later live deploy)
SERVED_STATUSES = frozenset({LIVE, "deactivated"})

#: A commit id: 7 to 40 hexadecimal digits; anything else given as a source is an image URL.
COMMIT_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")

#: Waiting: the first poll 1 s after the deploy's status was read (the trigger's answer, a
#: listing) - at once when only its id is known - growing by half each time, at most 10 s apart.
WAIT_FIRST_S = 1.0
WAIT_FACTOR = 1.5
WAIT_MAX_S = 10.0


class DeployFailed(RestError):
    """A deploy that ended without going live (build_failed, update_failed, canceled, ...),
    or did not within the wait: ``deploy`` is its last known state."""

    def __init__(self, call: str, deploy: Mapping[str, Any], reason: str, **kw: Any) -> None:
        super().__init__(call, reason=reason, **kw)
        self.deploy = dict(deploy)


# ---------------------------------------------------------------------------------- paths


def service_path(service_id: str, *parts: str) -> str:
    """``/services/<id>/<parts...>``, every part quoted (an env var key is user input)."""
    return "/".join(["/services", quote(service_id, safe=""), *(quote(p, safe="") for p in parts)])


def cursor_pages(limit: int) -> Callable[[Any], dict[str, Any] | None]:
    """Render's cursor pagination as a ``paginate`` next_page: every item carries its cursor;
    the last one's is sent back as ``cursor`` until a page comes back shorter than ``limit``."""

    def next_page(response: Any) -> dict[str, Any] | None:
        items = response.json() or []
        if not isinstance(items, list) or len(items) < limit or not items:
            return None
        last = items[-1].get("cursor") if isinstance(items[-1], dict) else None
        return {"cursor": last} if last else None

    return next_page


# --------------------------------------------------------------------------- env vars


def list_env_vars(client: RestClient, service_id: str) -> dict[str, str]:
    """Every variable set on the service (not its linked environment groups): key -> value.
    The values are added to the client's secrets, so that no message can show one."""
    found: dict[str, str] = {}
    for item in client.paginate(
        service_path(service_id, "env-vars"),
        query={"limit": PAGE_LIMIT},
        next_page=cursor_pages(PAGE_LIMIT),
        items=lambda response: response.json() or [],
    ):
        env_var = item.get("envVar") if isinstance(item, dict) else None
        if isinstance(env_var, dict) and "key" in env_var:
            value = str(env_var.get("value") or "")
            client.add_secret(value)
            found[str(env_var["key"])] = value
    return found


def get_env_var(client: RestClient, service_id: str, key: str) -> str | None:
    """The value of ``key``, or None when the service has no such variable (404)."""
    response = client.get(service_path(service_id, "env-vars", key), accept=(404,))
    if response.status == 404:
        return None
    body = response.json() or {}
    value = str(body.get("value") or "")
    client.add_secret(value)
    return value


def put_env_var(client: RestClient, service_id: str, key: str, value: str) -> None:
    """Add or update ONE variable (``PUT .../env-vars/{key}`` with ``{value}``); the others are
    left as they are. A PUT of the same value twice is harmless, so it is retried on 5xx."""
    client.add_secret(value)
    client.put(service_path(service_id, "env-vars", key), json={"value": value})


def delete_env_var(client: RestClient, service_id: str, key: str) -> bool:
    """Delete ONE variable; False when it did not exist (404)."""
    response = client.delete(service_path(service_id, "env-vars", key), accept=(404,))
    return response.status != 404


def env_diff(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> dict[str, Any]:
    """A diff of variables with every value masked: a key that is set shows ``********``
    (``******** (changed)`` after the task when its value changed); an unset key is missing."""
    return masked_diff(
        [k for k, v in before.items() if v is not None],
        {
            k: "" if before.get(k) is None or before.get(k) == v else "changed"
            for k, v in after.items()
            if v is not None
        },
    )


def auth_hint(exc: RestError) -> str:
    """What a refused API key (401) means; '' otherwise."""
    return " (the token is not valid: expired, revoked or mistyped)" if exc.status == 401 else ""


# ---------------------------------------------------------------------------- deploys


def deploy_source(deploy: Mapping[str, Any] | None) -> str:
    """What a deploy runs: its commit id, else its image ref ('' when unknown)."""
    if not deploy:
        return ""
    commit = deploy.get("commit") or {}
    image = deploy.get("image") or {}
    return str(commit.get("id") or image.get("ref") or "")


def same_source(wanted: str, deploy: Mapping[str, Any] | None) -> bool:
    """Whether ``deploy`` runs ``wanted`` (a commit id - a short one matches its full id - or
    an image URL, compared as given)."""
    have = deploy_source(deploy)
    if not wanted or not have:
        return False
    if COMMIT_RE.match(wanted) and COMMIT_RE.match(have):
        return have.lower().startswith(wanted.lower()) or wanted.lower().startswith(have.lower())
    return have == wanted


def source_body(source: str) -> dict[str, str]:
    """The create-deploy body for a source: a commit id (``commitId``) or an image URL
    (``imageUrl``); '' deploys the latest commit of the service's branch (an empty body)."""
    if not source:
        return {}
    if COMMIT_RE.match(source):
        return {"commitId": source}
    return {"imageUrl": source}


def list_deploys(
    client: RestClient, service_id: str, *, max_items: int = 20, statuses: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The service's deploys as Render lists them (newest first), at most ``max_items``
    (pages of up to 100 followed by their cursors)."""
    limit = max(1, min(PAGE_LIMIT, max_items))
    query: dict[str, Any] = {"limit": limit}
    if statuses:
        query["status"] = list(statuses)
    deploys: list[dict[str, Any]] = []
    for item in client.paginate(
        service_path(service_id, "deploys"),
        query=query,
        next_page=cursor_pages(limit),
        items=lambda response: response.json() or [],
    ):
        deploy = item.get("deploy") if isinstance(item, dict) else None
        if isinstance(deploy, dict) and deploy.get("id"):
            deploys.append(deploy)
        if len(deploys) >= max_items:
            break
    return newest_first(deploys)


def newest_first(deploys: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Deploys sorted newest first by createdAt (a stable sort: Render's own order among equal
    or missing times is kept). ISO 8601 times in UTC sort as text."""
    return sorted((dict(d) for d in deploys), key=lambda d: str(d.get("createdAt") or ""),
                  reverse=True)  # fmt: skip


def get_deploy(client: RestClient, service_id: str, deploy_id: str) -> dict[str, Any]:
    return client.get(service_path(service_id, "deploys", deploy_id)).json() or {}


def from_summary(item: Mapping[str, Any]) -> dict[str, Any]:
    """A deploy as Render gives it, from ``summary``'s shape (what render_service returns:
    ``commit`` and ``image`` as strings, ``created``, ``finished``); a deploy already in
    Render's shape is returned as it is. ``summary(from_summary(s)) == s``."""
    if "createdAt" in item or isinstance(item.get("commit"), Mapping) or isinstance(
        item.get("image"), Mapping
    ):  # fmt: skip
        return dict(item)
    deploy: dict[str, Any] = {
        "id": item.get("id"),
        "status": item.get("status"),
        "trigger": item.get("trigger"),
        "createdAt": item.get("created"),
        "finishedAt": item.get("finished"),
    }
    if item.get("commit"):
        deploy["commit"] = {"id": item["commit"]}
    if item.get("image"):
        deploy["image"] = {"ref": item["image"]}
    return deploy


def live_deploy(deploys: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The deploy serving now (status live; the newest if Render lists more than one)."""
    for deploy in newest_first(deploys):
        if deploy.get("status") == LIVE:
            return deploy
    return None


def previous_good(
    deploys: Iterable[Mapping[str, Any]], current_id: str | None = None
) -> dict[str, Any] | None:
    """The deploy to roll back to from ``current_id`` (default: the live one): the newest
    deploy created before it that served (deactivated: it was live, then replaced), runs
    other code than the current one, and was not itself rolled back - a deploy whose
    successor (the next deploy that served) was triggered by a rollback was judged bad (an
    automatic rollback after a failed health gate) and is skipped."""
    ordered = newest_first(deploys)
    current = (
        next((d for d in ordered if d.get("id") == current_id), None)
        if current_id
        else (live_deploy(ordered))
    )
    if current is None:
        return None
    served = [d for d in ordered if d.get("status") in SERVED_STATUSES]
    position = next((i for i, d in enumerate(served) if d.get("id") == current.get("id")), None)
    older = (
        served[position + 1 :]
        if position is not None
        else [
            d for d in served if str(d.get("createdAt") or "") < str(current.get("createdAt") or "")
        ]
    )
    current_source = deploy_source(current)
    for index, deploy in enumerate(older):
        successor = older[index - 1] if index > 0 else current
        if successor.get("trigger") == "rollback":
            continue  # replaced by a rollback: this one was rolled back
        if current_source and deploy_source(deploy) == current_source:
            continue  # the same code: rolling back to it changes nothing
        return deploy
    return None


def find_deploy(
    deploys: Iterable[Mapping[str, Any]],
    wanted: str,
    version_of: Callable[[Mapping[str, Any]], str],
) -> dict[str, Any] | None:
    """A deploy named by its id, its commit id (or a prefix of 7+ digits), its image URL, or
    the version it runs (``version_of``: an image tag, or what the caller knows); the newest
    that served first, then the newest of any status."""
    ordered = newest_first(deploys)
    ranked = [d for d in ordered if d.get("status") in SERVED_STATUSES] + [
        d for d in ordered if d.get("status") not in SERVED_STATUSES
    ]
    for test in (
        lambda d: d.get("id") == wanted,
        lambda d: same_source(wanted, d),
        lambda d: bool(wanted) and version_of(d) == wanted,
    ):
        match = next((d for d in ranked if test(d)), None)
        if match is not None:
            return match
    return None


def image_version(deploy: Mapping[str, Any]) -> str:
    """The tag of an image-backed deploy's image (``registry/app:1.2.0`` -> ``1.2.0``), '' for
    a Git-backed one: Render records no app version on a deploy, so this is all it tells."""
    ref = str((deploy.get("image") or {}).get("ref") or "")
    name = ref.rsplit("/", 1)[-1]
    return name.split(":", 1)[1].split("@", 1)[0] if ":" in name else ""


def describe_deploy(deploy: Mapping[str, Any] | None) -> str:
    """``dep-abc (live, commit 1a2b3c4)`` for messages."""
    if not deploy:
        return "none"
    source = deploy_source(deploy)
    what = f"commit {source[:12]}" if COMMIT_RE.match(source) else (source or "unknown source")
    return f"{deploy.get('id')} ({deploy.get('status') or '?'}, {what})"


def summary(deploy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a module returns of a deploy: id, status, trigger, commit, image, times."""
    if not deploy:
        return None
    commit = deploy.get("commit") or {}
    image = deploy.get("image") or {}
    return {
        "id": deploy.get("id"),
        "status": deploy.get("status"),
        "trigger": deploy.get("trigger"),
        "commit": commit.get("id"),
        "image": image.get("ref"),
        "source": deploy_source(deploy),
        "created": deploy.get("createdAt"),
        "finished": deploy.get("finishedAt"),
    }


def create_deploy(
    client: RestClient,
    service_id: str,
    source: str = "",
    *,
    clear_cache: bool = False,
    known_ids: Iterable[str] = (),
    find_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Trigger a deploy of ``source`` (see source_body). Render answers 201 with the deploy,
    or 202 "Queued" without a body: then the new deploy is looked for in the list - the
    newest one not in ``known_ids`` (the ids listed before the call) running ``source`` -
    polling with the wait's backoff until ``find_timeout_s``. Not retried on 5xx (a second
    POST could deploy twice); 429 is (Render did nothing)."""
    body: dict[str, Any] = dict(source_body(source))
    if clear_cache:
        body["clearCache"] = "clear"
    path = service_path(service_id, "deploys")
    response = client.post(path, json=body)
    if response.status != 202:
        deploy = response.json() or {}
        if deploy.get("id"):
            return deploy
    known = set(known_ids)
    started = client.clock()
    delay = 0.0
    while True:
        if delay:
            client.sleep(delay)
        for deploy in list_deploys(client, service_id, max_items=20):
            if deploy.get("id") not in known and (not source or same_source(source, deploy)):
                return deploy
        delay = next_delay(delay)
        if client.clock() - started + delay > find_timeout_s:
            raise RestError(
                f"POST {path}",
                status=response.status,
                reason="queued",
                gave_up=f"the queued deploy did not appear in the list within {find_timeout_s:g} s",
            )


def next_delay(previous: float) -> float:
    """The wait's backoff: 1 s first, then half as long again each time, at most 10 s."""
    return WAIT_FIRST_S if previous <= 0 else min(WAIT_MAX_S, previous * WAIT_FACTOR)


def wait_deploy(
    client: RestClient,
    service_id: str,
    deploy: Mapping[str, Any],
    *,
    timeout_s: float,
    on_poll: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the deploy until it is live, every 1 s, 1.5 s, 2.25 s ... (never faster than once
    a second, at most 10 s apart) until ``timeout_s``. A deploy given with its status (the
    answer of the trigger or rollback POST, or the listing that found a queued one) is not
    read again at once: it is done when that status is final, else the first poll comes 1 s
    later. A deploy given by its id alone is read at once. Returns the live deploy; raises
    DeployFailed when it ends otherwise (build_failed, update_failed, canceled,
    pre_deploy_failed, deactivated - replaced before it went live) or is still pending at the
    timeout."""
    deploy_id = str(deploy.get("id"))
    call = f"GET {service_path(service_id, 'deploys', deploy_id)}"
    current = dict(deploy)
    started = client.clock()
    delay = WAIT_FIRST_S if current.get("status") else 0.0  # just read: the first poll waits
    while True:
        status = current.get("status")
        if status == LIVE:
            return current
        if status in FAILED_STATUSES:
            raise DeployFailed(call, current, f"deploy {deploy_id} ended {status}")
        if delay:
            elapsed = client.clock() - started
            if elapsed + delay > timeout_s:
                raise DeployFailed(
                    call,
                    current,
                    f"deploy {deploy_id} is still {status or 'pending'}",
                    gave_up=f"not live within wait_timeout_s={timeout_s:g} ({elapsed:.1f} s)",
                )
            client.sleep(delay)
        current = get_deploy(client, service_id, deploy_id)
        if on_poll is not None:
            on_poll(current)
        delay = next_delay(delay)


def rollback(client: RestClient, service_id: str, deploy_id: str) -> dict[str, Any]:
    """``POST .../rollback {deployId}``: Render makes a new deploy (trigger ``rollback``) of
    that deploy's code. Not retried on 5xx (a second one would roll back twice)."""
    response = client.post(service_path(service_id, "rollback"), json={"deployId": deploy_id})
    return response.json() or {}


def restart(client: RestClient, service_id: str) -> None:
    client.post(service_path(service_id, "restart"))


def scale(client: RestClient, service_id: str, num_instances: int) -> None:
    """``POST .../scale {numInstances}`` (202). Setting a fixed count is safe to repeat, so a
    5xx is retried. Render ignores it while autoscaling is on for the service (its document)."""
    client.post(
        service_path(service_id, "scale"), json={"numInstances": num_instances}, retry_unsafe=True
    )
