# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_platform: what the platform modules (Vercel, Render, Fly.io, Supabase) share over
opsbook_rest, and the outcome rules of the platform roles' filters.

- Options: ``api_options(TOKEN_ENV, API)`` - the Bearer ``token`` (``token_option``: taken
  from the environment variable when not given), the vendor's ``base_url`` and the REST
  options; ``api_errors(params, TOKEN_ENV, "service_id")`` - an empty ``service_id`` or token;
  ``open_client`` - the RestClient with the token.
- Input of "one key, or a list of items": ``one_or_many_options`` / ``item_options`` (the
  options), ``wanted_items`` (the items asked for) and ``both_given_errors`` /
  ``items_errors`` (one sentence each: both given, none given, a name given twice, a bad
  name, a present item without a value).
- Results: ``invalid_input`` (nothing was sent), ``left_after`` (what a failed call left),
  ``masked_diff`` (names only, every value ``********``), ``with_calls`` (``api_calls``: every
  attempt the client made).
- The platform roles' filters (filter_plugins/opsbook_platform_*.py): ``ran``, ``ok``, ``msg``,
  ``part``, ``count_calls``, ``missing_inventory``, ``rollback_outcome`` (a failed gate: roll back,
  gate again) and ``deploy_fact``.

Plain Python over opsbook_rest: no Ansible state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible.module_utils.common.parameters import env_fallback
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    MASK,
    RestClient,
    RestError,
    client_from_params,
    rest_argument_spec,
)

UNKNOWN_OUTCOME = "whether the last call was applied is unknown (a rerun finds out)"


# --------------------------------------------------------------------------- options


def token_option(env_name: str) -> dict[str, Any]:
    """The ``token`` option: an API token (HTTP Bearer), from ``env_name`` when not given."""
    return {
        "type": "str",
        "required": True,
        "no_log": True,
        "fallback": (env_fallback, [env_name]),
    }


def api_options(token_env: str, base_url: str) -> dict[str, dict[str, Any]]:
    """``token``, ``base_url`` (the vendor's API as default) and the REST options."""
    return {
        "token": token_option(token_env),
        "base_url": {"type": "str", "default": base_url},
        **rest_argument_spec(),
    }


def api_errors(params: Mapping[str, Any], token_env: str, *required: str) -> list[str]:
    """``<option> is empty`` for each of ``required`` without text, then an empty token."""
    errors = [f"{name} is empty" for name in required if not (params.get(name) or "").strip()]
    if not params.get("token"):
        errors.append(f"token is empty (give it, or set {token_env})")
    return errors


def open_client(params: Mapping[str, Any], **client_kw: Any) -> RestClient:
    """The vendor's API with the module's token (Bearer) and REST options; ``client_kw``:
    ``secrets=`` and, in tests, ``clock``/``sleep``."""
    return client_from_params(params, token=params["token"], **client_kw)


# ----------------------------------------------------------- one key or a list of items


def item_options(one: str, **one_extra: Any) -> dict[str, dict[str, Any]]:
    """The suboptions of an item: ``<one>`` (its name), ``value`` (secret) and ``state``.
    The name is not secret: ``no_log=False`` says so (ansible-test's no-log-needed reads
    ``key``/``secret`` in an option name as a possible secret)."""
    return {
        one: {"type": "str", "required": True, "no_log": False, **one_extra},
        "value": {"type": "str", "no_log": True},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    }


def one_or_many_options(one: str, many: str, **one_extra: Any) -> dict[str, dict[str, Any]]:
    """``<one>`` with ``value`` and ``state`` (one item), or ``<many>`` (a list of items;
    ``one_extra``: more of the item name's spec, e.g. ``aliases``). Neither the name nor the
    list is secret (``no_log=False``); each ``value`` is (``no_log=True``, in the list too)."""
    single = item_options(one)
    return {
        one: {"type": "str", "no_log": False},
        "value": single["value"],
        "state": single["state"],
        many: {
            "type": "list",
            "elements": "dict",
            "no_log": False,
            "options": item_options(one, **one_extra),
        },
    }


def wanted_items(params: Mapping[str, Any], one: str, many: str) -> list[dict[str, Any]]:
    """The items asked for, as [{<one>, value, state}]: ``params[many]``, else the one item
    ``params[one]`` with ``value`` and ``state``."""
    if params.get(many):
        return [{"state": "present", **dict(item)} for item in params[many]]
    if params.get(one):
        return [{one: params[one], "value": params.get("value"), "state": params["state"]}]
    return []


def both_given_errors(params: Mapping[str, Any], one: str, many: str) -> list[str]:
    return [f"give {one} or {many}, not both"] if params.get(one) and params.get(many) else []


def items_errors(
    wanted: list[dict[str, Any]],
    one: str,
    many: str,
    name_problem: Callable[[Any], str] | None = None,
) -> list[str]:
    """None given, a name given twice, a bad name (``name_problem(name)``: '' when good; by
    default an empty one), a present item without a value: one sentence each, never a
    value."""

    def empty(name: Any) -> str:
        return "" if (name or "").strip() else f"a {one} is empty"

    problem_of = name_problem or empty
    errors = []
    if not wanted:
        errors.append(f"give {one} (with value) or {many}")
    names = [item[one] for item in wanted]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        errors.append(f"these {one}s are given twice: " + ", ".join(twice))
    for item in wanted:
        problem = problem_of(item.get(one))
        if problem:
            errors.append(problem)
        elif item.get("state", "present") == "present" and item.get("value") is None:
            errors.append(f"{item[one]}: state=present needs a value")
    return errors


# --------------------------------------------------------------------------- results


def invalid_input(name: str, errors: list[str], **empty: Any) -> dict[str, Any]:
    """The failed result of input errors: nothing was sent (``empty``: the module's other
    return values, empty)."""
    return {
        "failed": True,
        "changed": False,
        **empty,
        "api_calls": [],
        "msg": f"{name}: invalid input: " + "; ".join(errors) + "; nothing was sent",
    }


def refused_before_acting(exc: RestError) -> bool:
    """True when the vendor refused the call before doing anything: a 4xx (429 included)."""
    return exc.status is not None and 400 <= exc.status < 500


def left_after(exc: RestError, done: str) -> str:
    """What a failed call left: ``done`` (what was changed before it), else nothing (a 4xx),
    else unknown."""
    if done:
        return done
    if refused_before_acting(exc):
        return "nothing was changed"
    return UNKNOWN_OUTCOME


def masked_diff(before: Iterable[str], after: Mapping[str, str]) -> dict[str, Any]:
    """A diff of names with every value masked: ``before`` the names set, ``after`` name ->
    a note ('' - ``********``; ``changed`` - ``******** (changed)``); an unset name is
    missing."""
    return {
        "before": {name: MASK for name in sorted(before)},
        "after": {
            name: f"{MASK} ({note})" if note else MASK for name, note in sorted(after.items())
        },
    }


def with_calls(result: dict[str, Any], client: RestClient) -> dict[str, Any]:
    """``result`` with ``api_calls``: every attempt the client made, with its status."""
    result["api_calls"] = list(client.history)
    return result


# ------------------------------------------------------------------ the roles' filters


def ran(result: Any) -> bool:
    """A registered result of a task that ran (not skipped, not missing)."""
    return isinstance(result, Mapping) and bool(result) and not result.get("skipped")


def ok(result: Any) -> bool:
    """A registered result of a task that ran and did not fail."""
    return ran(result) and not result.get("failed")


def msg(result: Any) -> str:
    return str(result.get("msg") or "") if isinstance(result, Mapping) else ""


def part(result: Any, key: str) -> dict[str, Any]:
    """``result[key]`` when it is a mapping, else {}."""
    value = result.get(key) if isinstance(result, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else {}


def count_calls(results: Iterable[Any]) -> int:
    """The API calls made by the results given (every attempt)."""
    return sum(len(r.get("api_calls") or []) for r in results if isinstance(r, Mapping))


def missing_inventory(values: Mapping[str, Any], described: Mapping[str, str], vendor: str) -> str:
    """'' when every inventory variable given has a value; else the sentence naming the
    missing ones (never a value)."""
    missing = [
        f"{name} ({described.get(name, 'required')})"
        for name, value in values.items()
        if value is None or not str(value).strip()
    ]
    if not missing:
        return ""
    return f"the inventory does not set {', '.join(missing)}: nothing was called on {vendor}"


def rollback_outcome(problem: str, rolled: Any, regate: Any, before: str, none: str) -> dict:
    """What a failed health gate (``problem``) of a new deployment leaves: rolled_back to
    ``before`` (the rollback ``rolled`` and the gate after it ``regate`` passed), else
    rollback_failed - ``none``: why nothing was rolled back when ``before`` is ''."""
    if not before:
        return {"outcome": "rollback_failed", "error": f"{problem}; {none}"}
    if not ok(rolled):
        return {
            "outcome": "rollback_failed",
            "error": f"{problem}; the rollback to {before} failed: {msg(rolled)}",
        }
    if ok(regate) and regate.get("ok"):
        return {"outcome": "rolled_back", "error": problem, "rolled_back_to": before}
    return {
        "outcome": "rollback_failed",
        "error": f"{problem}; rolled back to {before}, whose health gate failed too: {msg(regate)}",
        "rolled_back_to": before,
    }


def deploy_fact(
    target: str, deployment: str, previous: str, unit: str, state: dict, calls: int
) -> dict:
    """platform_deploy of one unit: failed (stopped_at) when its outcome is failed,
    rolled_back or rollback_failed; the rollout failed (``rollout_failed``) only when the new
    deployment served and was switched back - a build that failed left production as it was
    (status failed, the unit's error saying what still serves)."""
    failed = state["outcome"] in ("failed", "rolled_back", "rollback_failed")
    return {
        "target": target,
        "deployment": deployment,
        "previous": previous,
        "rollout_failed": state["outcome"] in ("rolled_back", "rollback_failed"),
        "stopped_at": [unit] if failed else [],
        "api_calls": calls,
        "units": {unit: state},
    }
