#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""fly_machines: a Fly.io app's machines - list and plan, update the image under a lease, roll
back, wait, restart, scale (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fly_machines
short_description: Update, roll back, wait for, restart and scale a Fly.io app's machines
description:
  - Every O(action) starts with one C(GET /apps/{app}/machines) (destroyed machines left
    out); a machine's state, image and history are read from that answer - except
    O(action=update) and O(action=rollback) given O(known_machines) (see there).
  - O(action=list) - the machines (RV(machines)); with O(image), also the plan of a rollout
    to it (RV(plan)) - the machines not on it yet, in batches, O(canary) first, then
    O(batch) at a time. Read-only.
  - O(action=get) - the machines of O(machine_ids) only.
  - O(action=update) - for each machine of O(machine_ids) (default all), one after the
    other - a machine already as asked is left alone without a call (RV(results) outcome
    C(unchanged)); else a lease (C(POST .../lease), ttl O(lease_ttl_s)), the config read
    again if the lease says it changed since the list (always, given O(known_machines)),
    C(POST /apps/{app}/machines/{id}) with the whole config - O(image), O(metadata), the
    header C(fly-machine-lease-nonce) - then the lease released (C(DELETE .../lease))
    B(on every path, failures included), then
    C(GET .../wait?state=started&version=<new version>) - Fly's own wait, no polling - until
    O(wait_timeout_s). The first machine that fails stops the task; the ones after it are
    not attempted (outcome C(skipped)).
  - Where a machine's history lives - its own C(config.metadata), which the API keeps and
    returns with the machine. An update that changes the image records
    C(opsbook_previous_image) (the image before, the "previous good"), C(opsbook_version)
    (O(version), else the image's tag), C(opsbook_release) (O(release)) and
    C(opsbook_images) (the last 10 images with their versions, a JSON list). A machine
    changed since by other means (flyctl) keeps what opsbook recorded.
  - O(action=rollback) - each machine of O(machine_ids) back to O(rollback_to) - C('') its
    C(opsbook_previous_image), an image reference that image, a version the image of that
    version on the machine's record - with the same lease, update and wait as O(action=update);
    its previous image becomes the one recorded before that (a second rollback goes one
    further back). When a machine has no such image on record, B(nothing is changed on any
    machine) and the error names what each one knows.
  - In check mode, O(action=update) and O(action=rollback) return a plan too (RV(plan) -
    the machines that would change, in batches of O(canary) then O(batch)).
  - O(action=wait) - C(GET .../wait) until O(state).
  - O(action=restart) - C(POST .../restart) and a wait until started, one machine after the
    other. A restart does not load new secrets (O(action=update) with
    O(min_secrets_version) does).
  - O(action=scale) - O(count) machines - more - C(POST /apps/{app}/machines) with the config
    of the newest machine (a clone, metadata C(opsbook_scaled=true)), each waited for; fewer -
    the newest machines are cordoned (C(POST .../cordon) - the proxy stops routing to them)
    then destroyed (C(DELETE ...?force=true); Fly's document has no stop call). B(Refused)
    when it is unsafe - a machine with a volume is never cloned (its volume is its own) nor
    destroyed (its data would go), and the count is at least 1.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  app:
    description:
      - The Fly app, the inventory's C(fly_app).
    type: str
    required: true
  action:
    description:
      - What to do (see above).
    type: str
    required: true
    choices: [list, get, update, rollback, wait, restart, scale]
  known_machines:
    description:
      - O(action=update) and O(action=rollback) - the machines as an earlier task of the same
        run read them (its RV(machines), e.g. the plan's O(action=list)), so that a task on
        one machine does not list them all again. What each machine needs (and a rollback's
        target) is worked out from them; a machine to change is then read with one
        C(GET /apps/{app}/machines/{id}) B(under its lease), and the update is made from that
        answer - never from O(known_machines), which holds no config (no C(env)). A machine
        changed meanwhile by other means is therefore never overwritten with a stale config,
        and one that no longer needs the change is left alone (outcome C(unchanged)).
      - Used only when every machine of O(machine_ids) is in it and at most one of them needs
        a change (with several, one list costs fewer calls than a read of each); else the
        machines are listed as without it. Ignored by the other actions.
    type: list
    elements: dict
    default: []
  machine_ids:
    description:
      - The machines to act on (ids). Default - every machine of the app. An id the app
        does not have fails the task before anything is sent.
    type: list
    elements: str
    default: []
  image:
    description:
      - O(action=update) - the image the machines must run (C(registry.fly.io/<app>:<tag>)).
      - O(action=list) - the image a rollout plan is made for (RV(plan)).
    type: str
  version:
    description:
      - The app version O(image) serves, recorded as C(opsbook_version) when the image
        changes. Default - the image's tag.
    type: str
    default: ""
  release:
    description:
      - The release id recorded as C(opsbook_release) when the image changes.
    type: str
    default: ""
  metadata:
    description:
      - O(action=update) - metadata the machines must carry (strings). A machine that
        carries them already is unchanged.
    type: dict
    default: {}
  min_secrets_version:
    description:
      - O(action=update) - boot the machines with at least this app secrets version (what
        M(opsbook.runbooks.fly_secrets) returns as C(version)), recorded as
        C(opsbook_secrets_version). A
        machine that recorded this version or a later one is unchanged.
    type: int
  rollback_to:
    description:
      - O(action=rollback) - C('') (each machine's previous image), an image reference, or
        a version.
    type: str
    default: ""
  canary:
    description:
      - Machines in the first batch of a plan (RV(plan) - O(action=list) with O(image), or
        O(action=update) and O(action=rollback) in check mode).
    type: int
    default: 1
  batch:
    description:
      - Size of every later batch of a plan, a count (C(2)) or a percentage of the machines
        to change (C(50%)).
    type: str
    default: 50%
  count:
    description:
      - O(action=scale) - the number of machines the app must have (at least 1).
    type: int
  state:
    description:
      - O(action=wait) - the state to wait for.
    type: str
    choices: [started, stopped, suspended, destroyed]
    default: started
  wait:
    description:
      - Wait until each machine updated, rolled back, restarted or created has started.
    type: bool
    default: true
  wait_timeout_s:
    description:
      - Seconds to wait for one machine (Fly's wait call blocks up to 60 s; it is asked again
        until then).
    type: float
    default: 120
  lease_ttl_s:
    description:
      - Seconds a lease lasts if it is not released (a run killed mid-update leaves the
        machine leased that long at most).
    type: int
    default: 60
  gate_base_url:
    description:
      - The app's public URL (the inventory's C(app_base_url)). When given, RV(gate_targets)
        holds one M(opsbook.runbooks.http_gate) target per machine now serving what was asked (per
        machine
        read, with O(action=list) and O(action=get)), sent to that machine with Fly's
        C(fly-force-instance-id) header.
    type: str
  token:
    description:
      - A Fly.io API token (HTTP Bearer), the inventory's C(fly_api_token). Taken from the
        environment variable C(FLY_API_TOKEN) when not given.
    type: str
    required: true
  base_url:
    description:
      - The Machines API, the inventory's C(fly_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.machines.dev/v1
attributes:
  check_mode:
    support: full
    description: Only the list is read; RV(results) says what each machine would undergo
      (outcome C(would_update), C(would_restart), C(would_create), C(would_destroy)).
  diff_mode:
    support: full
    description: The machines' images before and after, by machine id (no config, no env).
notes:
  - The token never appears in a message or a result; Fly's own error text is quoted with it
    masked. A config's C(env) is never returned (it may hold values).
  - Fly's document declares no authentication; Fly's docs say C(Authorization - Bearer
    <token>), which is sent.
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s), for the calls that are safe to repeat; a
    machine creation and a lease are not repeated after a 5xx (the first may have been done).
    An update whose answer is lost is found out by reading the machine.
seealso:
  - module: opsbook.runbooks.fly_secrets
  - module: opsbook.runbooks.http_gate
  - name: Fly.io Machines API - machines
    description: Update, leases, wait.
    link: https://fly.io/docs/machines/api/machines-resource/
  - name: Fly.io - dynamic request routing
    description: The fly-force-instance-id header.
    link: https://fly.io/docs/networking/dynamic-request-routing/
"""

EXAMPLES = r"""
- name: Plan the rollout of 1.2.0 (canary, then half of the rest at a time)
  fly_machines:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    action: list
    image: "registry.fly.io/{{ fly_app }}:1.2.0"
    canary: 1
    batch: 50%
  delegate_to: localhost
  register: fly_plan

- name: Update the canary
  fly_machines:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    action: update
    machine_ids: "{{ fly_plan.plan.batches[0] }}"
    image: "registry.fly.io/{{ fly_app }}:1.2.0"
    version: 1.2.0
    gate_base_url: "{{ app_base_url }}"
  delegate_to: localhost
  register: fly_canary

- name: Health-gate it, machine by machine
  http_gate:
    targets: "{{ fly_canary.gate_targets }}"
  delegate_to: localhost

- name: Roll every machine back to 1.1.0
  fly_machines:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    action: rollback
    rollback_to: 1.1.0
  delegate_to: localhost

- name: Run three machines
  fly_machines:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    action: scale
    count: 3
  delegate_to: localhost
"""

RETURN = r"""
machines:
  description: "The machines as read at the start (O(action=get) - those of O(machine_ids);
    from O(known_machines) when they were used):
    C(id), C(name), C(state), C(region), C(instance_id), C(created_at), C(image), C(version)
    (recorded, else the image's tag), C(previous_image), C(previous_version), C(images)
    (C([image, version]) on record), C(metadata), C(has_mounts)."
  returned: always
  type: list
  elements: dict
plan:
  description: "C(needed) (ids to change), C(unchanged) (ids as asked already), C(batches)
    (lists of ids); with O(action=list) also C(image) and C(units) (per C(fly:<id>) - the
    platform roles' unit record - C(outcome) C(unchanged) or C(untouched), C(needed),
    C(before), C(before_version), C(error), C(rolled_back_to))."
  returned: action is list and image is given, or action is update or rollback in check mode
  type: dict
results:
  description: "Per machine acted on, in order - C(id), C(outcome) (C(updated), C(unchanged),
    C(failed), C(skipped), C(restarted), C(created), C(destroyed), C(waited), or C(would_*)
    in check mode), C(changed) (null - cannot be known), C(error), C(before_image),
    C(before_version), C(after_image), C(after_version), C(state)."
  returned: action is update, rollback, wait, restart or scale
  type: list
  elements: dict
gate_targets:
  description: With O(gate_base_url) - M(opsbook.runbooks.http_gate) targets, one per machine
    serving what was
    asked (every machine read, with O(action=list) and O(action=get)) - C(name) C(fly:<id>),
    C(base_url), C(version), C(headers) C({fly-force-instance-id - <id>}).
  returned: when gate_base_url is given (a failed task - for the machines it changed)
  type: list
  elements: dict
before:
  description: O(action=scale) - the number of machines before.
  returned: action is scale
  type: int
after:
  description: O(action=scale) - the number of machines after (what it would be, in check mode).
  returned: action is scale
  type: int
api_calls:
  description: Every attempt sent, as C(METHOD /path STATUS) (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [GET /apps/my-app/machines 200, POST /apps/my-app/machines/e28650e/lease 201]
diff:
  description: The images before and after, by machine id.
  returned: when changed
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from collections.abc import Callable
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_fly import (
    FLY_API,
    INSTANCE_HEADER,
    META_SCALED,
    TOKEN_ENV,
    auth_hint,
    cordon_machine,
    create_machine,
    delete_machine,
    deploy_change,
    from_summary,
    list_machines,
    plan_batches,
    restart_machine,
    rollback_change,
    rollback_target,
    summarize,
    unit,
    update_machine_locked,
    wait_machine,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    api_errors,
    api_options,
    invalid_input,
    open_client,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    rest_option_errors,
)

NAME = "fly_machines"
ACTIONS = ["list", "get", "update", "rollback", "wait", "restart", "scale"]
RULES: dict[str, Any] = {
    "required_if": [["action", "scale", ["count"]]],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "app": {"type": "str", "required": True},
        "action": {"type": "str", "required": True, "choices": ACTIONS},
        "machine_ids": {"type": "list", "elements": "str", "default": []},
        "known_machines": {"type": "list", "elements": "dict", "default": []},
        "image": {"type": "str"},
        "version": {"type": "str", "default": ""},
        "release": {"type": "str", "default": ""},
        "metadata": {"type": "dict", "default": {}},
        "min_secrets_version": {"type": "int", "no_log": False},  # a version number
        "rollback_to": {"type": "str", "default": ""},
        "canary": {"type": "int", "default": 1},
        "batch": {"type": "str", "default": "50%"},
        "count": {"type": "int"},
        "state": {
            "type": "str",
            "choices": ["started", "stopped", "suspended", "destroyed"],
            "default": "started",
        },
        "wait": {"type": "bool", "default": True},
        "wait_timeout_s": {"type": "float", "default": 120.0},
        "lease_ttl_s": {"type": "int", "default": 60},
        "gate_base_url": {"type": "str"},
        **api_options(TOKEN_ENV, FLY_API),
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each."""
    errors = api_errors(params, TOKEN_ENV, "app")
    action = params.get("action")
    if action == "get" and not params.get("machine_ids"):
        errors.append("action=get needs machine_ids")
    if action == "update" and not (
        params.get("image") or params.get("metadata") or params.get("min_secrets_version")
    ):
        errors.append("action=update needs image, metadata or min_secrets_version")
    if action == "scale" and (params.get("count") or 0) < 1:
        errors.append(f"count must be >= 1 (an app keeps a machine), got {params.get('count')}")
    if (params.get("canary") or 0) < 0:
        errors.append(f"canary must be >= 0, got {params.get('canary')}")
    try:
        plan_batches(["x"], params.get("canary") or 0, params.get("batch"))
    except ValueError as exc:
        errors.append(str(exc))
    if (params.get("wait_timeout_s") or 0) <= 0:
        errors.append("wait_timeout_s must be > 0")
    if (params.get("lease_ttl_s") or 0) < 1:
        errors.append("lease_ttl_s must be >= 1")
    if any(not str(m.get("id") or "") for m in params.get("known_machines") or []):
        errors.append("known_machines: every machine needs an id (a task's machines)")
    bad = [k for k, v in (params.get("metadata") or {}).items() if not isinstance(v, str)]
    if bad:
        errors.append("metadata values must be strings: " + ", ".join(sorted(map(str, bad))))
    return errors + rest_option_errors(params)


# ----------------------------------------------------------------------------- actions


def do_list(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    summaries = [summarize(m) for m in machines]
    result: dict[str, Any] = {"changed": False, "machines": summaries}
    image = params.get("image")
    if image:
        needed = [s["id"] for s in summaries if s["image"] != image]
        batches = plan_batches(needed, params["canary"], params["batch"])
        units = {
            unit(s["id"]): {
                "outcome": "untouched" if s["id"] in needed else "unchanged",
                "needed": s["id"] in needed,
                "before": s["image"],
                "before_version": s["version"],
                "error": "",
                "rolled_back_to": "",
            }
            for s in summaries
        }
        result["plan"] = {
            "image": image,
            "needed": needed,
            "unchanged": [s["id"] for s in summaries if s["id"] not in needed],
            "batches": batches,
            "units": units,
        }
        result["msg"] = (
            f"{params['app']}: {len(summaries)} machine(s), {len(needed)} not on {image} "
            f"({len(batches)} batch(es))"
        )
    else:
        result["msg"] = f"{params['app']}: {len(summaries)} machine(s)"
    return result


def do_get(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    return {
        "changed": False,
        "machines": [summarize(m) for m in machines],
        "msg": f"{params['app']}: {len(machines)} machine(s) read",
    }


def do_update(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    change = deploy_change(
        params.get("image"),
        params.get("version") or "",
        params.get("release") or "",
        metadata=params.get("metadata"),
        min_secrets_version=params.get("min_secrets_version"),
    )
    return _change_each(client, params, machines, check, lambda _machine: change)


def do_rollback(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    targets: dict[str, tuple[str, str]] = {}
    refusals: list[str] = []
    for machine in machines:
        target = rollback_target(summarize(machine), params["rollback_to"])
        if isinstance(target, str):
            refusals.append(target)
        else:
            targets[str(machine["id"])] = target
    if refusals:
        wanted = params["rollback_to"] or "the previous image"
        return {
            "failed": True,
            "changed": False,
            "results": [],
            "msg": f"{NAME}: cannot roll back to {wanted}: " + "; ".join(refusals) + "; nothing "
            "was changed on any machine",
        }
    return _change_each(
        client, params, machines, check, lambda machine: rollback_change(*targets[machine["id"]])
    )


def _change_each(
    client: RestClient,
    params: dict[str, Any],
    machines: list[dict[str, Any]],
    check: bool,
    change_for: Callable[[dict[str, Any]], Any],
) -> dict[str, Any]:
    """One machine after the other, under a lease; the first failure stops the task."""
    results: list[dict[str, Any]] = []
    failed = False
    for machine in machines:
        change = change_for(machine)
        if failed:
            results.append(_skipped(machine))
            continue
        if check:
            results.append(_would(machine, change))
            continue
        outcome = update_machine_locked(
            client,
            params["app"],
            machine,
            change,
            lease_ttl_s=params["lease_ttl_s"],
            wait=params["wait"],
            wait_timeout_s=params["wait_timeout_s"],
            min_secrets_version=params.get("min_secrets_version"),
            description=f"opsbook {params['action']}",
            read_under_lease=bool(params.get("_read_under_lease")),
        )
        results.append(outcome)
        failed = outcome["outcome"] == "failed"
    result = _changes_result(params, results, check)
    if check:
        needed = [r["id"] for r in results if r["outcome"] == "would_update"]
        result["plan"] = {
            "needed": needed,
            "unchanged": [r["id"] for r in results if r["outcome"] == "unchanged"],
            "batches": plan_batches(needed, params["canary"], params["batch"]),
        }
    return result


def _would(machine: dict[str, Any], change: Any) -> dict[str, Any]:
    before = summarize(machine)
    new = change(machine.get("config") or {})
    after = summarize({**machine, "config": new}) if new is not None else before
    return {
        "id": before["id"],
        "outcome": "would_update" if new is not None else "unchanged",
        "changed": new is not None,
        "error": "",
        "before_image": before["image"],
        "before_version": before["version"],
        "after_image": after["image"],
        "after_version": after["version"],
        "state": before["state"],
    }


def _skipped(machine: dict[str, Any]) -> dict[str, Any]:
    before = summarize(machine)
    return {
        "id": before["id"],
        "outcome": "skipped",
        "changed": False,
        "error": "not attempted: an earlier machine of this task failed",
        "before_image": before["image"],
        "before_version": before["version"],
        "after_image": before["image"],
        "after_version": before["version"],
        "state": before["state"],
    }


def _changes_result(
    params: dict[str, Any], results: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    changed = [r for r in results if r["changed"] is not False]
    failures = [r for r in results if r["outcome"] == "failed"]
    verb = {"update": "updated", "rollback": "rolled back"}.get(params["action"], "changed")
    if check:
        text = f"check mode: would have {verb} {len(changed)} of {len(results)} machine(s)"
    else:
        done = [r["id"] for r in results if r["outcome"] == "updated"]
        if not done and not failures:
            text = f"{len(results)} machine(s) already as asked: nothing changed"
        else:
            text = f"{verb} {len(done)} of {len(results)} machine(s)"
        if done:
            text += f" ({', '.join(done)})"
    for failure in failures:
        text += f"; {failure['id']} failed: {failure['error']}"
    skipped = [r["id"] for r in results if r["outcome"] == "skipped"]
    if skipped:
        text += f"; not attempted: {', '.join(skipped)}"
    result: dict[str, Any] = {
        "changed": bool(changed),
        "results": results,
        "msg": f"{params['app']}: {text}",
    }
    if failures:
        result["failed"] = True
        result["msg"] = f"{NAME}: {result['msg']}"
    warnings = [f"{r['id']}: {r['warning']}" for r in results if r.get("warning")]
    if warnings:
        result["warnings"] = warnings
    if changed:
        result["diff"] = {
            "before": {r["id"]: r["before_image"] for r in changed},
            "after": {r["id"]: r["after_image"] for r in changed},
        }
    return result


def _one_by_one(
    machines: list[dict[str, Any]],
    outcome: str,
    act: Callable[[dict[str, Any]], None],
    *,
    changed: bool = False,
) -> list[dict[str, Any]]:
    """Each machine's entry after ``act(entry)``, in order, up to the first that failed."""
    results = []
    for machine in machines:
        entry = _entry(machine, outcome, changed=changed)
        results.append(entry)
        try:
            act(entry)
        except RestError as exc:
            entry.update(outcome="failed", error=str(exc))
            break
    return results


def do_wait(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    def wait(entry: dict[str, Any]) -> None:
        answer = wait_machine(
            client,
            params["app"],
            entry["id"],
            state=params["state"],
            timeout_s=params["wait_timeout_s"],
        )
        entry["state"] = answer.get("state") or params["state"]

    results = _one_by_one(machines, "waited", wait)
    failed = [r for r in results if r["outcome"] == "failed"]
    result: dict[str, Any] = {
        "changed": False,
        "results": results,
        "msg": f"{params['app']}: {len(results) - len(failed)} machine(s) {params['state']}",
    }
    if failed:
        result.update(failed=True, msg=f"{NAME}: {failed[0]['id']}: {failed[0]['error']}")
    return result


def do_restart(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    def restart(entry: dict[str, Any]) -> None:
        if check:
            return
        restart_machine(client, params["app"], entry["id"])
        if params["wait"]:
            answer = wait_machine(
                client, params["app"], entry["id"], timeout_s=params["wait_timeout_s"]
            )
            entry["state"] = answer.get("state") or "started"

    outcome = "would_restart" if check else "restarted"
    results = _one_by_one(machines, outcome, restart, changed=True)
    failed = [r for r in results if r["outcome"] == "failed"]
    verb = "would restart" if check else "restarted"
    done = [r["id"] for r in results if r["outcome"] != "failed"]
    result: dict[str, Any] = {
        "changed": bool(done) or bool(failed),
        "results": results,
        "msg": f"{params['app']}: {verb} {len(done)} machine(s)",
    }
    if failed:
        left = [str(m["id"]) for m in machines[len(results) :]]
        result.update(
            failed=True,
            msg=f"{NAME}: {params['app']}: restarted {', '.join(done) or 'none'}; "
            f"{failed[0]['id']} failed: {failed[0]['error']}"
            + (f"; not restarted: {', '.join(left)}" if left else ""),
        )
    return result


def do_scale(
    client: RestClient, params: dict[str, Any], machines: list[dict[str, Any]], check: bool
) -> dict[str, Any]:
    app, count, before = params["app"], params["count"], len(machines)
    base: dict[str, Any] = {"before": before, "after": before, "results": [], "changed": False}
    if count == before:
        return {**base, "msg": f"{app}: {before} machine(s) already: nothing changed"}
    if not machines:
        return {
            **base,
            "failed": True,
            "msg": f"{NAME}: {app} has no machine to clone: deploy it first; nothing was changed",
        }
    if count > before:
        return _scale_up(client, params, machines, check, base)
    return _scale_down(client, params, machines, check, base)


def _scale_up(
    client: RestClient,
    params: dict[str, Any],
    machines: list[dict[str, Any]],
    check: bool,
    base: dict[str, Any],
) -> dict[str, Any]:
    app, count, before = params["app"], params["count"], len(machines)
    started = [m for m in machines if m.get("state") == "started"] or machines
    source = max(started, key=lambda m: (str(m.get("created_at") or ""), str(m["id"])))
    config = dict(source.get("config") or {})
    if config.get("mounts"):
        return {
            **base,
            "failed": True,
            "msg": f"{NAME}: {app}: refusing to clone machine {source['id']}: it has a volume, "
            "and a clone cannot share it (create a volume per machine and scale with flyctl); "
            "nothing was changed",
        }
    config["metadata"] = {**(config.get("metadata") or {}), META_SCALED: "true"}
    body = {"config": config, "region": source.get("region") or None}
    body = {k: v for k, v in body.items() if v is not None}
    results: list[dict[str, Any]] = []
    if check:
        results = [
            {**_entry(source, "would_create", changed=True), "id": ""}
            for _unused in range(count - before)
        ]
        return {
            **base,
            "changed": True,
            "after": count,
            "results": results,
            "msg": f"check mode: {app}: would create {count - before} machine(s), clones of "
            f"{source['id']} ({before} -> {count})",
        }
    try:
        for _unused in range(count - before):
            created = create_machine(client, app, body)
            entry = _entry(created, "created", changed=True)
            results.append(entry)
            if params["wait"]:
                answer = wait_machine(
                    client,
                    app,
                    entry["id"],
                    version=str(created.get("instance_id") or "") or None,
                    timeout_s=params["wait_timeout_s"],
                )
                entry["state"] = answer.get("state") or "started"
    except RestError as exc:
        made = [r["id"] for r in results]
        unknown = exc.status is None or exc.status >= 500
        return {
            **base,
            "failed": True,
            "changed": bool(made) or unknown,
            "after": before + len(made),
            "results": results,
            "msg": f"{NAME}: {app}: {exc}; created so far: {', '.join(made) or 'none'}"
            + ("; whether Fly created one more is unknown (list the machines)" if unknown else ""),
        }
    return {
        **base,
        "changed": True,
        "after": count,
        "results": results,
        "msg": f"{app}: created {', '.join(r['id'] for r in results)} (clones of "
        f"{source['id']}): {before} -> {count} machine(s)",
    }


def _scale_down(
    client: RestClient,
    params: dict[str, Any],
    machines: list[dict[str, Any]],
    check: bool,
    base: dict[str, Any],
) -> dict[str, Any]:
    app, count, before = params["app"], params["count"], len(machines)
    newest_first = sorted(
        machines, key=lambda m: (str(m.get("created_at") or ""), str(m["id"])), reverse=True
    )
    deletable = [m for m in newest_first if not (m.get("config") or {}).get("mounts")]
    kept_for_volume = [str(m["id"]) for m in newest_first if m not in deletable]
    victims = deletable[: before - count]
    if len(victims) < before - count:
        return {
            **base,
            "failed": True,
            "msg": f"{NAME}: {app}: refusing to go from {before} to {count} machine(s): only "
            f"{len(deletable)} can be destroyed - {', '.join(kept_for_volume)} have a volume "
            "(destroying one loses its data; do it by hand); nothing was changed",
        }
    if check:
        return {
            **base,
            "changed": True,
            "after": count,
            "results": [_entry(m, "would_destroy", changed=True) for m in victims],
            "msg": f"check mode: {app}: would cordon and destroy "
            f"{', '.join(str(m['id']) for m in victims)} (the newest): {before} -> {count}",
        }
    results: list[dict[str, Any]] = []
    for machine in victims:
        entry = _entry(machine, "destroyed", changed=True)
        try:
            cordon_machine(client, app, entry["id"])
            delete_machine(client, app, entry["id"])
            entry["state"] = "destroyed"
            if params["wait"]:
                wait_machine(
                    client, app, entry["id"], state="destroyed", timeout_s=params["wait_timeout_s"]
                )
        except RestError as exc:
            entry.update(outcome="failed", error=str(exc))
            results.append(entry)
            gone = [r["id"] for r in results if r["outcome"] == "destroyed"]
            return {
                **base,
                "failed": True,
                "changed": True,
                "after": before - len(gone),
                "results": results,
                "msg": f"{NAME}: {app}: destroyed {', '.join(gone) or 'none'}; "
                f"{entry['id']} failed: {exc} (it may be cordoned: uncordon it or run again)",
            }
        results.append(entry)
    kept = f"; kept for their volume: {', '.join(kept_for_volume)}" if kept_for_volume else ""
    return {
        **base,
        "changed": True,
        "after": count,
        "results": results,
        "msg": f"{app}: cordoned and destroyed {', '.join(r['id'] for r in results)} "
        f"(the newest{kept}): {before} -> {count} machine(s)",
    }


def _entry(machine: dict[str, Any], outcome: str, *, changed: bool = False) -> dict[str, Any]:
    summary = summarize(machine)
    return {
        "id": summary["id"],
        "outcome": outcome,
        "changed": changed,
        "error": "",
        "before_image": summary["image"],
        "before_version": summary["version"],
        "after_image": summary["image"],
        "after_version": summary["version"],
        "state": summary["state"],
    }


ACTION_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "list": do_list,
    "get": do_get,
    "update": do_update,
    "rollback": do_rollback,
    "wait": do_wait,
    "restart": do_restart,
    "scale": do_scale,
}


def gate_targets(params: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    """http_gate targets, each reached by its machine id: the machines now serving what was
    asked (a change), or every machine read (list, get)."""
    if "results" in result:
        serving = [
            (r["id"], r["after_version"])
            for r in result["results"]
            if r["id"] and r["outcome"] in ("updated", "unchanged", "restarted", "created")
        ]
    else:
        serving = [(m["id"], m["version"]) for m in result.get("machines") or []]
    return [
        {
            "name": unit(machine_id),
            "base_url": params["gate_base_url"],
            "version": version or "",
            "headers": {INSTANCE_HEADER: machine_id},
        }
        for machine_id, version in serving
    ]


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors, machines=[])
    client = open_client(params, **client_kw)
    app, action = params["app"], params["action"]
    machines: list[dict[str, Any]] = []
    try:
        known = known_to_change(params)
        if known is not None:
            params, machines = {**params, "_read_under_lease": True}, known
            result = ACTION_FUNCTIONS[action](client, params, machines, check_mode)
            return _finish(params, client, result, machines)
        machines = list_machines(client, app)
        wanted = list(dict.fromkeys(params.get("machine_ids") or []))
        if wanted and action != "scale":
            by_id = {str(m["id"]): m for m in machines}
            unknown = [i for i in wanted if i not in by_id]
            if unknown:
                return {
                    "failed": True,
                    "changed": False,
                    "machines": [summarize(m) for m in machines],
                    "api_calls": list(client.history),
                    "msg": f"{NAME}: {app} has no machine {', '.join(unknown)} (it has "
                    f"{', '.join(by_id) or 'none'}); nothing was changed",
                }
            machines = [by_id[i] for i in wanted]
        result = ACTION_FUNCTIONS[action](client, params, machines, check_mode)
    except RestError as exc:
        result = {
            "failed": True,
            "changed": False,
            "msg": f"{NAME}: {client.scrub(str(exc))}{auth_hint(exc)}; nothing was changed",
        }
    return _finish(params, client, result, machines)


def known_to_change(params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The machines of O(machine_ids) rebuilt from O(known_machines) (update, rollback) when
    they hold every one of them and at most one needs a change - the machine to change is read
    under its lease; None when the machines are to be listed."""
    known = params.get("known_machines") or []
    if params["action"] not in ("update", "rollback") or not known:
        return None
    by_id = {str(m["id"]): from_summary(m) for m in known}
    wanted = list(dict.fromkeys(params.get("machine_ids") or [])) or list(by_id)
    if any(i not in by_id for i in wanted):
        return None
    machines = [by_id[i] for i in wanted]
    if params["action"] == "update":
        change = deploy_change(
            params.get("image"),
            params.get("version") or "",
            params.get("release") or "",
            metadata=params.get("metadata"),
            min_secrets_version=params.get("min_secrets_version"),
        )
        needing = [m for m in machines if change(m["config"]) is not None]
    else:
        targets = [rollback_target(summarize(m), params["rollback_to"]) for m in machines]
        needing = [
            m
            for m, target in zip(machines, targets, strict=True)
            if isinstance(target, str) or target[0] != m["config"]["image"]
        ]
    return machines if len(needing) <= 1 else None


def _finish(
    params: dict[str, Any], client: RestClient, result: dict[str, Any], machines: list[Any]
) -> dict[str, Any]:
    result.setdefault("machines", [summarize(m) for m in machines])
    if params.get("gate_base_url") and (result.get("results") or not result.get("failed")):
        result["gate_targets"] = gate_targets(params, result)
    result["msg"] = client.scrub(result.get("msg") or "")
    return with_calls(result, client)


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
