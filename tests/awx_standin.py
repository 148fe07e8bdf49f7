"""An AWX API stand-in on loopback, for the tests of playbooks/awx_setup.yml.

It answers what the awx.awx collection's modules and its ``controller_api`` lookup call
(``/api/v2/...``, AWX 24): ``ping/``, ``config/``, ``me/``; list views with AWX's filters
(``?name=``, ``?name__startswith=``, ``?organization=``, ``or__id``/``or__name``) and its page
shape (``count``, ``next``, ``previous``, ``results``); ``POST`` to create (201), ``PATCH`` to
update (200), ``DELETE`` (204) of organizations, projects, inventories, inventory_sources,
job_templates and schedules; the credentials association of a job template
(``POST {"id": n}`` / ``{"id": n, "disassociate": true}``, 204); ``unified_job_templates``;
a project's update (``project_updates/<id>/``, successful at once) and its ``playbooks/``.

It refuses what AWX refuses, with a 400 naming the field: a Bearer token other than its own
(401); a field the object does not have; a reference to an object that does not exist; a job
template whose playbook is not one of its project's (the real project's ``playbooks/*.yml``);
an inventory source whose ``source_path`` is not a file of the project; a schedule whose rrule
AWX's serializer rejects (DTSTART with a time zone, INTERVAL, no SECONDLY, no BYDAY with a
numeric prefix, no COUNT with UNTIL, and dateutil must parse it), or whose ``extra_data`` /
``timeout`` its job template does not prompt for on launch. Every request is recorded
(``requests``: method, path, query, body) for the tests to count and read.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

API = "/api/v2/"
VERSION = "24.6.1"  # the awx.awx collection's own: no version-mismatch warning

# Per collection: the object type, and the fields an object has with AWX's defaults.
_COMMON = {"name": "", "description": ""}
FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "organizations": ("organization", {**_COMMON, "max_hosts": 0, "default_environment": None}),
    "credentials": ("credential", {**_COMMON, "organization": None, "kind": "ssh"}),
    "execution_environments": (
        "execution_environment",
        {**_COMMON, "organization": None, "image": ""},
    ),
    "projects": (
        "project",
        {
            **_COMMON,
            "organization": None,
            "scm_type": "",
            "scm_url": "",
            "scm_branch": "",
            "scm_refspec": "",
            "scm_clean": False,
            "scm_delete_on_update": False,
            "scm_track_submodules": False,
            "scm_update_on_launch": False,
            "scm_update_cache_timeout": 0,
            "allow_override": False,
            "timeout": 0,
            "credential": None,
            "default_environment": None,
            "custom_virtualenv": None,
            "local_path": "",
            "signature_validation_credential": None,
        },
    ),
    "inventories": (
        "inventory",
        {
            **_COMMON,
            "organization": None,
            "kind": "",
            "host_filter": None,
            "variables": "",
            "prevent_instance_group_fallback": False,
        },
    ),
    "inventory_sources": (
        "inventory_source",
        {
            **_COMMON,
            "inventory": None,
            "source": "",
            "source_path": "",
            "source_vars": "",
            "source_project": None,
            "credential": None,
            "overwrite": False,
            "overwrite_vars": False,
            "update_on_launch": False,
            "update_cache_timeout": 0,
            "timeout": 0,
            "verbosity": 1,
            "enabled_var": "",
            "enabled_value": "",
            "host_filter": "",
            "limit": "",
            "scm_branch": "",
            "execution_environment": None,
            "custom_virtualenv": None,
        },
    ),
    "job_templates": (
        "job_template",
        {
            **_COMMON,
            "organization": None,
            "job_type": "run",
            "inventory": None,
            "project": None,
            "playbook": "",
            "scm_branch": "",
            "forks": 0,
            "limit": "",
            "verbosity": 0,
            "extra_vars": "",
            "job_tags": "",
            "force_handlers": False,
            "skip_tags": "",
            "start_at_task": "",
            "timeout": 0,
            "use_fact_cache": False,
            "host_config_key": "",
            "ask_scm_branch_on_launch": False,
            "ask_diff_mode_on_launch": False,
            "ask_variables_on_launch": False,
            "ask_limit_on_launch": False,
            "ask_tags_on_launch": False,
            "ask_skip_tags_on_launch": False,
            "ask_job_type_on_launch": False,
            "ask_verbosity_on_launch": False,
            "ask_inventory_on_launch": False,
            "ask_credential_on_launch": False,
            "ask_execution_environment_on_launch": False,
            "ask_forks_on_launch": False,
            "ask_instance_groups_on_launch": False,
            "ask_job_slice_count_on_launch": False,
            "ask_labels_on_launch": False,
            "ask_timeout_on_launch": False,
            "survey_enabled": False,
            "become_enabled": False,
            "diff_mode": False,
            "allow_simultaneous": False,
            "custom_virtualenv": None,
            "job_slice_count": 1,
            "webhook_service": "",
            "webhook_credential": None,
            "execution_environment": None,
            "prevent_instance_group_fallback": False,
        },
    ),
    "schedules": (
        "schedule",
        {
            **_COMMON,
            "unified_job_template": None,
            "rrule": "",
            "enabled": True,
            "extra_data": {},
            "inventory": None,
            "scm_branch": None,
            "job_type": None,
            "job_tags": None,
            "skip_tags": None,
            "limit": None,
            "diff_mode": None,
            "verbosity": None,
            "execution_environment": None,
            "forks": None,
            "job_slice_count": None,
            "timeout": None,
        },
    ),
}
#: fields that name another object, and the collection it is in
REFERENCES = {
    "organization": "organizations",
    "inventory": "inventories",
    "project": "projects",
    "source_project": "projects",
    "credential": "credentials",
    "webhook_credential": "credentials",
    "signature_validation_credential": "credentials",
    "execution_environment": "execution_environments",
    "default_environment": "execution_environments",
}
WRITABLE = (
    "organizations",
    "projects",
    "inventories",
    "inventory_sources",
    "job_templates",
    "schedules",
)
#: the unified job templates: what a schedule runs
UNIFIED = ("projects", "inventory_sources", "job_templates")
_LIST_PARAMS = {"page", "page_size", "order_by"}
_BYDAY_NUMERIC = re.compile(r".*?BYDAY[:=][0-9]+[a-zA-Z]{2}")


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    body: Any


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def rrule_problems(rrule: str) -> list[str]:
    """What AWX's schedule serializer says of an rrule (validate_rrule), and dateutil's parse."""
    problems = []
    dtstarts = re.findall(r".*?(DTSTART(;[^:]+)?\:[0-9]+T[0-9]+Z?)", rrule)
    if not dtstarts:
        problems.append(
            "Valid DTSTART required in rrule. Value should start with: DTSTART:YYYYMMDDTHHMMSSZ"
        )
    if re.findall(r".*?(DTSTART:[0-9]+T[0-9]+) ", rrule):
        problems.append("DTSTART cannot be a naive datetime.")
    if len(dtstarts) > 1:
        problems.append("Multiple DTSTART is not supported.")
    if "rrule:" not in rrule.lower():
        problems.append("One or more rule required in rrule.")
    for rule in re.findall(r".*?(RULE\:[^\s]*)", rrule):
        if "interval" not in rule.lower():
            problems.append(f"INTERVAL required in rrule: {rule}")
        elif "secondly" in rule.lower():
            problems.append(f"SECONDLY is not supported: {rule}")
        if _BYDAY_NUMERIC.match(rule):
            problems.append(f"BYDAY with numeric prefix not supported: {rule}")
        if "COUNT" in rule and "UNTIL" in rule:
            problems.append(f"RRULE may not contain both COUNT and UNTIL: {rule}")
    if not problems:
        try:
            occurrences(rrule, 1)
        except Exception as exc:  # dateutil raises several kinds
            problems.append(f"rrule parsing failed validation: {exc}")
    return problems


def occurrences(rrule: str, count: int, after: datetime | None = None) -> list[datetime]:
    """The next ``count`` times an rrule fires (after ``after``, default from its DTSTART), as
    AWX computes them: dateutil's rrulestr over the rule's lines."""
    from dateutil.rrule import rrulestr

    rules = rrulestr(rrule.replace(" ", "\n"), forceset=True)
    if after is not None:
        first = rules.after(after)
        return [] if first is None else [first, *itertools.islice(rules.xafter(first), 1, count)]
    return list(itertools.islice(rules, count))


class AwxStandin:
    """The AWX API, serving from construction until close(); ``token`` is the one accepted.

    ``playbooks``: the project files its projects "sync" (paths relative to the project,
    e.g. ``playbooks/backup.yml``, ``inventories/production/hosts.yml``).
    """

    def __init__(self, token: str, project_files: Iterable[str]) -> None:
        self.token = token
        self.project_files = sorted(project_files)
        self.requests: list[Request] = []
        self.objects: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in FIELDS}
        self.associations: dict[tuple[str, int, str], list[int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.add("organizations", name="Default")
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._serve(self, "GET")

            def do_POST(self) -> None:
                standin._serve(self, "POST")

            def do_PATCH(self) -> None:
                standin._serve(self, "PATCH")

            def do_DELETE(self) -> None:
                standin._serve(self, "DELETE")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ for the tests

    def add(self, collection: str, **fields: Any) -> dict[str, Any]:
        """Create an object directly (what an admin made before: a credential, ...)."""
        with self._lock:
            return self._create(collection, fields, check=False)

    def named(self, collection: str, name: str) -> dict[str, Any]:
        """The object called ``name`` (KeyError naming what there is when none)."""
        found = [o for o in self.objects[collection].values() if o["name"] == name]
        if len(found) != 1:
            names = sorted(o["name"] for o in self.objects[collection].values())
            raise KeyError(f"{collection}: no single {name!r} among {names}")
        return found[0]

    def names(self, collection: str) -> list[str]:
        return sorted(o["name"] for o in self.objects[collection].values())

    def writes(self) -> list[Request]:
        """The requests that change something (POST, PATCH, DELETE)."""
        return [r for r in self.requests if r.method != "GET"]

    def credentials_of(self, template: str) -> list[str]:
        """The names of the credentials associated with a job template."""
        ids = self.associations.get(
            ("job_templates", self.named("job_templates", template)["id"], "credentials"), []
        )
        return sorted(self.objects["credentials"][i]["name"] for i in ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ serving

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(Request(method, parts.path, query, body))
        try:
            if parts.path != f"{API}ping/" and handler.headers.get("Authorization") != (
                f"Bearer {self.token}"
            ):
                raise ApiError(401, {"detail": "Authentication credentials were not provided."})
            with self._lock:
                status, answer = self._route(method, parts.path, query, body)
        except ApiError as exc:
            status, answer = exc.status, exc.body
        data = b"" if answer is None else json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("X-API-Product-Name", "AWX")
        handler.send_header("X-API-Product-Version", VERSION)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not path.startswith(API) or not path.endswith("/"):
            raise ApiError(404, {"detail": "Not found."})
        parts = path[len(API) : -1].split("/")
        if method == "GET" and parts == ["ping"]:
            return 200, {"ha": False, "version": VERSION, "active_node": "awx-standin"}
        if method == "GET" and parts == ["config"]:
            return 200, {"version": VERSION, "license_info": {"license_type": "open"}}
        if method == "GET" and parts == ["me"]:
            return 200, self._page([{"id": 1, "type": "user", "username": "admin"}])
        if method == "GET" and parts == ["unified_job_templates"]:
            return 200, self._page(self._filter(self._unified(), query))
        if len(parts) == 2 and parts[0] == "project_updates" and method == "GET":
            return 200, {
                "id": int(parts[1]),
                "type": "project_update",
                "status": "successful",
                "failed": False,
            }
        collection = parts[0]
        if collection not in FIELDS:
            raise ApiError(404, {"detail": "Not found."})
        if len(parts) == 1:
            if method == "GET":
                return 200, self._page(self._filter(self.objects[collection].values(), query))
            if method == "POST" and collection in WRITABLE:
                return 201, self._create(collection, body or {}, check=True)
            raise ApiError(405, {"detail": f'Method "{method}" not allowed.'})
        item = self._get(collection, parts[1])
        if len(parts) == 2:
            if method == "GET":
                return 200, item
            if method == "PATCH" and collection in WRITABLE:
                return 200, self._update(collection, item, body or {})
            if method == "DELETE" and collection in WRITABLE:
                del self.objects[collection][item["id"]]
                return 204, None
            raise ApiError(405, {"detail": f'Method "{method}" not allowed.'})
        if len(parts) == 3 and collection == "projects" and parts[2] == "playbooks":
            return 200, [f for f in self.project_files if f.startswith("playbooks/")]
        if len(parts) == 3 and collection == "job_templates" and parts[2] == "credentials":
            key = (collection, item["id"], "credentials")
            linked = self.associations.setdefault(key, [])
            if method == "GET":
                return 200, self._page([self.objects["credentials"][i] for i in linked])
            if method == "POST":
                credential = self._get("credentials", str((body or {}).get("id")))["id"]
                if (body or {}).get("disassociate"):
                    if credential in linked:
                        linked.remove(credential)
                elif credential not in linked:
                    linked.append(credential)
                return 204, None
        raise ApiError(404, {"detail": "Not found."})

    def _unified(self) -> list[dict[str, Any]]:
        """The unified job templates view: what a schedule can run, with its organization."""
        found = []
        for collection in UNIFIED:
            for obj in self.objects[collection].values():
                organization = obj.get("organization")
                if collection == "inventory_sources":
                    organization = self.objects["inventories"][obj["inventory"]]["organization"]
                found.append(
                    {
                        "id": obj["id"],
                        "type": obj["type"],
                        "url": obj["url"],
                        "name": obj["name"],
                        "organization": organization,
                    }
                )
        return found

    @staticmethod
    def _page(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"count": len(results), "next": None, "previous": None, "results": results}

    def _get(self, collection: str, key: str) -> dict[str, Any]:
        if not key.isdigit() or int(key) not in self.objects[collection]:
            raise ApiError(404, {"detail": "Not found."})
        return self.objects[collection][int(key)]

    @staticmethod
    def _filter(objects: Iterable[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
        found = []
        either = {k[len("or__") :]: v for k, v in query.items() if k.startswith("or__")}
        for obj in objects:
            keep = True
            for key, value in query.items():
                if key in _LIST_PARAMS or key.startswith("or__"):
                    continue
                if key.endswith("__startswith"):
                    keep = keep and str(obj.get(key[: -len("__startswith")], "")).startswith(value)
                elif key not in obj:
                    raise ApiError(400, {"detail": f"{key} is not an allowed field name"})
                else:
                    keep = keep and str(obj[key]) == value
            if either:
                keep = keep and any(str(obj.get(k)) == v for k, v in either.items())
            if keep:
                found.append(obj)
        return sorted(found, key=lambda o: o["id"])

    # ------------------------------------------------------------------ objects

    def _check_fields(self, collection: str, fields: dict[str, Any]) -> None:
        defaults = FIELDS[collection][1]
        unknown = sorted(k for k in fields if k not in defaults)
        if unknown:
            raise ApiError(400, {k: [f"{collection} have no field {k}"] for k in unknown})
        for name, value in fields.items():
            target = REFERENCES.get(name)
            if name == "unified_job_template":
                if not any(value in self.objects[c] for c in UNIFIED):
                    raise ApiError(400, {name: [f'Invalid pk "{value}" - object does not exist.']})
            elif target and value is not None and value not in self.objects[target]:
                raise ApiError(400, {name: [f'Invalid pk "{value}" - object does not exist.']})

    def _create(self, collection: str, fields: dict[str, Any], check: bool) -> dict[str, Any]:
        kind, defaults = FIELDS[collection]
        if check:
            self._check_fields(collection, fields)
        obj = {**copy.deepcopy(defaults), **copy.deepcopy(fields)}
        if not obj["name"]:
            raise ApiError(400, {"name": ["This field may not be blank."]})
        clash = [
            o for o in self.objects[collection].values() if self._same_name(collection, o, obj)
        ]
        if clash:
            raise ApiError(400, {"__all__": [f"{kind} with this Name already exists."]})
        if check:
            self._validate(collection, obj)
        new_id = next(self._ids)
        now = datetime.now(UTC).isoformat()
        obj.update(
            id=new_id,
            type=kind,
            url=f"{API}{collection}/{new_id}/",
            created=now,
            modified=now,
            related={},
            summary_fields={},
        )
        if collection == "job_templates":
            obj["related"]["credentials"] = f"{API}job_templates/{new_id}/credentials/"
        if collection == "projects":
            obj["scm_revision"] = "0123456789abcdef0123456789abcdef01234567"
            obj["status"] = "successful"
            obj["related"]["update"] = f"{API}projects/{new_id}/update/"
            obj["summary_fields"]["current_update"] = {"id": new_id, "status": "successful"}
        self.objects[collection][new_id] = obj
        self._derive(collection, obj)
        return obj

    def _update(
        self, collection: str, obj: dict[str, Any], fields: dict[str, Any]
    ) -> dict[str, Any]:
        self._check_fields(collection, fields)
        updated = {**obj, **copy.deepcopy(fields)}
        clash = [
            o
            for o in self.objects[collection].values()
            if o["id"] != obj["id"] and self._same_name(collection, o, updated)
        ]
        if clash:
            raise ApiError(400, {"__all__": ["An object with this Name already exists."]})
        self._validate(collection, updated)
        updated["modified"] = datetime.now(UTC).isoformat()
        if collection == "projects":
            updated["summary_fields"] = {}  # no update running: nothing for the module to wait on
        self.objects[collection][obj["id"]] = updated
        self._derive(collection, updated)
        return updated

    @staticmethod
    def _same_name(collection: str, one: dict[str, Any], other: dict[str, Any]) -> bool:
        """AWX's uniqueness: a name per organization (per inventory for an inventory source,
        per unified job template for a schedule)."""
        scope = {"inventory_sources": "inventory", "schedules": "unified_job_template"}.get(
            collection, "organization"
        )
        return one["name"] == other["name"] and one.get(scope) == other.get(scope)

    def _validate(self, collection: str, obj: dict[str, Any]) -> None:
        if collection == "job_templates":
            project = self.objects["projects"].get(obj["project"])
            if project is None:
                raise ApiError(400, {"project": ["This field is required."]})
            if obj["inventory"] is None and not obj["ask_inventory_on_launch"]:
                raise ApiError(
                    400,
                    {
                        "inventory": [
                            "Job Template must provide 'inventory' or allow prompting for it."
                        ]
                    },
                )
            if obj["playbook"] not in self.project_files or not obj["playbook"].startswith(
                "playbooks/"
            ):
                raise ApiError(400, {"playbook": ["Playbook not found for project."]})
            obj["organization"] = project["organization"]
        if collection == "inventory_sources" and obj["source"] == "scm":
            if obj["source_project"] is None:
                raise ApiError(400, {"source_project": ["Project required for scm type sources."]})
            if obj["source_path"] not in self.project_files:
                raise ApiError(
                    400, {"source_path": [f"{obj['source_path']!r} is not a file of the project."]}
                )
        if collection == "schedules":
            problems = rrule_problems(obj["rrule"])
            if problems:
                raise ApiError(400, {"rrule": problems})
            template = self.objects["job_templates"].get(obj["unified_job_template"])
            if template is not None:
                if obj["extra_data"] and not template["ask_variables_on_launch"]:
                    raise ApiError(
                        400,
                        {
                            "extra_data": [
                                f"Variables are not accepted on launch: {sorted(obj['extra_data'])}"
                            ]
                        },
                    )
                if obj["timeout"] is not None and not template["ask_timeout_on_launch"]:
                    raise ApiError(
                        400, {"timeout": ["Field is not configured to prompt on launch."]}
                    )

    def _derive(self, collection: str, obj: dict[str, Any]) -> None:
        """What AWX computes: a schedule's next run and the name of what it runs."""
        if collection != "schedules":
            return
        template = next(
            self.objects[c][obj["unified_job_template"]]
            for c in UNIFIED
            if obj["unified_job_template"] in self.objects[c]
        )
        upcoming = occurrences(obj["rrule"], 1, after=datetime.now(UTC))
        obj["next_run"] = upcoming[0].isoformat() if upcoming else None
        obj["timezone"] = "UTC"
        obj["summary_fields"] = {
            "unified_job_template": {
                "id": template["id"],
                "name": template["name"],
                "unified_job_type": "job",
            }
        }


def project_files(root: Path) -> list[str]:
    """The files of a project checkout AWX would sync: playbooks and inventory files."""
    found = [f"playbooks/{p.name}" for p in (root / "playbooks").glob("*.yml")]
    found += [str(p.relative_to(root)) for p in (root / "inventories").glob("*/hosts.yml")]
    return sorted(found)
