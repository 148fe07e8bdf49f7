#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""vercel_deployment: a Vercel project's deployments - list, get, wait, redeploy to
production, promote, instant rollback - and which one serves production (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vercel_deployment
short_description: Redeploy, promote or roll back a Vercel project's production deployment
description:
  - O(action=current) - which deployment serves production now, and the one a rollback would
    go back to (RV(current), RV(previous)), from C(GET /v6/deployments) (the project's READY
    production deployments, C(pagination.next) followed). Vercel's document has no "serving
    now" flag, so the rule is - of the READY production deployments that have seen production
    traffic (C(readySubstate) PROMOTED), the one whose production aliases were assigned last
    (C(aliasAssigned), a time; an Instant Rollback assigns them anew to the deployment rolled
    back to). module_utils/opsbook_vercel.py says why.
  - O(action=redeploy) - C(POST /v13/deployments) with C(deploymentId) and C(target=production)
    - a new production build of an existing deployment (the preview Git built for a commit, or
    the one serving now with O(deployment=current)), with the project's environment variables
    as they are now and O(meta) (C(opsbook_version), C(opsbook_release) ...). With O(wait), it
    is polled (C(GET /v13/deployments/{idOrUrl}), from 1 s apart, never faster) until READY,
    ERROR or CANCELED; a READY one that Vercel left STAGED - after an Instant Rollback Vercel
    stops assigning production to new deployments until one is promoted - is promoted; then
    the list is read until it serves. Nothing is done when the deployment serving production
    already holds every pair of O(skip_if_serving) in its meta (C(changed=false)).
  - O(action=promote) - C(POST /v10/projects/{projectId}/promote/{deploymentId}) - point
    production at an existing READY production deployment without a rebuild (ends a paused
    state after a rollback). Nothing is done when it serves already.
  - O(action=rollback) - Instant Rollback, C(POST /v1/projects/{projectId}/rollback/{deploymentId})
    - production's domains back to a deployment that served production before, no rebuild.
    O(deployment) names it by id, URL or version (meta C(opsbook_version)); empty - the newest
    one created before the deployment serving now, built from other code (RV(previous) of
    O(action=current)). Nothing is done when it serves already. A name that matches nothing
    fails, listing the candidates; nothing is changed. B(Vercel then pauses the automatic
    assignment of production to new deployments) until one is promoted - O(action=redeploy)
    does that.
  - O(action=list), O(action=get), O(action=wait) - read; O(action=wait) fails when the
    deployment ends ERROR or CANCELED or is not READY within O(wait_timeout_s).
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  action:
    description:
      - What to do (see the description).
    type: str
    required: true
    choices: [current, list, get, wait, redeploy, promote, rollback]
  project:
    description:
      - The Vercel project, by id (C(prj_...)) or name - the inventory's C(vercel_project).
        Required by every action but O(action=get) and O(action=wait).
    type: str
    default: ""
  team_id:
    description:
      - The team the project belongs to (C(team_...)), the inventory's C(vercel_team_id); sent
        as C(teamId) on every call. Empty - the token's personal account.
    type: str
    default: ""
  deployment:
    description:
      - O(action=get), O(action=wait), O(action=promote) - the deployment, by id (C(dpl_...))
        or URL.
      - O(action=redeploy) - the deployment to build again for production (id or URL), or
        C(current) - the one serving production now. Empty - the newest READY deployment
        built from commit O(sha).
      - O(action=rollback) - the deployment to go back to, by id, URL or version; empty - the
        previous good one.
    type: str
    default: ""
  sha:
    description:
      - O(action=redeploy) with no O(deployment) - the commit whose newest READY deployment
        (any target; meta C(githubCommitSha)) is built again for production.
      - O(action=list) - only the deployments of this commit.
    type: str
    default: ""
  meta:
    description:
      - O(action=redeploy) - metadata recorded on the new deployment (strings), e.g.
        C(opsbook_version), C(opsbook_release), C(opsbook_source), merged over what it keeps
        of the source deployment's meta - its C(opsbook_*) keys and C(githubCommitSha) (so a
        redeploy of the current deployment still says which version it runs).
    type: dict
    default: {}
  skip_if_serving:
    description:
      - O(action=redeploy) - nothing is done when the deployment serving production already
        holds every one of these meta pairs (empty - always redeploy).
    type: dict
    default: {}
  description:
    description:
      - O(action=rollback) - the reason, recorded by Vercel with the rollback.
    type: str
    default: ""
  target:
    description:
      - O(action=list) - only production or only preview deployments; C(any) - both.
    type: str
    choices: [any, production, preview]
    default: any
  state:
    description:
      - O(action=list) - only deployments in this state (READY, ERROR, BUILDING ...).
    type: str
    default: ""
  limit:
    description:
      - O(action=list), O(action=current) - at most this many deployments returned.
    type: int
    default: 20
  wait:
    description:
      - O(action=redeploy), O(action=promote), O(action=rollback) - wait until the deployment
        is READY and serves production.
    type: bool
    default: true
  wait_timeout_s:
    description:
      - Seconds to wait for a build (READY), then again for production to be served by it.
    type: float
    default: 900
  token:
    description:
      - A Vercel access token (HTTP Bearer), the inventory's C(vercel_token). Taken from the
        environment variable C(VERCEL_TOKEN) when not given.
    type: str
    required: true
  base_url:
    description:
      - Vercel's API, the inventory's C(vercel_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.vercel.com
attributes:
  check_mode:
    support: full
    description: Only reads are sent; C(changed) and RV(msg) say what a run would do.
  diff_mode:
    support: full
    description: The deployment serving production before and after (id and version).
notes:
  - 429 answers (honouring C(X-RateLimit-Reset)), 5xx answers, timeouts and refused connections
    are retried with backoff until O(deadline_s) - except a 5xx to C(POST /v13/deployments),
    which is not repeated (it could build twice); the error says the outcome is unknown.
  - Vercel answers an invalid, expired or revoked token with 403 (C(invalidToken)).
  - C(GET /v13/deployments/{idOrUrl}) may answer the public variant of a deployment (no
    C(projectId)); the project's id is taken from the list.
seealso:
  - module: opsbook.runbooks.vercel_env
  - name: Vercel - promoting deployments
    description: Instant Rollback, promotion, staged production deployments.
    link: https://vercel.com/docs/deployments/promoting-a-deployment
  - name: Vercel - Instant Rollback
    description: What a rollback keeps (the old build and its environment) and pauses.
    link: https://vercel.com/docs/instant-rollback
"""

EXAMPLES = r"""
- name: Which deployment serves production
  vercel_deployment:
    action: current
    project: "{{ vercel_project }}"
    token: "{{ vercel_token }}"
  delegate_to: localhost
  register: vercel_now

- name: Build the preview of this commit for production, wait until it serves
  vercel_deployment:
    action: redeploy
    project: "{{ vercel_project }}"
    team_id: "{{ vercel_team_id | default('') }}"
    token: "{{ vercel_token }}"
    sha: "{{ app_git_sha }}"
    meta: {opsbook_version: "{{ app_version }}", opsbook_release: "{{ release_id }}"}
    skip_if_serving: {opsbook_version: "{{ app_version }}"}
  delegate_to: localhost

- name: Roll production back to version 1.4.2 (Instant Rollback)
  vercel_deployment:
    action: rollback
    project: "{{ vercel_project }}"
    token: "{{ vercel_token }}"
    deployment: 1.4.2
    description: health gate failed after the deploy of 1.5.0
  delegate_to: localhost
"""

RETURN = r"""
deployment:
  description: The deployment acted on (created, promoted, rolled back to, got, waited for) -
    C(id), C(url), C(name), C(project_id), C(state) (readyState), C(substate)
    (readySubstate), C(target) (production, staging, preview), C(meta), C(version) (meta
    C(opsbook_version)), C(release), C(source), C(sha), C(created) (epoch ms),
    C(alias_assigned).
  returned: when there is one
  type: dict
  sample: {"id": "dpl_2qn7PZrx89yx", "url": "app-x1.vercel.app", "state": "READY",
           "substate": "PROMOTED", "target": "production", "version": "1.2.0",
           "meta": {"opsbook_version": "1.2.0", "opsbook_release": "20260101T120000Z"}}
deployments:
  description: O(action=list), O(action=current) - deployments, newest first (same keys).
  returned: action is list or current
  type: list
  elements: dict
current:
  description: The deployment serving production after the task (null - none).
  returned: action is current, redeploy, promote or rollback
  type: dict
before:
  description: The deployment serving production before the task (null - none).
  returned: action is redeploy, promote or rollback
  type: dict
previous:
  description: O(action=current) - the deployment a rollback with no O(deployment) goes to.
  returned: action is current
  type: dict
project_id:
  description: The project's id, as the deployments carry it ('' when none is known).
  returned: always
  type: str
api_calls:
  description: Every attempt sent, with its status (null - no answer). The token is never in it.
  returned: always
  type: list
  elements: str
  sample: [GET /v6/deployments 200, POST /v13/deployments 200, GET /v13/deployments/dpl_1 200]
diff:
  description: The deployment serving production before and after.
  returned: when changed and in diff mode
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    api_errors,
    api_options,
    invalid_input,
    open_client,
    refused_before_acting,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestError,
    rest_option_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_vercel import (
    PROMOTED,
    READY,
    STAGED,
    TOKEN_ENV,
    VERCEL_API,
    DeploymentFailed,
    VercelApi,
    auth_hint,
    candidates,
    describe,
    find_deployment,
    has_served,
    meta_holds,
    previous_good,
    serving,
)

NAME = "vercel_deployment"
ACTIONS = ("current", "list", "get", "wait", "redeploy", "promote", "rollback")
NEEDS_PROJECT = ("current", "list", "redeploy", "promote", "rollback")
NEEDS_DEPLOYMENT = ("get", "wait", "promote")
RULES: dict[str, Any] = {
    "required_if": [
        ["action", "get", ["deployment"]],
        ["action", "wait", ["deployment"]],
        ["action", "promote", ["deployment", "project"]],
    ],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "action": {"type": "str", "required": True, "choices": list(ACTIONS)},
        "project": {"type": "str", "default": ""},
        "team_id": {"type": "str", "default": ""},
        "deployment": {"type": "str", "default": ""},
        "sha": {"type": "str", "default": ""},
        "meta": {"type": "dict", "default": {}},
        "skip_if_serving": {"type": "dict", "default": {}},
        "description": {"type": "str", "default": ""},
        "target": {
            "type": "str",
            "choices": ["any", "production", "preview"],
            "default": "any",
        },
        "state": {"type": "str", "default": ""},
        "limit": {"type": "int", "default": 20},
        "wait": {"type": "bool", "default": True},
        "wait_timeout_s": {"type": "float", "default": 900.0},
        **api_options(TOKEN_ENV, VERCEL_API),
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each."""
    errors = api_errors(params, TOKEN_ENV)
    action = params.get("action")
    if action in NEEDS_PROJECT and not (params.get("project") or "").strip():
        errors.append(f"action={action} needs project")
    if action in NEEDS_DEPLOYMENT and not (params.get("deployment") or "").strip():
        errors.append(f"action={action} needs deployment (an id or URL)")
    if action == "redeploy" and not (params.get("deployment") or params.get("sha")):
        errors.append("action=redeploy needs deployment (an id, a URL or 'current') or sha")
    if (params.get("limit") or 0) < 1:
        errors.append("limit must be >= 1")
    if (params.get("wait_timeout_s") or 0) <= 0:
        errors.append("wait_timeout_s must be > 0")
    return errors + rest_option_errors(params)


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    action = params.get("action") or ""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors, project_id="")
    client = open_client(params, **client_kw)
    api = VercelApi(client, params.get("team_id") or "")
    run = Run(api, params, check_mode)
    try:
        result = ACTION_FUNCS[action](run)
    except DeploymentFailed as exc:
        result = {
            "failed": True,
            "changed": run.changed,
            "deployment": exc.deployment,
            "before": run.before,
            "msg": f"{NAME}: {client.scrub(str(exc))}; {run.left_as(exc)}",
        }
    except RestError as exc:
        result = {
            "failed": True,
            "changed": run.changed,
            "before": run.before,
            "msg": f"{NAME}: {client.scrub(str(exc))}{auth_hint(exc)}; {run.left_as(exc)}",
        }
    result.setdefault("project_id", run.project_id)
    return with_calls(result, client)


class Run:
    """One task's state: what served before, what was changed so far."""

    def __init__(self, api: VercelApi, params: dict[str, Any], check_mode: bool) -> None:
        self.api = api
        self.params = params
        self.check_mode = check_mode
        self.project = (params.get("project") or "").strip()
        self.project_id = self.project if self.project.startswith("prj_") else ""
        self.before: dict[str, Any] | None = None
        self.changed = False
        self.done = ""  # what was changed, for an error message

    def production(self) -> list[dict[str, Any]]:
        """The project's READY production deployments (and its id from them)."""
        return self.learn_project_id(
            self.api.list_deployments(self.project, target="production", state=READY)
        )

    def learn_project_id(self, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``listed``, the project's id taken from the first deployment that has one."""
        for deployment in listed:
            if deployment.get("project_id"):
                self.project_id = deployment["project_id"]
                break
        return listed

    def left_as(self, exc: RestError) -> str:
        serving_now = f"production was served by {describe(self.before)} before"
        if self.done:
            return f"{self.done}; {serving_now}"
        if refused_before_acting(exc) or exc.call.startswith("GET"):
            return "nothing was changed"
        return (
            f"whether Vercel acted on {exc.call} is unknown (look at the project's "
            f"deployments before running again); {serving_now}"
        )

    def wait_serving(self, deployment_id: str) -> dict[str, Any] | None:
        listed = self.api.wait_serving(
            self.project, deployment_id, timeout_s=self.params["wait_timeout_s"]
        )
        return serving(listed)


def do_current(run: Run) -> dict[str, Any]:
    listed = run.production()
    now = serving(listed)
    back = previous_good(listed, now["id"]) if now else None
    return {
        "changed": False,
        "current": now,
        "previous": back,
        "deployments": listed[: run.params["limit"]],
        "msg": f"{run.project}: production is served by {describe(now)}; a rollback would go "
        f"to {describe(back)}",
    }


def do_list(run: Run) -> dict[str, Any]:
    target = run.params["target"]
    listed = run.api.list_deployments(
        run.project,
        target=None if target == "any" else target,
        state=run.params["state"] or None,
        sha=run.params["sha"] or None,
        max_items=run.params["limit"],
    )
    run.learn_project_id(listed)
    return {
        "changed": False,
        "deployments": listed,
        "msg": f"{run.project}: {len(listed)} deployment(s)",
    }


def do_get(run: Run) -> dict[str, Any]:
    found = run.api.get_deployment(run.params["deployment"])
    return {"changed": False, "deployment": found, "msg": describe(found)}


def do_wait(run: Run) -> dict[str, Any]:
    found = run.api.get_deployment(run.params["deployment"])
    ready = run.api.wait_ready(found, timeout_s=run.params["wait_timeout_s"])
    return {"changed": False, "deployment": ready, "msg": f"{describe(ready)} is READY"}


def source_of(run: Run, listed: list[dict[str, Any]]) -> dict[str, Any]:
    """The deployment a redeploy builds again."""
    wanted = (run.params.get("deployment") or "").strip()
    if wanted == "current":
        if run.before is None:
            raise RestError(
                "GET /v6/deployments",
                reason="no deployment serves production: nothing to redeploy as 'current'",
            )
        return run.before
    if wanted:
        known = find_deployment(listed, wanted)
        return known if known and known["id"] == wanted else run.api.get_deployment(wanted)
    sha = run.params["sha"]
    built = [
        d
        for d in run.api.list_deployments(run.project, sha=sha, state=READY, max_items=20)
        if d.get("sha", "").startswith(sha) or sha.startswith(d.get("sha") or "\0")
    ]
    if not built:
        raise RestError(
            "GET /v6/deployments",
            reason=f"no READY deployment of commit {sha} in {run.project} (push it, or give "
            "deployment)",
        )
    if not run.project_id and built[0].get("project_id"):
        run.project_id = built[0]["project_id"]
    return built[0]


def inherited_meta(source: dict[str, Any]) -> dict[str, str]:
    """What a redeploy keeps of its source's meta: the opsbook_* keys (version, release,
    source, maintenance) and the commit (githubCommitSha); O(meta) is merged over them."""
    return {
        k: str(v)
        for k, v in (source.get("meta") or {}).items()
        if k.startswith("opsbook_") or k == "githubCommitSha"
    }


def do_redeploy(run: Run) -> dict[str, Any]:
    listed = run.production()
    run.before = serving(listed)
    skip = run.params["skip_if_serving"]
    if meta_holds(run.before, skip):
        return {
            "changed": False,
            "deployment": run.before,
            "before": run.before,
            "current": run.before,
            "msg": f"{run.project}: production is served by {describe(run.before)}, which "
            f"already holds {', '.join(f'{k}={v}' for k, v in skip.items())}: nothing done",
        }
    source = source_of(run, listed)
    diff = {
        "before": {"production": describe(run.before)},
        "after": {"production": f"a new build of {describe(source)}"},
    }
    if run.check_mode:
        return {
            "changed": True,
            "deployment": source,
            "before": run.before,
            "current": run.before,
            "diff": diff,
            "msg": f"check mode: would build {describe(source)} again for production "
            f"(serving now: {describe(run.before)})",
        }
    meta = {**inherited_meta(source), **run.params["meta"]}
    created = run.api.redeploy(source, project=run.project, meta=meta)
    run.changed = True
    run.done = f"deployment {created['id']} was created"
    if not run.params["wait"]:
        return {
            "changed": True,
            "deployment": created,
            "before": run.before,
            "current": run.before,
            "diff": diff,
            "msg": f"{created['id']} created from {describe(source)} (not waited for)",
        }
    ready = run.api.wait_ready(created, timeout_s=run.params["wait_timeout_s"])
    promoted = ""
    if ready.get("substate") == STAGED:
        # automatic assignment paused (an Instant Rollback): promote it explicitly
        run.api.promote(run.project_id or run.project, ready["id"])
        run.done = f"deployment {ready['id']} was created and promoted"
        promoted = " (promoted: Vercel had paused automatic assignment after a rollback)"
    now = run.wait_serving(ready["id"])
    ready["substate"] = (now or {}).get("substate") or ready.get("substate") or PROMOTED
    diff["after"] = {"production": describe(now)}
    return {
        "changed": True,
        "deployment": ready,
        "before": run.before,
        "current": now,
        "diff": diff,
        "msg": f"{describe(ready)} built from {describe(source)} serves production"
        f"{promoted}; before: {describe(run.before)}",
    }


def do_promote(run: Run) -> dict[str, Any]:
    listed = run.production()
    run.before = serving(listed)
    wanted = run.params["deployment"]
    found = find_deployment(listed, wanted) or run.api.get_deployment(wanted)
    if serves_already(run, found):
        return nothing_to_do(run, found)
    if found.get("state") != READY or found.get("target") != "production":
        raise RestError(
            f"GET /v13/deployments/{found['id']}",
            reason=f"{describe(found)} is a {found.get('target')} deployment in state "
            f"{found.get('state')}: only a READY production deployment can be promoted "
            "(redeploy it to production instead)",
        )
    return switch(run, found, "promote")


def do_rollback(run: Run) -> dict[str, Any]:
    listed = run.production()
    run.before = serving(listed)
    wanted = (run.params.get("deployment") or "").strip()
    found = find_deployment(listed, wanted) if wanted else previous_good(listed)
    if found is None:
        what = f"'{wanted}'" if wanted else "a previous good deployment"
        raise RestError(
            "GET /v6/deployments",
            reason=f"no production deployment of {run.project} matches {what} (serving now: "
            f"{describe(run.before)}; deployments that served production: {candidates(listed)})",
        )
    if serves_already(run, found):
        return nothing_to_do(run, found)
    if not has_served(found):
        raise RestError(
            "GET /v6/deployments",
            reason=f"{describe(found)} has never served production: an Instant Rollback "
            "goes only to a deployment that did (promote it instead)",
        )
    return switch(run, found, "rollback")


def serves_already(run: Run, found: dict[str, Any]) -> bool:
    return bool(run.before and found["id"] == run.before["id"])


def nothing_to_do(run: Run, found: dict[str, Any]) -> dict[str, Any]:
    return {
        "changed": False,
        "deployment": found,
        "before": run.before,
        "current": run.before,
        "msg": f"{describe(found)} serves production already: nothing done",
    }


def switch(run: Run, found: dict[str, Any], how: str) -> dict[str, Any]:
    """Promote or roll back to ``found`` and wait until it serves."""
    diff = {
        "before": {"production": describe(run.before)},
        "after": {"production": describe(found)},
    }
    verb = "roll back" if how == "rollback" else "promote"
    if run.check_mode:
        return {
            "changed": True,
            "deployment": found,
            "before": run.before,
            "current": run.before,
            "diff": diff,
            "msg": f"check mode: would {verb} production to {describe(found)} (serving now: "
            f"{describe(run.before)})",
        }
    project_id = run.project_id or run.project
    if how == "rollback":
        run.api.rollback(project_id, found["id"], run.params["description"])
    else:
        run.api.promote(project_id, found["id"])
    run.changed = True
    run.done = f"Vercel accepted the {how} to {found['id']}"
    now = run.wait_serving(found["id"]) if run.params["wait"] else run.before
    done = "rolled back" if how == "rollback" else "promoted"
    return {
        "changed": True,
        "deployment": found,
        "before": run.before,
        "current": now,
        "diff": diff,
        "msg": f"production {done} to {describe(found)} (before: {describe(run.before)})",
    }


ACTION_FUNCS = {
    "current": do_current,
    "list": do_list,
    "get": do_get,
    "wait": do_wait,
    "redeploy": do_redeploy,
    "promote": do_promote,
    "rollback": do_rollback,
}


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
