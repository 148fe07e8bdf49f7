# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_inputs: check a runbook's inputs against its declaration, before anything is touched.

Every runbook declares its inputs once, as data, in ``playbooks/vars/inputs/<runbook>.yml``
(library/opsbook_inputs.py documents the format). The first task of its preflight runs this
action on the controller: each input given (extra vars, the inventory, play vars) is checked
against its declaration with Ansible's own ArgumentSpecValidator for the types, then against
the ranges, patterns and choices the declaration adds; the rules between inputs
(``required_if``, ...), the names the inventory must hold and the role inputs given with ``-e``
(against each role's ``meta/argument_specs.yml``) are checked too. Every problem is listed
at once and the task fails with "nothing was changed".

Extra-var names the runbook does not declare are warned about with the closest declared name
(difflib): a warning, not a refusal - AWX passes its own extra vars (``awx_*``, ``tower_*``)
to every job, and a name meant for another tool must not stop a run. The warning is given by
the runbook the operator started (the top-level playbook), so a runbook imported by another
(``tour``) does not warn about the importer's names; ``opsbook run`` warns before the run
and sets ``OPSBOOK_INPUT_WARNINGS_SHOWN`` so that it is not said twice.

The pure functions below are shared with the unit tests; ``opsbook`` (src/opsbook/project.py)
reads the same declarations for its own warning.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml
from ansible import context
from ansible.errors import AnsibleActionFail, AnsibleUndefinedVariable
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

#: the top-level key of a declaration file (a vars file: one name, no reserved word)
DECLARATION_KEY = "opsbook_inputs"
#: declared by every runbook (playbooks/vars/inputs/common.yml)
COMMON = "common"
#: extra-var prefixes never warned about: Ansible's own, AWX's job variables
IGNORED_PREFIXES = ("ansible_", "awx_", "tower_")
#: set by `opsbook run` once it has warned about unknown names itself
WARNED_ENV = "OPSBOOK_INPUT_WARNINGS_SHOWN"

# What a declared option may say. The first group is handed to ArgumentSpecValidator.
VALIDATOR_KEYS = ("type", "elements", "options", "choices", "no_log")
OPTION_KEYS = frozenset(
    {
        *VALIDATOR_KEYS,
        "description",
        "required",
        "default",
        "min",
        "max",
        "pattern",
        "format",
        "ignore_case",
        "accepts",
    }
)
RULE_KEYS = ("required_if", "required_together", "required_one_of", "mutually_exclusive")
DECLARATION_KEYS = frozenset(
    {
        "runbook",
        "description",
        "options",
        "rules",
        "inventory",
        "role_inputs",
        "role_input_limits",
        "include",
    }
)
TYPES = ("str", "int", "float", "bool", "list", "dict", "raw", "path", "count_or_percent")
_SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|private_key|api_key", re.I)
_URL_SECRET = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)?(?P<rest>[^\s?#]*)"
    r"(?P<query>[?#]\S*)?",
    re.I,
)
_SHOWN_CHARS = 80


class DeclarationError(Exception):
    """A declaration file is missing or malformed (a bug of the project, not of the input)."""


# ------------------------------------------------------------------------ declarations


def count_or_percent(value: Any) -> int | str:
    """A serial batch size: a whole number of hosts (``2``, ``"2"``) or ``"<n>%"``."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number of hosts")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+%", text):
        return text
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    raise TypeError(f"{text!r} is neither a number nor a percentage")


def load_declaration(directory: str, runbook: str) -> dict[str, Any]:
    """playbooks/vars/inputs/<runbook>.yml, checked for shape; DeclarationError if unusable."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", runbook or ""):
        raise DeclarationError(f"{runbook!r} is not a runbook name")
    path = os.path.join(directory, f"{runbook}.yml")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise DeclarationError(f"no declaration of the inputs of {runbook}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise DeclarationError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(DECLARATION_KEY), dict):
        raise DeclarationError(f"{path} must hold a mapping under {DECLARATION_KEY}")
    declaration = data[DECLARATION_KEY]
    problems = declaration_problems(declaration)
    if declaration.get("runbook") != runbook:
        problems.append(f"runbook is {declaration.get('runbook')!r}, expected {runbook!r}")
    if problems:
        raise DeclarationError(f"{path}: " + "; ".join(problems))
    return declaration


def declaration_problems(declaration: Mapping[str, Any]) -> list[str]:
    """What is wrong with the shape of a declaration (empty when it is usable)."""
    problems = [f"unknown key {k!r}" for k in declaration if k not in DECLARATION_KEYS]
    options = declaration.get("options") or {}
    if not isinstance(options, dict):
        return [*problems, "options must be a mapping"]
    for name, spec in options.items():
        if not isinstance(spec, dict):
            problems.append(f"option {name}: must be a mapping")
            continue
        problems += [f"option {name}: unknown key {k!r}" for k in spec if k not in OPTION_KEYS]
        if spec.get("type", "str") not in TYPES:
            problems.append(f"option {name}: type {spec.get('type')!r} is not one of {TYPES}")
        if "pattern" in spec:
            try:
                re.compile(str(spec["pattern"]))
            except re.error as exc:
                problems.append(f"option {name}: pattern does not compile: {exc}")
    rules = declaration.get("rules") or {}
    if not isinstance(rules, dict) or any(k not in RULE_KEYS for k in rules):
        problems.append(f"rules may only hold {', '.join(RULE_KEYS)}")
    inventory = declaration.get("inventory") or {}
    if not isinstance(inventory, dict) or any(k not in ("vars", "groups") for k in inventory):
        problems.append("inventory may only hold vars (a list) and groups (group: [vars])")
    for group, wanted in (inventory.get("groups") or {}).items():
        if isinstance(wanted, dict) and any(k not in ("vars", "optional", "when") for k in wanted):
            problems.append(f"inventory group {group}: only vars, optional and when")
    for key in ("role_inputs", "include"):
        if not isinstance(declaration.get(key) or [], list):
            problems.append(f"{key} must be a list")
    limits = declaration.get("role_input_limits") or {}
    if not isinstance(limits, dict) or any(
        not isinstance(limit, dict) or not limit or any(k not in ("min", "max") for k in limit)
        for limit in limits.values()
    ):
        problems.append("role_input_limits must map role input names to {min, max}")
    return problems


def role_options(roles_dir: str, role: str) -> dict[str, dict[str, Any]]:
    """Every option of a role's meta/argument_specs.yml (all entry points), by name."""
    path = os.path.join(roles_dir, role, "meta", "argument_specs.yml")
    try:
        with open(path, encoding="utf-8") as handle:
            specs = (yaml.safe_load(handle) or {}).get("argument_specs") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DeclarationError(f"cannot read the argument specs of role {role}: {exc}") from exc
    found: dict[str, dict[str, Any]] = {}
    for entry in specs.values():
        for name, spec in ((entry or {}).get("options") or {}).items():
            found.setdefault(name, dict(spec or {}))
    return found


def known_names(
    declaration: Mapping[str, Any],
    load: Callable[[str], Mapping[str, Any]],
    roles: Callable[[str], Mapping[str, Any]],
) -> set[str]:
    """Every name a runbook accepts: its options, its roles' inputs, those of the runbooks it
    includes, and the common ones."""
    names: set[str] = set()
    seen: set[str] = set()
    pending = [declaration, load(COMMON)]
    while pending:
        current = pending.pop()
        if current.get("runbook") in seen:
            continue
        seen.add(current.get("runbook"))
        names |= set(current.get("options") or {})
        for role in current.get("role_inputs") or []:
            names |= set(roles(role))
        pending += [load(other) for other in current.get("include") or []]
    return names


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The closest known name (difflib), or None."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_warnings(runbook: str, given: Iterable[str], known: set[str]) -> list[str]:
    """One warning per extra-var name the runbook does not know."""
    warnings = []
    for name in sorted(set(given)):
        if name in known or name.startswith(IGNORED_PREFIXES):
            continue
        close = suggest(name, known)
        hint = f"did you mean {close}?" if close else "it is ignored"
        warnings.append(f"-e {name}: {runbook} has no input of that name; {hint}")
    return warnings


# ------------------------------------------------------------------------ checking values


def accepts(spec: Mapping[str, Any]) -> str:
    """What an option accepts, in words (from its type, range, pattern and choices)."""
    if spec.get("accepts"):
        return str(spec["accepts"])
    kind = spec.get("type", "str")
    low, high = spec.get("min"), spec.get("max")
    if spec.get("choices"):
        return "one of " + ", ".join(str(c) for c in spec["choices"])
    if kind == "count_or_percent":
        least = low if low is not None else 1
        return (
            f"a number of hosts (at least {least}) or a percentage of the hosts from 1% to 100% "
            f"(e.g. {max(least, 2)} or 50%)"
        )
    words = {
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "list": "a list",
        "dict": "a mapping",
        "path": "a path",
        "raw": "a value",
    }.get(kind, "text")
    if kind == "list" and spec.get("elements"):
        words += f" of {spec['elements']}"
    if spec.get("format"):
        words = str(spec["format"])
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    elif high is not None:
        words += f" of at most {high}"
    return words


def shown(name: str, value: Any, spec: Mapping[str, Any]) -> str:
    """The value as a message may show it: never a secret's, never a long one in full."""
    if spec.get("no_log") or _SECRET_NAME.search(name):
        return "(value not shown: secret)"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def validator_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a declared option ArgumentSpecValidator understands."""
    out = {k: spec[k] for k in VALIDATOR_KEYS if k in spec}
    out.setdefault("type", "str")
    if out["type"] == "count_or_percent":
        out["type"] = count_or_percent
    if spec.get("ignore_case"):
        out.pop("choices", None)  # compared below, without case
    return out


def check_value(name: str, spec: Mapping[str, Any], value: Any) -> tuple[Any, str | None]:
    """(the converted value, None) or (None, the problem in words)."""
    what = f"{name}={shown(name, value, spec)}"
    result = ArgumentSpecValidator({name: validator_spec(spec)}).validate({name: value})
    if result.error_messages:
        return None, f"{what} is not valid: {name} accepts {accepts(spec)}"
    converted = result.validated_parameters[name]
    if converted is None:
        return None, None
    if spec.get("ignore_case") and spec.get("choices"):
        allowed = {str(c).lower() for c in spec["choices"]}
        if str(converted).lower() not in allowed:
            return None, f"{what} is not valid: {name} accepts {accepts(spec)} (any case)"
    number: float | None = None
    if spec.get("type") == "count_or_percent":
        if isinstance(converted, str):
            percent = int(converted.rstrip("%"))
            if not 1 <= percent <= 100:
                return None, f"{what} is not valid: {name} accepts {accepts(spec)}"
        else:
            number = converted
    elif isinstance(converted, int | float) and not isinstance(converted, bool):
        number = converted
    low, high = spec.get("min"), spec.get("max")
    if number is not None and (
        (low is not None and number < low) or (high is not None and number > high)
    ):
        return None, f"{what} is out of range: {name} accepts {accepts(spec)}"
    if (
        spec.get("pattern")
        and isinstance(converted, str)
        and converted != ""
        and not re.fullmatch(str(spec["pattern"]), converted)
    ):
        return None, f"{what} is not valid: {name} accepts {accepts(spec)}"
    return converted, None


def check_values(
    options: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """(converted values, problems) of the options given; required ones that are missing."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, spec in options.items():
        if name not in given or given[name] is None:
            if spec.get("required"):
                about = f" ({spec['description']})" if spec.get("description") else ""
                problems.append(
                    f"{name} is required{about}: give it with -e {name}=... ({accepts(spec)})"
                )
            continue
        converted, problem = check_value(name, spec, given[name])
        if problem:
            problems.append(problem)
        else:
            values[name] = converted
    return values, problems


def _blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def check_rules(
    rules: Mapping[str, Any],
    values: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """required_if, required_together, required_one_of, mutually_exclusive - as Ansible
    means them, on the values given (an empty value counts as not given). The condition of a
    required_if also sees the declared defaults (deploy_target: hosts when not set)."""
    present = {k for k, v in values.items() if not _blank(v)}
    seen = {**(defaults or {}), **values}
    problems = []
    for name, value, needed, *rest in rules.get("required_if") or []:
        any_of = bool(rest and rest[0])
        if name in seen and str(seen[name]).lower() == str(value).lower():
            missing = [n for n in needed if n not in present]
            if missing and (not any_of or len(missing) == len(needed)):
                joined = (" or " if any_of else " and ").join(missing)
                problems.append(f"{name}={value} needs {joined} (-e {missing[0]}=...)")
    for group in rules.get("required_together") or []:
        have = [n for n in group if n in present]
        if have and len(have) != len(group):
            missing = [n for n in group if n not in present]
            problems.append(f"{', '.join(have)} needs {', '.join(missing)} as well")
    for group in rules.get("required_one_of") or []:
        if not any(n in present for n in group):
            problems.append(f"one of {', '.join(group)} is required")
    for group in rules.get("mutually_exclusive") or []:
        have = [n for n in group if n in present]
        if len(have) > 1:
            problems.append(f"{' and '.join(have)} exclude each other: give only one")
    return problems


def check_role_inputs(
    role_specs: Mapping[str, Mapping[str, Any]],
    given: Mapping[str, Any],
    limits: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Role inputs given with -e, against the role's own argument spec (types and choices)
    and the ranges declared in role_input_limits (an argument spec cannot say them)."""
    problems = []
    for name, value in sorted(given.items()):
        spec = role_specs.get(name)
        if spec is None or value is None:
            continue
        slim = {k: spec[k] for k in ("type", "elements", "options", "choices") if k in spec}
        checked = ArgumentSpecValidator({name: slim}).validate({name: value})
        limit = dict((limits or {}).get(name) or {})
        if checked.error_messages:
            problem = "is not valid"
        elif limit and not isinstance(checked.validated_parameters[name], bool):
            number = checked.validated_parameters[name]
            low, high = limit.get("min"), limit.get("max")
            if (low is None or number >= low) and (high is None or number <= high):
                continue
            problem = "is out of range"
        else:
            continue
        what = (
            "one of " + ", ".join(map(str, spec["choices"]))
            if spec.get("choices")
            else accepts(
                {"type": spec.get("type", "str"), "elements": spec.get("elements"), **limit}
            )
        )
        problems.append(
            f"{name}={shown(name, value, spec)} {problem}: the role input {name} takes {what}"
        )
    return problems


def check_inventory(
    inventory: Mapping[str, Any],
    own_vars: Mapping[str, Any],
    groups: Mapping[str, list[str]],
    host_vars: Callable[[str], Mapping[str, Any]],
    values: Mapping[str, Any] | None = None,
) -> list[str]:
    """The names the inventory must hold: on the host running the check (vars), and on every
    host of each group (groups: {group: [vars]}, the group holding at least one host; or
    {group: {vars: [...], optional: true}} for a group that may be empty; ``when: {input:
    value}`` - only when that input, given or defaulted (``values``), has that value, as the
    app group on deploy_target=hosts)."""
    problems = []
    missing = [n for n in inventory.get("vars") or [] if _blank(own_vars.get(n))]
    if missing:
        problems.append(
            "the inventory does not set " + ", ".join(missing) + " (group_vars/all/vars.yml)"
        )
    for group, wanted in (inventory.get("groups") or {}).items():
        when = dict(wanted.get("when") or {}) if isinstance(wanted, Mapping) else {}
        if any(str((values or {}).get(k)).lower() != str(v).lower() for k, v in when.items()):
            continue
        optional = isinstance(wanted, Mapping) and bool(wanted.get("optional"))
        names = list((wanted.get("vars") if isinstance(wanted, Mapping) else wanted) or [])
        hosts = list(groups.get(group) or [])
        if not hosts and not optional:
            problems.append(f"the inventory has no host in group {group}")
            continue
        for host in hosts:
            raw = host_vars(host)
            lacking = [n for n in names if _blank(raw.get(n))]
            if lacking:
                problems.append(f"host {host} (group {group}) has no {', '.join(lacking)}")
    return problems


# ------------------------------------------------------------------------ the re-run command


def masked(name: str, value: Any, secret_names: set[str]) -> Any:
    """A value fit for a printed command: secrets and URL credentials or queries hidden."""
    if name in secret_names or _SECRET_NAME.search(name):
        return "..."
    if isinstance(value, str):
        return _URL_SECRET.sub(
            lambda m: (
                m.group("scheme")
                + ("...@" if m.group("userinfo") else "")
                + m.group("rest")
                + ("?..." if m.group("query") else "")
            ),
            value,
        )
    return value


def extra_var_args(variables: Mapping[str, Any]) -> list[str]:
    """-e arguments for the variables, in the order given (scalars as name=value)."""
    args: list[str] = []
    for name, value in variables.items():
        if isinstance(value, bool):
            text = f"{name}={'true' if value else 'false'}"
        elif isinstance(value, int | float | str) and not (isinstance(value, str) and value == ""):
            text = f"{name}={value}"
        else:
            text = json.dumps({name: value}, default=str)
        args += ["-e", text]
    return args


def rerun_commands(
    runbook: str,
    extra_vars: Mapping[str, Any],
    add: Mapping[str, Any],
    *,
    env: str,
    inventory: list[str],
    playbook: str,
    limit: str | None,
    check: bool,
    secret_names: set[str],
) -> dict[str, str]:
    """This run again with ``add`` set, as ``opsbook run`` and as ``ansible-playbook``."""
    given = {k: masked(k, v, secret_names) for k, v in extra_vars.items() if k not in add}
    reason = given.pop("opsbook_reason", None)
    wanted = {**dict(add), **given}
    opsbook = ["opsbook", "run", runbook, "--env", env, *extra_var_args(wanted)]
    if reason:
        opsbook += ["--reason", str(reason)]
    playbook_argv = ["ansible-playbook"]
    for source in inventory:
        playbook_argv += ["-i", source]
    playbook_argv += [playbook, *extra_var_args(wanted)]
    if reason:
        playbook_argv += extra_var_args({"opsbook_reason": reason})
    for argv in (opsbook, playbook_argv):
        if limit:
            argv += ["--limit", limit]
        if check:
            argv.append("--check")
    return {"opsbook": shlex.join(opsbook), "ansible_playbook": shlex.join(playbook_argv)}


def env_name(inventory: list[str], fallback: str) -> str:
    """The environment's name as `opsbook run --env` takes it: the inventory directory."""
    for source in inventory:
        path = os.path.normpath(source)
        if os.path.isfile(path):
            path = os.path.dirname(path)
        if os.path.isdir(path):
            return os.path.basename(path)
    return fallback or "ENV"


# ------------------------------------------------------------------------ the action


class ActionModule(ActionBase):
    """Check the inputs of a runbook (library/opsbook_inputs.py documents it)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("runbook", "directory", "rerun_with", "warn_unknown"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        self._supports_check_mode = True
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        runbook = str(args.get("runbook") or "")
        base = os.path.join(str(task_vars.get("playbook_dir") or "."))
        directory = str(args.get("directory") or os.path.join(base, "vars", "inputs"))
        roles_dir = os.path.join(os.path.dirname(os.path.abspath(base)), "roles")
        try:
            declaration = load_declaration(directory, runbook)
            common = load_declaration(directory, COMMON)
            role_cache: dict[str, dict[str, dict[str, Any]]] = {}

            def roles(role: str) -> dict[str, dict[str, Any]]:
                if role not in role_cache:
                    role_cache[role] = role_options(roles_dir, role)
                return role_cache[role]

            known = known_names(declaration, lambda n: load_declaration(directory, n), roles)
        except DeclarationError as exc:
            raise AnsibleActionFail(f"opsbook_inputs: {exc}; nothing was changed") from exc

        options = {**(common.get("options") or {}), **(declaration.get("options") or {})}
        given = {}
        problems: list[str] = []
        for name in options:
            if name in task_vars:
                try:
                    given[name] = self._templar.template(task_vars[name])
                except Exception as exc:  # an undefined variable, a template error
                    problems.append(f"{name} cannot be evaluated: {exc}")
        values, value_problems = check_values(options, given)
        problems += value_problems
        defaults = {n: spec["default"] for n, spec in options.items() if "default" in spec}
        problems += check_rules(declaration.get("rules") or {}, values, defaults)

        extra = self._extra_vars()
        role_specs: dict[str, dict[str, Any]] = {}
        for role in declaration.get("role_inputs") or []:
            role_specs.update(roles(role))
        role_given = {}
        for name in extra:
            if name in role_specs and name not in options:
                try:
                    role_given[name] = self._templar.template(task_vars.get(name, extra[name]))
                except AnsibleUndefinedVariable:
                    # a value templated from another host's variables ("{{ deploy_root }}/..."
                    # for the app hosts' role): the role checks it where it runs
                    continue
                except Exception as exc:
                    problems.append(f"{name} cannot be evaluated: {exc}")
        limits = {
            **(common.get("role_input_limits") or {}),
            **(declaration.get("role_input_limits") or {}),
        }
        problems += check_role_inputs(role_specs, role_given, limits)

        hostvars = task_vars.get("hostvars")

        def host_vars(host: str) -> Mapping[str, Any]:
            try:
                return hostvars.raw_get(host) if hostvars is not None else {}
            except Exception:
                return {}

        problems += check_inventory(
            declaration.get("inventory") or {},
            task_vars,
            task_vars.get("groups") or {},
            host_vars,
            {**defaults, **values},
        )

        warnings = []
        if self._warn_unknown(args, runbook):
            warnings = unknown_warnings(runbook, extra, known)
        secret_names = {n for n, s in options.items() if s.get("no_log")}
        cli = context.CLIARGS
        inventory = [str(s) for s in (cli.get("inventory") or [])]
        playbooks = [str(p) for p in (cli.get("args") or [])]
        result.update(
            changed=False,
            runbook=runbook,
            checked=sorted(given),
            problems=problems,
            unknown=[w.split(":", 1)[0][3:] for w in warnings],
            rerun=rerun_commands(
                runbook,
                extra,
                dict(args.get("rerun_with") or {}),
                env=env_name(inventory, str(task_vars.get("opsbook_env") or "")),
                inventory=inventory,
                playbook=playbooks[0] if playbooks else f"playbooks/{runbook}.yml",
                limit=cli.get("subset"),
                check=bool(cli.get("check")),
                secret_names=secret_names,
            ),
        )
        if warnings:
            result["warnings"] = warnings
        if problems:
            del result["rerun"], result["checked"]  # the failure says what matters
            count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
            numbered = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
            result.update(
                failed=True,
                msg=f"{runbook} refused, nothing was changed: {count} with its inputs: {numbered}.",
            )
        else:
            result["msg"] = f"{len(given)} input(s) of {runbook} checked"
        return result

    def _extra_vars(self) -> dict[str, Any]:
        """The extra vars of this run (names and values as given), or {} when unreadable."""
        from ansible.utils.vars import load_extra_vars

        try:
            return dict(load_extra_vars(self._loader) or {})
        except Exception:  # opsbook run removes its extra-vars file once the playbook started
            return {}

    def _warn_unknown(self, args: Mapping[str, Any], runbook: str) -> bool:
        """Whether this check warns about unknown names: only for the runbook the operator
        started, and not again after `opsbook run` did."""
        wanted = args.get("warn_unknown")
        if wanted is not None:
            return bool(wanted)
        if os.environ.get(WARNED_ENV):
            return False
        playbooks = context.CLIARGS.get("args") or []
        started = os.path.splitext(os.path.basename(str(playbooks[0])))[0] if playbooks else ""
        return started == runbook
