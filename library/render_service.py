#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""render_service: a Render service's deploys - trigger, read, wait, roll back - and its
restart and instance count (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: render_service
short_description: Deploy, wait for, roll back, restart and scale a Render service
description:
  - One O(action) per task, on the service O(service_id), through Render's public API
    (Bearer token).
  - O(action=list_deploys) - C(GET /services/{serviceId}/deploys), newest first, following
    Render's cursors up to O(limit) deploys; returns them (RV(deploys)), the one serving now
    (RV(live)) and the one a rollback would go back to (RV(previous_good)). Read-only.
  - O(action=get_deploy) - C(GET /services/{serviceId}/deploys/{deployId}) of O(deploy_id).
  - O(action=wait) - polls O(deploy_id) until it is C(live) - at once, then after 1 s, 1.5 s,
    2.25 s ... (never faster than once a second, at most 10 s apart) until O(wait_timeout_s).
    It fails when the deploy ends otherwise - C(build_failed), C(update_failed),
    C(pre_deploy_failed), C(canceled), or C(deactivated) (replaced before it went live) - the
    statuses of Render's C(deployStatus).
  - O(action=deploy) - C(POST /services/{serviceId}/deploys) with O(commit_id) or O(image_url)
    (neither - the latest commit of the service's branch), then waits (O(wait)). Render answers
    C(201) with the deploy or C(202) "Queued" without one; after a 202 the new deploy is found
    in the list (the newest that was not there before and runs that source). When the live
    deploy already runs that source nothing is sent (C(changed=false)) unless O(force) - what
    a change of environment variables needs, since Render applies them on the next deploy.
    With O(known_deploys) (what an O(action=list_deploys) task just returned) the deploys are
    not listed again before the POST.
    A build that fails leaves the previous live deploy serving (Render replaces it only when
    the new one is live).
  - O(action=rollback) - C(POST /services/{serviceId}/rollback) with the deploy named by
    O(rollback_to) (a deploy id, a commit id, an image URL, or an image tag), or, when empty,
    the previous good deploy (RV(previous_good) - the newest earlier deploy that served, runs
    other code, and was not itself rolled back). Render makes a new deploy (trigger
    C(rollback)) of that code; it is waited for. Nothing is sent when the live deploy already
    runs it. A target Render does not have fails, naming the deploys that exist.
  - The wait after O(action=deploy) and O(action=rollback) starts from Render's answer to the
    POST, which holds the new deploy's status (after a C(202), from the listing that found
    it). The deploy is not read again at once - the first poll comes 1 s later (then 1.5 s,
    2.25 s ... as above), none when that status is already C(live) or final.
  - O(action=restart) - C(POST /services/{serviceId}/restart).
  - O(action=scale) - C(POST /services/{serviceId}/scale) with O(num_instances) (202).
    B(The instance count cannot be read) - Render's document (this subset) has no read of the
    service (C(GET /services/{serviceId}) is not in it), so the call is sent on every run and
    reported as a change (RV(before) is null). Setting a fixed count twice is harmless. Render
    ignores it while autoscaling is on for the service (its document says so).
  - POST calls are not repeated after a 5xx or a lost answer (a second deploy or rollback
    would be made); C(429) is retried (Render did nothing), as are reads. The error then says
    what may have happened.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  service_id:
    description:
      - The Render service (C(srv-...)), the inventory's C(render_service_id).
    type: str
    required: true
  action:
    description:
      - What to do (see above).
    type: str
    required: true
    choices: [list_deploys, get_deploy, wait, deploy, rollback, restart, scale]
  commit_id:
    description:
      - O(action=deploy) - the Git commit to deploy (Render's C(commitId)); a short id matches
        the live deploy's full one.
    type: str
  image_url:
    description:
      - O(action=deploy) - the image to deploy, for an image-backed service (Render's
        C(imageUrl); its host, repository and name must match the service's image).
    type: str
  clear_cache:
    description:
      - O(action=deploy) - clear the build cache first (C(clearCache=clear)).
    type: bool
    default: false
  force:
    description:
      - O(action=deploy) - deploy even when the live deploy runs that source already (to apply
        changed environment variables).
    type: bool
    default: false
  deploy_id:
    description:
      - O(action=get_deploy) and O(action=wait) - the deploy (C(dep-...)).
    type: str
  known_deploys:
    description:
      - O(action=deploy) - the service's deploys as an O(action=list_deploys) task of the same
        service returned them just before (its RV(deploys)), with nothing deployed between. The
        live deploy (what O(force), RV(previous) and the diff go by) and the deploys that
        existed before the POST (to tell a deploy queued with C(202) from them) are taken from
        it, and C(GET /services/{serviceId}/deploys) is not sent again before the POST.
      - Items in Render's own shape (C(commit.id), C(createdAt)) are taken as well. An empty
        list means the service has no deploy. Omitted - the deploys are listed (up to 50).
      - Only for O(action=deploy); a stale list makes the module judge by a live deploy that no
        longer serves.
    type: list
    elements: dict
  rollback_to:
    description:
      - O(action=rollback) - the deploy to go back to - its id, its commit id, its image URL,
        or the tag of its image. Empty - the previous good deploy.
    type: str
    default: ""
  wait:
    description:
      - O(action=deploy) and O(action=rollback) - wait until the new deploy is live.
    type: bool
    default: true
  wait_timeout_s:
    description:
      - Seconds to wait for a deploy to go live (O(action=wait), O(wait)).
    type: float
    default: 900
  num_instances:
    description:
      - O(action=scale) - the number of instances (at least 1).
    type: int
  limit:
    description:
      - O(action=list_deploys) - at most this many deploys, newest first.
    type: int
    default: 20
  token:
    description:
      - A Render API key (HTTP Bearer), the inventory's C(render_api_key). Taken from the
        environment variable C(RENDER_API_KEY) when not given.
    type: str
    required: true
  base_url:
    description:
      - Render's API, the inventory's C(render_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.render.com/v1
attributes:
  check_mode:
    support: full
    description: Only reads are sent (the deploy list, a deploy); C(changed) and RV(msg) say
      what a run would do. O(action=wait) waits in check mode too (it only reads).
  diff_mode:
    support: partial
    description: O(action=deploy) and O(action=rollback) show the live deploy before and
      after (id and source); O(action=scale) the instance count asked for.
notes:
  - The token never appears in a result or a message; Render's own error text is quoted with
    it masked.
seealso:
  - module: opsbook.runbooks.render_env
  - name: Render API - deploys
    description: Trigger, retrieve, list and roll back deploys.
    link: https://api-docs.render.com/reference/create-deploy
  - name: Render - rollbacks
    description: What a rollback deploys.
    link: https://render.com/docs/rollbacks
"""

EXAMPLES = r"""
- name: Deploy commit 1a2b3c4 and wait until it is live
  render_service:
    service_id: "{{ render_service_id }}"
    token: "{{ render_api_key }}"
    action: deploy
    commit_id: 1a2b3c4d5e6f
  delegate_to: localhost
  register: render_deploy

- name: Roll back to the previous good deploy
  render_service:
    service_id: "{{ render_service_id }}"
    token: "{{ render_api_key }}"
    action: rollback
  delegate_to: localhost

- name: Run three instances
  render_service:
    service_id: "{{ render_service_id }}"
    token: "{{ render_api_key }}"
    action: scale
    num_instances: 3
  delegate_to: localhost
"""

RETURN = r"""
deploy:
  description: The deploy made, read, waited for, or rolled back with - C(id), C(status),
    C(trigger), C(commit), C(image), C(source) (commit or image), C(created), C(finished).
  returned: when there is one
  type: dict
  sample: {"id": "dep-d1", "status": "live", "trigger": "api", "commit": "1a2b3c4d5e6f",
           "image": null, "source": "1a2b3c4d5e6f", "created": "2026-01-02T03:04:05Z",
           "finished": "2026-01-02T03:06:00Z"}
live:
  description: The deploy serving after the task (O(action=deploy), O(action=rollback),
    O(action=list_deploys)); null when none is live.
  returned: when read
  type: dict
previous:
  description: The deploy that was live before the task (O(action=deploy),
    O(action=rollback)).
  returned: when read
  type: dict
previous_good:
  description: O(action=list_deploys) and O(action=rollback) - the deploy a rollback without
    O(rollback_to) goes back to; null when there is none.
  returned: when read
  type: dict
deploys:
  description: O(action=list_deploys) - the deploys, newest first.
  returned: when action is list_deploys
  type: list
  elements: dict
before:
  description: O(action=scale) - the instance count before (always null - Render's document
    offers no read of it).
  returned: when action is scale
  type: int
after:
  description: O(action=scale) - the instance count asked for.
  returned: when action is scale
  type: int
waited_s:
  description: Seconds spent waiting for the deploy to go live.
  returned: when waited
  type: float
api_calls:
  description: Every attempt sent, with its status (null - no answer). The token is never
    in it.
  returned: always
  type: list
  elements: str
  sample: [GET /v1/services/srv-1/deploys 200, POST /v1/services/srv-1/deploys 201,
           GET /v1/services/srv-1/deploys/dep-2 200]
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    api_errors,
    api_options,
    invalid_input,
    open_client,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_render import (
    RENDER_API,
    SERVED_STATUSES,
    TOKEN_ENV,
    DeployFailed,
    auth_hint,
    create_deploy,
    deploy_source,
    describe_deploy,
    find_deploy,
    from_summary,
    get_deploy,
    image_version,
    list_deploys,
    live_deploy,
    previous_good,
    restart,
    rollback,
    same_source,
    scale,
    summary,
    wait_deploy,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    rest_option_errors,
)

NAME = "render_service"
ACTIONS = ["list_deploys", "get_deploy", "wait", "deploy", "rollback", "restart", "scale"]
HISTORY = 50  # deploys read to find the live one, the previous good one, a rollback target
RULES: dict[str, Any] = {
    "mutually_exclusive": [["commit_id", "image_url"]],
    "required_if": [
        ["action", "get_deploy", ["deploy_id"]],
        ["action", "wait", ["deploy_id"]],
        ["action", "scale", ["num_instances"]],
    ],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "service_id": {"type": "str", "required": True},
        "action": {"type": "str", "required": True, "choices": ACTIONS},
        "commit_id": {"type": "str"},
        "image_url": {"type": "str"},
        "clear_cache": {"type": "bool", "default": False},
        "force": {"type": "bool", "default": False},
        "deploy_id": {"type": "str"},
        "known_deploys": {"type": "list", "elements": "dict"},
        "rollback_to": {"type": "str", "default": ""},
        "wait": {"type": "bool", "default": True},
        "wait_timeout_s": {"type": "float", "default": 900.0},
        "num_instances": {"type": "int"},
        "limit": {"type": "int", "default": 20},
        **api_options(TOKEN_ENV, RENDER_API),
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each (never the token)."""
    errors = api_errors(params, TOKEN_ENV, "service_id")
    action = params.get("action")
    if params.get("commit_id") and params.get("image_url"):
        errors.append("give commit_id or image_url, not both")
    if action in ("get_deploy", "wait") and not params.get("deploy_id"):
        errors.append(f"action={action} needs deploy_id")
    if action == "scale" and (params.get("num_instances") or 0) < 1:
        errors.append(f"action=scale needs num_instances >= 1, got {params.get('num_instances')}")
    if (params.get("wait_timeout_s") or 0) <= 0:
        errors.append(f"wait_timeout_s must be > 0, got {params.get('wait_timeout_s')}")
    known = params.get("known_deploys")
    if known is not None and action != "deploy":
        errors.append(f"known_deploys is for action=deploy only, not action={action}")
    elif known is not None and not all(isinstance(d, dict) and d.get("id") for d in known):
        errors.append("known_deploys must be deploys with an id each (list_deploys' deploys)")
    if not 1 <= (params.get("limit") or 0) <= 1000:
        errors.append(f"limit must be 1 to 1000, got {params.get('limit')}")
    return errors + rest_option_errors(params)


# ------------------------------------------------------------------------------ actions


def do_list(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    del check_mode
    service = params["service_id"]
    deploys = list_deploys(client, service, max_items=params["limit"])
    live, good = live_deploy(deploys), previous_good(deploys)
    return {
        "changed": False,
        "deploys": [summary(d) for d in deploys],
        "live": summary(live),
        "previous_good": summary(good),
        "msg": f"{service}: {len(deploys)} deploy(s); live {describe_deploy(live)}; previous "
        f"good {describe_deploy(good)}",
    }


def do_get(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    del check_mode
    deploy = get_deploy(client, params["service_id"], params["deploy_id"])
    return {"changed": False, "deploy": summary(deploy), "msg": describe_deploy(deploy)}


def do_wait(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    del check_mode
    started = client.clock()
    deploy = wait_deploy(
        client,
        params["service_id"],
        {"id": params["deploy_id"]},
        timeout_s=params["wait_timeout_s"],
    )
    waited = round(client.clock() - started, 3)
    return {
        "changed": False,
        "deploy": summary(deploy),
        "waited_s": waited,
        "msg": f"{describe_deploy(deploy)} is live (waited {waited:.1f} s)",
    }


def do_deploy(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    service = params["service_id"]
    source = params.get("commit_id") or params.get("image_url") or ""
    known = params.get("known_deploys")
    if known is None:
        deploys = list_deploys(client, service, max_items=HISTORY)
    else:  # what the task before listed (list_deploys' deploys): not read again
        deploys = [from_summary(d) for d in known]
    live = live_deploy(deploys)
    result: dict[str, Any] = {"previous": summary(live), "live": summary(live)}
    if source and same_source(source, live) and not params["force"]:
        return {
            **result,
            "changed": False,
            "deploy": summary(live),
            "msg": f"{service}: {describe_deploy(live)} runs {source} already: nothing deployed",
        }
    what = source or "the latest commit of the service's branch"
    if check_mode:
        return {
            **result,
            "changed": True,
            "msg": f"check mode: would deploy {what} on {service} (live now: "
            f"{describe_deploy(live)})",
        }
    deploy = create_deploy(
        client,
        service,
        source,
        clear_cache=params["clear_cache"],
        known_ids=[d["id"] for d in deploys],
        find_timeout_s=params["wait_timeout_s"],
    )
    result.update(changed=True, deploy=summary(deploy))
    return finish(params, client, result, deploy, live, f"deploy of {what}")


def do_rollback(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    service = params["service_id"]
    deploys = list_deploys(client, service, max_items=HISTORY)
    live, good = live_deploy(deploys), previous_good(deploys)
    wanted = (params.get("rollback_to") or "").strip()
    target = find_deploy(deploys, wanted, image_version) if wanted else good
    result: dict[str, Any] = {
        "previous": summary(live),
        "live": summary(live),
        "previous_good": summary(good),
    }
    if target is None:
        served = [describe_deploy(d) for d in deploys if d.get("status") in SERVED_STATUSES]
        exists = "; ".join(served[:10]) or "none"
        asked = repr(wanted) if wanted else "the previous good deploy"
        return {
            **result,
            "failed": True,
            "changed": False,
            "msg": f"{NAME}: {service} has no deploy to roll back to ({asked}): deploys that "
            f"served: {exists}; nothing was changed",
        }
    if live is not None and (target.get("id") == live.get("id") or (
        deploy_source(target) and deploy_source(target) == deploy_source(live)
    )):  # fmt: skip
        return {
            **result,
            "changed": False,
            "deploy": summary(live),
            "msg": f"{service}: {describe_deploy(live)} runs the code of "
            f"{describe_deploy(target)} already: nothing rolled back",
        }
    if check_mode:
        return {
            **result,
            "changed": True,
            "deploy": summary(target),
            "msg": f"check mode: would roll {service} back to {describe_deploy(target)} (live "
            f"now: {describe_deploy(live)})",
        }
    deploy = rollback(client, service, str(target["id"]))
    if not deploy.get("id"):
        raise RestError(
            f"POST /services/{service}/rollback", status=201, reason="the answer holds no deploy"
        )
    result.update(changed=True, deploy=summary(deploy), rolled_back_to=summary(target))
    return finish(params, client, result, deploy, live, f"rollback to {describe_deploy(target)}")


def finish(
    params: dict[str, Any],
    client: RestClient,
    result: dict[str, Any],
    deploy: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    what: str,
) -> dict[str, Any]:
    """Wait for a new deploy (unless wait=false) and say how it went."""
    service = params["service_id"]
    result["diff"] = {
        "before": {"live": describe_deploy(live)},
        "after": {"live": describe_deploy(deploy)},
    }
    if not params["wait"]:
        result["msg"] = f"{service}: {what} started: {describe_deploy(deploy)} (not waited for)"
        return result
    started = client.clock()
    try:
        done = wait_deploy(client, service, deploy, timeout_s=params["wait_timeout_s"])
    except DeployFailed as exc:
        result.update(
            failed=True,
            deploy=summary(exc.deploy),
            waited_s=round(client.clock() - started, 3),
            msg=f"{NAME}: {service}: {what}: {client.scrub(exc.describe())}; "
            f"{describe_deploy(live)} was live before it and serves until another deploy "
            "is live",
        )
        return result
    waited = round(client.clock() - started, 3)
    result.update(deploy=summary(done), live=summary(done), waited_s=waited)
    result["msg"] = f"{service}: {what}: {describe_deploy(done)} is live (waited {waited:.1f} s)"
    return result


def do_restart(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    service = params["service_id"]
    if check_mode:
        return {"changed": True, "msg": f"check mode: would restart {service}"}
    restart(client, service)
    return {"changed": True, "msg": f"{service} restarted"}


def do_scale(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    service, count = params["service_id"], params["num_instances"]
    result: dict[str, Any] = {
        "changed": True,
        "before": None,
        "after": count,
        "diff": {"before": {"numInstances": "unknown"}, "after": {"numInstances": count}},
    }
    if check_mode:
        result["msg"] = (
            f"check mode: would scale {service} to {count} instance(s) (the count now cannot be "
            "read through Render's API document)"
        )
        return result
    scale(client, service, count)
    result["msg"] = f"{service} scaled to {count} instance(s) (Render ignores it while autoscaling)"
    return result


ACTIONS_RUN: dict[str, Callable[[dict[str, Any], bool, RestClient], dict[str, Any]]] = {
    "list_deploys": do_list,
    "get_deploy": do_get,
    "wait": do_wait,
    "deploy": do_deploy,
    "rollback": do_rollback,
    "restart": do_restart,
    "scale": do_scale,
}
UNKNOWN_OUTCOME = {  # after a 5xx or a lost answer to a POST: Render may have acted
    "deploy": "whether Render started a deploy is unknown (list_deploys tells)",
    "rollback": "whether Render started the rollback is unknown (list_deploys tells)",
    "restart": "whether Render restarted the service is unknown",
    "scale": "whether Render took the new instance count is unknown (a rerun sets it again)",
}


def post_outcome(action: str, history: list[str]) -> str:
    """What a failed task left behind, from the POSTs it sent (``"POST /path 201"``)."""
    posts = [call.rsplit(" ", 1)[-1] for call in history if call.startswith("POST ")]
    if any(status.startswith("2") for status in posts):
        return f"the {action} was started (api_calls); whether it went live is unknown"
    if any(not status.startswith("4") for status in posts):  # 5xx or no answer
        return UNKNOWN_OUTCOME.get(action, "whether Render acted is unknown")
    return "nothing was changed"


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    action = params.get("action") or ""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors)
    client = open_client(params, **client_kw)
    try:
        result = ACTIONS_RUN[action](params, check_mode, client)
    except RestError as exc:
        result = {
            "failed": True,
            "changed": False,
            "msg": f"{NAME}: {params['service_id']}: {client.scrub(str(exc))}{auth_hint(exc)}; "
            + post_outcome(action, client.history),
        }
    return with_calls(result, client)


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
