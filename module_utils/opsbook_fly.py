# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_fly: the Fly.io Machines API calls opsbook makes, as functions over a RestClient,
and the pure rules of a rollout (batches, what a machine's config becomes, what it rolls back
to). Shared by library/fly_machines.py, library/fly_secrets.py and roles/platform_fly.

    client = RestClient(FLY_API, token=token)
    machines = list_machines(client, "my-app")
    result = update_machine_locked(client, "my-app", machines[0], deploy_change(image, "1.2.0"))

Built from tests/platform_api/fly.openapi.json (Fly's published Machines API document, a
third-party mirror: SOURCES.md). Where the document is silent, Fly's docs:

- Auth: the document declares no scheme; "All requests must include an API token in the HTTP
  headers as follows: Authorization: Bearer <fly_api_token>"
  (https://fly.io/docs/machines/api/working-with-machines-api/).
- Leases: POST .../lease (``ttl``) returns a ``nonce``; a change made under the lease carries
  it in the ``fly-machine-lease-nonce`` header (declared on the lease calls only; Fly's docs:
  https://fly.io/docs/machines/api/machines-resource/#create-a-machine-lease); DELETE .../lease
  with the nonce releases it. Every lease this module takes is released on every path.
- Wait: GET .../wait blocks up to ``timeout`` seconds (60 at most, the document says) for the
  ``state``; the machine version is passed as ``version`` (the document marks ``instance_id``
  deprecated for the same 26-character id, which the Machine object calls ``instance_id``). A
  wait that times out is answered 408 by Fly (flyctl treats 408 as "not yet"; the document
  declares only 200/400): accepted and asked again until ``wait_timeout_s``.
- Secrets: "The API servers can only encrypt; they cannot decrypt secret values"
  (https://fly.io/docs/apps/secrets/), so a secret's value is never read back: the API gives
  its ``digest`` (a digest of the value, algorithm not documented) and the secrets ``version``
  a write produced. Machines load the app's secrets when they boot; ``min_secrets_version`` on
  a machine update makes it boot with at least that version (UpdateMachineRequest).
- There is no stop call in the document: a machine removed by a scale-down is cordoned (the
  proxy stops routing to it) and destroyed with ``force=true`` (Machines_delete).

Where a machine's history lives: in its own ``config.metadata`` (strings the API keeps with the
machine and returns with it): ``opsbook_previous_image`` (the image it ran before the current
one, its "previous good"), ``opsbook_version`` (the app version the current image serves),
``opsbook_release``, and ``opsbook_images`` (a JSON list of ``[image, version]`` it ran under
opsbook, newest last, at most ``HISTORY_MAX``) - what a rollback to a version looks up.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
)

FLY_API = "https://api.machines.dev/v1"
TOKEN_ENV = "FLY_API_TOKEN"
LEASE_HEADER = "fly-machine-lease-nonce"
INSTANCE_HEADER = "fly-force-instance-id"  # https://fly.io/docs/networking/dynamic-request-routing/
META_PREVIOUS = "opsbook_previous_image"
META_VERSION = "opsbook_version"
META_RELEASE = "opsbook_release"
META_HISTORY = "opsbook_images"
META_SECRETS = "opsbook_secrets_version"
META_SCALED = "opsbook_scaled"
HISTORY_MAX = 10
WAIT_CALL_MAX_S = 60  # the document: "This request will block for up to 60 seconds"
GONE_STATES = frozenset({"destroyed", "destroying"})
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------- the calls


def auth_hint(exc: RestError) -> str:
    """What a refused token (401, 403) may mean; '' otherwise."""
    if exc.status in (401, 403):
        return " (the token was refused: expired, revoked, mistyped or not allowed this app)"
    return ""


def app_path(app: str, *parts: str) -> str:
    return "/".join(["", "apps", app, *parts])


def list_machines(client: RestClient, app: str) -> list[dict[str, Any]]:
    """GET /apps/{app}/machines: the app's machines (destroyed ones left out), oldest first."""
    machines = client.get(app_path(app, "machines")).json() or []
    alive = [m for m in machines if isinstance(m, dict) and m.get("state") not in GONE_STATES]
    return sorted(alive, key=lambda m: (str(m.get("created_at") or ""), str(m.get("id"))))


def get_machine(client: RestClient, app: str, machine_id: str) -> dict[str, Any]:
    return client.get(app_path(app, "machines", machine_id)).json() or {}


def acquire_lease(
    client: RestClient, app: str, machine_id: str, ttl_s: int, description: str
) -> dict[str, Any]:
    """POST .../lease: the Lease (``nonce``). Not repeated after a 5xx: a lease granted whose
    answer was lost would refuse the second request (a 429 is repeated: nothing was done)."""
    path = app_path(app, "machines", machine_id, "lease")
    lease = client.post(path, json={"ttl": ttl_s, "description": description}).json() or {}
    if not lease.get("nonce"):
        raise RestError(f"POST {path}", status=201, reason="the answer holds no lease nonce")
    return lease


def release_lease(client: RestClient, app: str, machine_id: str, nonce: str) -> None:
    client.delete(app_path(app, "machines", machine_id, "lease"), headers={LEASE_HEADER: nonce})


def update_machine(
    client: RestClient,
    app: str,
    machine_id: str,
    config: Mapping[str, Any],
    *,
    nonce: str | None = None,
    min_secrets_version: int | None = None,
) -> dict[str, Any]:
    """POST /apps/{app}/machines/{id} with the whole config (UpdateMachineRequest): the machine
    is replaced by one with that config. Repeating it sets the same config: safe to retry."""
    body: dict[str, Any] = {"config": dict(config)}
    if min_secrets_version is not None:
        body["min_secrets_version"] = min_secrets_version
    headers = {LEASE_HEADER: nonce} if nonce else None
    return (
        client.post(
            app_path(app, "machines", machine_id), json=body, headers=headers, retry_unsafe=True
        ).json()
        or {}
    )


def wait_machine(
    client: RestClient,
    app: str,
    machine_id: str,
    *,
    state: str = "started",
    version: str | None = None,
    timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """GET .../wait until the machine (at ``version``, when given) is in ``state``, asking again
    (each call blocks up to 60 s) until ``timeout_s``. Raises RestError when it is not."""
    path = app_path(app, "machines", machine_id, "wait")
    deadline = clock() + timeout_s
    while True:
        remaining = deadline - clock()
        seconds = int(min(WAIT_CALL_MAX_S, max(1, math.ceil(remaining))))
        query = {"state": state, "timeout": seconds, "version": version or None}
        answer = client.get(path, query=query, accept=(408,), timeout_s=seconds + 15)
        body = answer.json() if answer.status == 200 else None
        if isinstance(body, dict) and body.get("ok", True) is not False:
            return body
        if clock() >= deadline or remaining <= 0:
            raise RestError(
                f"GET {path}",
                status=answer.status,
                reason=f"the machine did not reach {state} within {timeout_s:g} s",
            )


def restart_machine(client: RestClient, app: str, machine_id: str) -> None:
    """POST .../restart (repeating it restarts again: not repeated after a 5xx)."""
    client.post(app_path(app, "machines", machine_id, "restart"))


def cordon_machine(client: RestClient, app: str, machine_id: str) -> None:
    client.post(app_path(app, "machines", machine_id, "cordon"), retry_unsafe=True)


def create_machine(client: RestClient, app: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /apps/{app}/machines. Never repeated after a 5xx or a lost answer: it could make
    a second machine (a 429 is repeated: nothing was done)."""
    return client.post(app_path(app, "machines"), json=dict(body)).json() or {}


def delete_machine(client: RestClient, app: str, machine_id: str) -> None:
    """DELETE /apps/{app}/machines/{id}?force=true: stops (kills) it if running, destroys it."""
    client.delete(app_path(app, "machines", machine_id), query={"force": True})


def list_secrets(client: RestClient, app: str) -> dict[str, dict[str, Any]]:
    """GET /apps/{app}/secrets: name -> {name, digest, created_at, updated_at} (no values)."""
    answer = client.get(app_path(app, "secrets")).json() or {}
    return {
        s["name"]: {k: v for k, v in s.items() if k != "value"}
        for s in answer.get("secrets") or []
        if isinstance(s, dict) and s.get("name")
    }


def set_secret(client: RestClient, app: str, name: str, value: str) -> dict[str, Any]:
    """POST /apps/{app}/secrets/{name} {value}: created or replaced (SetAppSecretResponse:
    name, digest, version). Setting the same value again is harmless: safe to retry."""
    client.add_secret(value)
    answer = client.post(app_path(app, "secrets", name), json={"value": value}, retry_unsafe=True)
    return {k: v for k, v in (answer.json() or {}).items() if k != "value"}


def delete_secret(client: RestClient, app: str, name: str) -> dict[str, Any]:
    """DELETE /apps/{app}/secrets/{name}: {version}."""
    return client.delete(app_path(app, "secrets", name)).json() or {}


# ------------------------------------------------------------------- images and history


def image_tag(image: str) -> str:
    """``registry.fly.io/app:1.2.0`` -> ``1.2.0``; no tag (or a digest only) -> ''."""
    name = (image or "").split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def looks_like_image(text: str) -> bool:
    """An image reference (``repo:tag``, ``host/repo``, ``repo@sha256:..``), not a version."""
    return "/" in text or "@" in text or (":" in text and not text.startswith(":"))


def history(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``[image, version]`` pairs recorded in a machine's metadata, newest last."""
    try:
        value = json.loads(metadata.get(META_HISTORY) or "[]")
    except ValueError:
        return []
    pairs = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            pairs.append((item[0], item[1]))
    return pairs


def pushed(pairs: Iterable[tuple[str, str]], image: str, version: str) -> list[tuple[str, str]]:
    """``pairs`` with ``(image, version)`` moved (or added) to the end, at most HISTORY_MAX."""
    kept = [p for p in pairs if p[0] != image] + [(image, version)]
    return kept[-HISTORY_MAX:]


def version_of(image: str, metadata: Mapping[str, Any]) -> str:
    """The app version ``image`` served on this machine: the one recorded, else its tag."""
    for known, version in reversed(history(metadata)):
        if known == image and version:
            return version
    return image_tag(image)


def summarize(machine: Mapping[str, Any]) -> dict[str, Any]:
    """What opsbook reads of a Machine object (never its env: it may hold values)."""
    config = machine.get("config") or {}
    metadata = {str(k): str(v) for k, v in (config.get("metadata") or {}).items()}
    image = str(config.get("image") or "")
    recorded = metadata.get(META_VERSION)
    on_record = any(known == image for known, _unused in history(metadata))
    version = recorded if recorded and on_record else image_tag(image)
    previous = metadata.get(META_PREVIOUS, "")
    return {
        "id": str(machine.get("id") or ""),
        "name": str(machine.get("name") or ""),
        "state": str(machine.get("state") or ""),
        "region": str(machine.get("region") or ""),
        "instance_id": str(machine.get("instance_id") or ""),
        "created_at": str(machine.get("created_at") or ""),
        "image": image,
        "version": version or "",
        "previous_image": previous,
        "previous_version": version_of(previous, metadata) if previous else "",
        "images": [list(p) for p in history(metadata)],
        "metadata": metadata,
        "has_mounts": bool(config.get("mounts")),
    }


def unit(machine_id: str) -> str:
    return f"fly:{machine_id}"


def from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A Machine object rebuilt from what ``summarize`` kept of it (a previous task's
    ``machines``): enough to decide what a change would do (image, metadata), never a config to
    send - the rest of the config (env, services, guest...) is not in a summary, and is read
    from Fly under the lease (``update_machine_locked(..., read_under_lease=True)``)."""
    config: dict[str, Any] = {
        "image": str(summary.get("image") or ""),
        "metadata": {str(k): str(v) for k, v in (summary.get("metadata") or {}).items()},
    }
    if summary.get("has_mounts"):
        config["mounts"] = [{}]
    machine: dict[str, Any] = {
        key: str(summary.get(key) or "")
        for key in ("id", "name", "state", "region", "instance_id", "created_at")
    }
    return {**machine, "config": config}


# --------------------------------------------------------------------- config changes

#: A change: the machine's config -> the new config, or None when there is nothing to change.
Change = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]  # quoted: evaluated at import


def deploy_change(
    image: str | None,
    version: str = "",
    release: str = "",
    *,
    metadata: Mapping[str, str] | None = None,
    min_secrets_version: int | None = None,
) -> Change:
    """The config with ``image`` (recording the previous one, the version and the release in
    the metadata), ``metadata`` set, and ``opsbook_secrets_version`` raised to
    ``min_secrets_version``. None when the machine has all of it already: ``version`` and
    ``release`` ride along with an image change, never cause one."""

    def change(config: Mapping[str, Any]) -> dict[str, Any] | None:
        new = copy.deepcopy(dict(config))
        meta = {str(k): str(v) for k, v in (new.get("metadata") or {}).items()}
        before = dict(meta)
        old_image = str(new.get("image") or "")
        if image and image != old_image:
            old_version = summarize({"config": config})["version"]
            pairs = history(meta)
            if old_image:
                pairs = pushed(pairs, old_image, old_version)
                meta[META_PREVIOUS] = old_image
            meta[META_VERSION] = version or image_tag(image)
            meta[META_HISTORY] = json.dumps(
                [list(p) for p in pushed(pairs, image, meta[META_VERSION])]
            )
            if release:
                meta[META_RELEASE] = release
            new["image"] = image
        meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
        if min_secrets_version is not None:
            loaded = _int(meta.get(META_SECRETS))
            if loaded is None or loaded < min_secrets_version:
                meta[META_SECRETS] = str(min_secrets_version)
        if meta == before and new.get("image") == config.get("image"):
            return None
        new["metadata"] = meta
        return new

    return change


def rollback_change(target: str, target_version: str) -> Change:
    """The config back on ``target``: its previous image becomes the one recorded before
    ``target`` (so a second rollback goes one further back), the history is kept."""

    def change(config: Mapping[str, Any]) -> dict[str, Any] | None:
        if str(config.get("image") or "") == target:
            return None
        new = copy.deepcopy(dict(config))
        meta = {str(k): str(v) for k, v in (new.get("metadata") or {}).items()}
        pairs = history(meta)
        old_image = str(new.get("image") or "")
        if old_image and all(image != old_image for image, _unused in pairs):
            pairs = pushed(pairs, old_image, summarize({"config": config})["version"])
        images = [image for image, _unused in pairs]
        if target not in images:
            pairs = [*pairs, (target, target_version)]
            images.append(target)
        position = images.index(target)
        earlier = [image for image in images[:position] if image != old_image]
        meta[META_PREVIOUS] = earlier[-1] if earlier else ""
        if not meta[META_PREVIOUS]:
            del meta[META_PREVIOUS]
        meta[META_VERSION] = target_version
        meta.pop(META_RELEASE, None)  # the release that made the image left behind
        meta[META_HISTORY] = json.dumps([list(p) for p in pairs[-HISTORY_MAX:]])
        new["image"] = target
        new["metadata"] = meta
        return new

    return change


def rollback_target(summary: Mapping[str, Any], rollback_to: str) -> tuple[str, str] | str:
    """(image, version) a machine rolls back to, or the reason it cannot (naming what exists).
    ``''``: its previous image; an image reference: that image; else a version: the image
    with that version among the machine's current and recorded images."""
    known = [(summary["image"], summary["version"])]
    for image, version in reversed(summary["images"]):
        known.append((image, version))
    if not rollback_to:
        previous = summary.get("previous_image") or ""
        if not previous:
            return (
                f"machine {summary['id']} has no previous image on record "
                f"({META_PREVIOUS} is not in its metadata); it runs {summary['image']}"
            )
        return previous, summary.get("previous_version") or image_tag(previous)
    if looks_like_image(rollback_to):
        for image, version in known:
            if image == rollback_to:
                return image, version
        return rollback_to, image_tag(rollback_to)
    for image, version in known:
        if rollback_to in (version, image_tag(image)):
            return image, version or image_tag(image)
    versions = sorted({v or image_tag(i) for i, v in known if v or image_tag(i)})
    return (
        f"machine {summary['id']} has no image of version {rollback_to} on record "
        f"(it knows {', '.join(versions) or 'none'})"
    )


# ------------------------------------------------------------------------- batches


def batch_size(batch: Any, total: int) -> int:
    """A later batch's size: a count (``2``) or a percentage of ``total`` (``"50%"``), >= 1."""
    text = str(batch if batch is not None else "").strip()
    if not text:
        return max(1, total)
    if text.endswith("%"):
        percent = float(text[:-1])
        if percent <= 0:
            raise ValueError(f"batch must be a count or a percentage > 0, got {text!r}")
        return max(1, int(total * percent / 100))
    count = int(text)
    if count < 1:
        raise ValueError(f"batch must be a count >= 1 or a percentage, got {text!r}")
    return count


def plan_batches(ids: Sequence[str], canary: int, batch: Any) -> list[list[str]]:
    """``ids`` in batches: the first ``canary`` alone, then batches of ``batch`` (a count or a
    percentage of all of ``ids``)."""
    ids = list(ids)
    if not ids:
        return []
    size = batch_size(batch, len(ids))
    canary = max(0, int(canary or 0))
    batches = [ids[:canary]] if canary else []
    rest = ids[canary:]
    batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return [b for b in batches if b]


# --------------------------------------------------------------------- locked update


def update_machine_locked(
    client: RestClient,
    app: str,
    listed: Mapping[str, Any],
    change: Change,
    *,
    lease_ttl_s: int = 60,
    wait: bool = True,
    wait_timeout_s: float = 60.0,
    min_secrets_version: int | None = None,
    description: str = "opsbook",
    read_under_lease: bool = False,
) -> dict[str, Any]:
    """One machine changed under a lease: acquire it, read the config (the listed one when
    the lease's version says it is current; with ``read_under_lease`` - ``listed`` is only
    known, ``from_summary`` - always ``GET`` the machine), update, release the lease - on every
    path - then wait until it started. The result: ``outcome`` updated | unchanged | failed,
    ``changed`` (True, False, or None when it cannot be known), ``error``, images and
    versions before and after, ``state``."""
    before = summarize(listed)
    result: dict[str, Any] = {
        "id": before["id"],
        "outcome": "unchanged",
        "changed": False,
        "error": "",
        "before_image": before["image"],
        "before_version": before["version"],
        "after_image": before["image"],
        "after_version": before["version"],
        "state": before["state"],
    }
    if change(listed.get("config") or {}) is None:
        return result
    machine_id = before["id"]
    try:
        lease = acquire_lease(client, app, machine_id, lease_ttl_s, description)
    except RestError as exc:
        return {**result, "outcome": "failed", "error": f"{exc}; the machine was not changed"}
    updated: dict[str, Any] | None = None
    problem, unknown = "", False
    try:
        current = dict(listed)
        if read_under_lease or lease.get("version") != listed.get("instance_id"):
            current = get_machine(client, app, machine_id)
        new_config = change(current.get("config") or {})
        if new_config is None:
            after = summarize(current)
            return {**result, "after_image": after["image"], "after_version": after["version"]}
        updated = _update_or_find_out(
            client, app, machine_id, new_config, lease["nonce"], min_secrets_version
        )
    except _UnknownOutcome as exc:
        problem, unknown = str(exc.error), True
    except RestError as exc:
        problem = str(exc)
    finally:
        release_problem = _release(client, app, machine_id, lease["nonce"], lease_ttl_s)
    if updated is None:
        tail = (
            "; whether Fly applied the update is unknown (the machine could not be read)"
            if unknown
            else "; the machine was not changed"
        )
        return {
            **result,
            "outcome": "failed",
            "changed": None if unknown else False,
            "error": problem + tail + release_problem,
        }
    after = summarize(updated)
    result.update(
        outcome="updated",
        changed=True,
        after_image=after["image"],
        after_version=after["version"],
        state=after["state"] or "replacing",
    )
    if release_problem:
        result["warning"] = release_problem.lstrip("; ")
    if wait:
        try:
            answer = wait_machine(
                client,
                app,
                machine_id,
                state="started",
                version=after["instance_id"] or None,
                timeout_s=wait_timeout_s,
            )
            result["state"] = answer.get("state") or "started"
        except RestError as exc:
            result.update(outcome="failed", error=f"updated, then: {exc}")
    return result


class _UnknownOutcome(Exception):
    def __init__(self, error: RestError) -> None:
        super().__init__(str(error))
        self.error = error


def _update_or_find_out(
    client: RestClient,
    app: str,
    machine_id: str,
    config: Mapping[str, Any],
    nonce: str,
    min_secrets_version: int | None,
) -> dict[str, Any]:
    """The update. When it failed without a refusal (5xx, timeout: Fly may have applied it),
    the machine read again says whether it was: the updated machine is returned, or the error
    raised; _UnknownOutcome when the machine cannot be read either."""
    try:
        return update_machine(
            client, app, machine_id, config, nonce=nonce, min_secrets_version=min_secrets_version
        )
    except RestError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            raise
        try:
            seen = get_machine(client, app, machine_id)
        except RestError:
            raise _UnknownOutcome(exc) from exc
        seen_config = seen.get("config") or {}
        if (seen_config.get("image"), seen_config.get("metadata")) == (
            config.get("image"),
            config.get("metadata"),
        ):
            return seen
        raise


def _release(client: RestClient, app: str, machine_id: str, nonce: str, ttl_s: int) -> str:
    try:
        release_lease(client, app, machine_id, nonce)
    except RestError as exc:
        return f"; releasing the lease failed ({exc}): it expires by itself within {ttl_s} s"
    return ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
