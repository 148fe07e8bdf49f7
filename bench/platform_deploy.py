#!/usr/bin/env python3
"""Benchmark: deploy.yml and rollback.yml on the platform targets (issue 14's performance
target), each against its stand-in, side by side with the raw API script a team would write.

    .venv/bin/python bench/platform_deploy.py [--targets vercel,render,fly] [--rounds 3]
        [--build-s 10] [--start-s 3] [--machines 4] [--json out.json] [--keep]

For each target, --rounds rounds of two pairs, in an order that alternates each round (opsbook
first in rounds 1, 3, ..., the raw script in rounds 2, 4, ...). Each pair has a stand-in of its own
(tests/standins_<vendor>.py: every request and answer judged by the vendor's document) serving
0.1.0, an inventory as the tests make it (tests/integration/platform_flow.py:
platform_inventory, deploy_target=<target>), a first deploy of 1.0.0 by the same kind (not
measured), then a measured deploy of a new version and a measured rollback to 1.0.0:

  opsbook  ansible-playbook playbooks/deploy.yml -e app_version=<new> -e app_source=<source>
           (lock, staging gate, health gate, ledger, report), then ansible-playbook
           playbooks/rollback.yml (no rollback_to: the role finds the previous good deployment)
  raw      what a team would do instead without opsbook, as a Python script of raw API calls
           (urllib, here in the bench): trigger the deploy, poll until it is ready once a
           second, one GET of /health; the rollback likewise, told what to go back to (the id
           or image that served before, as a dashboard shows it)

A stand-in per pair keeps one pair's history out of the next one's "previous good" (a Vercel
rollback.yml after a rollback and a new deploy goes back to the deployment rolled back from:
bench/README.md).

What a deploy is on each target:

  vercel  a production build of a preview deployment (POST /v13/deployments with
          deploymentId); the raw script promotes it when Vercel leaves it STAGED (after an
          Instant Rollback, Vercel does not assign production to new deployments until one is
          promoted); rollback = Instant Rollback
  render  a deploy of a commit (POST /services/{id}/deploys {commitId}); rollback = POST
          /services/{id}/rollback {deployId}, a new deploy of the old code
  fly     every machine of the app (--machines, 4) updated to the new image: opsbook canary 1
          then batches of 50% under leases, waiting on Fly's /wait; the raw script machine
          after machine (flyctl's rolling strategy), polling GET .../machines/{id} once a second

The stand-ins' builds take time (the stand-ins count polls; the bench's subclasses below make
a build last --build-s seconds of wall clock whatever the polling, so that polling faster buys
nothing): a Vercel or Render build --build-s, a Render rollback (no build) and a Fly machine's
start (the stand-in's own start_delay_s) --start-s.

Per run: wall time; the API calls that reached the stand-in (every attempt, its api_calls),
of them reads (GET) and writes, by operation id; and the shortest gap between two GETs of the
same resource (path without query) with nothing written between - a poll, or a read repeated:
issue 14 wants waiting never faster than once a second and no more calls than needed. For
opsbook, also the api_calls its own report gives. After every run the bench checks that it was
real - the stand-in's state and its app (GET /api/version; on Fly each machine through
fly-force-instance-id) serve the new version after a deploy, 1.0.0 after a rollback, opsbook's
report says succeeded / ok, no lease left on Fly, no request or answer outside the document -
and stops with the reason otherwise. The ratios opsbook / raw (calls, time) are taken within
each round and their median reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.deploy_rollback import BenchError, median
from tests.harness import VENV_BIN, ansible_env
from tests.integration.platform_flow import platform_inventory
from tests.platform_standin import INSTANCE_HEADER, PlatformStandin
from tests.standins_fly import FlyStandin
from tests.standins_render import RenderStandin
from tests.standins_vercel import BUILDING, VercelStandin

TARGETS = ("vercel", "render", "fly")
KINDS = ("opsbook", "raw")
STEPS = ("deploy", "rollback")
READS = frozenset({"GET", "HEAD"})
#: issue 14: waiting never polls faster than once a second (10 ms for the stamps' jitter)
POLL_MIN_S = 1.0
POLL_SLACK_S = 0.01
SEED_VERSION = "0.1.0"  # what serves when the stand-in starts (not deployed by opsbook)
BASE_VERSION = "1.0.0"  # deployed first by deploy.yml (not measured); every rollback returns to it
RAW_POLL_S = 1.0
RAW_TIMEOUT_S = 600.0
PLAYBOOK_TIMEOUT_S = 900.0


# ------------------------------------------------------------------------------- pure helpers


@dataclass
class Request:
    """One request that reached a stand-in: when it came and when it was answered
    (monotonic), method, path without query."""

    at: float
    method: str
    path: str
    ended: float = 0.0


def api_span(requests: Sequence[Request]) -> float:
    """From the first request's arrival to the last answer (a blocking wait included)."""
    if not requests:
        return 0.0
    return max(max(r.ended, r.at) for r in requests) - min(r.at for r in requests)


@dataclass
class Run:
    target: str
    kind: str  # opsbook | raw
    step: str  # deploy | rollback
    round: int
    wall_s: float
    calls: int  # every request that reached the stand-in (its api_calls)
    reads: int
    writes: int
    operations: dict[str, int]
    shortest_poll_s: float | None  # the shortest gap between two GETs of one resource
    shortest_poll_of: str
    reported_calls: int | None = None  # opsbook: the api_calls of its own report
    api_span_s: float = 0.0  # from the run's first request to the stand-in to the last answer


def round_order(index: int) -> list[str]:
    """opsbook first in even rounds (0-based), the raw script first in odd ones."""
    return list(KINDS) if index % 2 == 0 else list(reversed(KINDS))


def versions_of(round_index: int) -> dict[str, str]:
    """The version each kind deploys in a round: opsbook 2.<round>.0, raw 3.<round>.0 (every
    deploy a new version; both roll back to BASE_VERSION)."""
    return {"opsbook": f"2.{round_index}.0", "raw": f"3.{round_index}.0"}


def commit_of(version: str) -> str:
    """A 40-hex commit id standing for the commit that builds ``version`` (Render)."""
    return hashlib.sha1(f"opsbook-bench {version}".encode()).hexdigest()


def tally(calls: Iterable[tuple[str, str]]) -> tuple[int, int, dict[str, int]]:
    """(reads, writes, count by operation id) of (method, operation id) pairs; GET and HEAD
    are reads, everything else a write. Operation ids in the order first seen."""
    reads = writes = 0
    by: dict[str, int] = {}
    for method, operation in calls:
        if method.upper() in READS:
            reads += 1
        else:
            writes += 1
        by[operation] = by.get(operation, 0) + 1
    return reads, writes, by


def shortest_poll(requests: Sequence[Request]) -> tuple[float | None, str]:
    """The shortest gap between two GETs of the same path (query ignored) with no write in
    between - a poll: reading again what nothing was asked to change - and that path; (None,
    "") when there was none. A read right after a write (the check that it took) is no poll."""
    last: dict[str, float] = {}
    best: float | None = None
    of = ""
    for request in sorted(requests, key=lambda r: r.at):
        if request.method.upper() not in READS:
            last.clear()
            continue
        path = request.path.split("?", 1)[0]
        if path in last:
            gap = request.at - last[path]
            if best is None or gap < best:
                best, of = gap, path
        last[path] = request.at
    return best, of


def vercel_ready(deployment: Mapping[str, Any]) -> bool:
    """A Vercel deployment is done building: READY (True), still building (False); ERROR or
    CANCELED raise."""
    state = deployment.get("readyState") or deployment.get("status")
    if state in ("ERROR", "CANCELED"):
        raise BenchError(f"vercel deployment {deployment.get('id')} ended {state}")
    return state == "READY"


RENDER_FAILED = ("build_failed", "update_failed", "canceled", "pre_deploy_failed", "deactivated")


def render_live(deploy: Mapping[str, Any]) -> bool:
    """A Render deploy is live (True) or still on its way (False); a failed one raises."""
    status = deploy.get("status")
    if status in RENDER_FAILED:
        raise BenchError(f"render deploy {deploy.get('id')} ended {status}")
    return status == "live"


def fly_started(machine: Mapping[str, Any], instance_id: str) -> bool:
    """A Fly machine runs its new version: started, at ``instance_id``."""
    if machine.get("state") in ("destroyed", "failed"):
        raise BenchError(f"fly machine {machine.get('id')} is {machine.get('state')}")
    return machine.get("state") == "started" and machine.get("instance_id") == instance_id


def with_image(config: Mapping[str, Any], image: str) -> dict[str, Any]:
    """A machine's config with ``image`` (a Machines API update sends the whole config)."""
    return {**dict(config), "image": image}


def _ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs else None


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """Per target and step: each kind's medians (wall, calls, reads, writes), the shortest
    poll gap over its runs; the per-round ratios opsbook / raw of calls and of wall time and
    their medians; and the verdict on issue 14's waiting rule (opsbook's runs only)."""
    rows: list[dict[str, Any]] = []
    targets = list(dict.fromkeys(r.target for r in runs))
    for target in targets:
        for step in STEPS:
            mine = [r for r in runs if r.target == target and r.step == step]
            if not mine:
                continue
            row: dict[str, Any] = {"target": target, "step": step}
            for kind in KINDS:
                each = [r for r in mine if r.kind == kind]
                if not each:
                    continue
                polls = [r for r in each if r.shortest_poll_s is not None]
                fastest = min(polls, key=lambda r: r.shortest_poll_s or 0.0) if polls else None
                reported = [r.reported_calls for r in each if r.reported_calls is not None]
                row[kind] = {
                    "runs": len(each),
                    "wall_s_median": median([r.wall_s for r in each]),
                    "wall_s": [r.wall_s for r in each],
                    "calls_median": median([r.calls for r in each]),
                    "calls": [r.calls for r in each],
                    "reads_median": median([r.reads for r in each]),
                    "writes_median": median([r.writes for r in each]),
                    "shortest_poll_s": fastest.shortest_poll_s if fastest else None,
                    "shortest_poll_of": fastest.shortest_poll_of if fastest else "",
                    "reported_calls": reported,
                    "api_span_s_median": median([r.api_span_s for r in each]),
                    "operations": mean_operations([r.operations for r in each]),
                }
            ratios: dict[str, Any] = {}
            rounds = sorted({r.round for r in mine})
            for measure in ("calls", "wall_s"):
                each_round = []
                for index in rounds:
                    pair = {r.kind: r for r in mine if r.round == index}
                    if "opsbook" in pair and "raw" in pair:
                        value = _ratio(
                            float(getattr(pair["opsbook"], measure)),
                            float(getattr(pair["raw"], measure)),
                        )
                        if value is not None:
                            each_round.append(value)
                if each_round:
                    ratios[measure] = {"median": median(each_round), "rounds": each_round}
            row["ratios"] = ratios
            rows.append(row)
    polled = [r for r in runs if r.kind == "opsbook" and r.shortest_poll_s is not None]
    fastest = min(polled, key=lambda r: r.shortest_poll_s or 0.0) if polled else None
    gap = fastest.shortest_poll_s if fastest else None
    return {
        "rows": rows,
        "target": f"no resource read again sooner than {POLL_MIN_S:g} s with nothing written "
        "between (waiting never polls faster than once a second, no read repeated)",
        "shortest_poll_s": gap,
        "shortest_poll_at": (
            f"{fastest.target} {fastest.step}, GET {fastest.shortest_poll_of}" if fastest else ""
        ),
        "pass": None if gap is None else gap >= POLL_MIN_S - POLL_SLACK_S,
    }


def mean_operations(runs: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """The mean count of each operation id over runs (0 where a run made none)."""
    total: dict[str, float] = {}
    for ops in runs:
        for name, count in ops.items():
            total[name] = total.get(name, 0.0) + count
    n = max(len(runs), 1)
    return {name: count / n for name, count in total.items()}


def _num(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


def _gap(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _wall(kind: Mapping[str, Any] | None) -> str:
    return "-" if kind is None else f"{kind['wall_s_median']:.2f}"


def _calls(kind: Mapping[str, Any] | None) -> str:
    if kind is None:
        return "-"
    reads, writes = _num(kind["reads_median"]), _num(kind["writes_median"])
    return f"{_num(kind['calls_median'])} ({reads}+{writes})"


def _times(ratios: Mapping[str, Any], name: str) -> str:
    if name not in ratios:
        return "-"
    value = ratios[name]["median"]
    return f"{value:.0f}x" if value >= 100 else f"{value:.2f}x"


def render(summary: Mapping[str, Any]) -> str:
    """The measured table (markdown) and the verdict."""
    lines = [
        "| target | step | opsbook wall s | raw wall s | time opsbook/raw "
        "| opsbook calls (reads+writes) | raw calls (reads+writes) | calls opsbook/raw "
        "| shortest poll gap s, opsbook / raw |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        ours, raw, ratios = row.get("opsbook"), row.get("raw"), row["ratios"]
        gaps = (
            f"{_gap(ours['shortest_poll_s'] if ours else None)} / "
            f"{_gap(raw['shortest_poll_s'] if raw else None)}"
        )
        lines.append(
            f"| {row['target']} | {row['step']} | {_wall(ours)} | {_wall(raw)} "
            f"| {_times(ratios, 'wall_s')} | {_calls(ours)} | {_calls(raw)} "
            f"| {_times(ratios, 'calls')} | {gaps} |"
        )
    passed = summary["pass"]
    verdict = "n/a" if passed is None else ("pass" if passed else "miss")
    fastest = summary["shortest_poll_s"]
    where = f" ({summary['shortest_poll_at']})" if summary.get("shortest_poll_at") else ""
    lines += [
        "",
        f"{verdict}: {summary['target']}; opsbook's shortest: {_gap(fastest)} s{where}",
    ]
    return "\n".join(lines)


def render_details(summary: Mapping[str, Any]) -> str:
    """Per target and step: the runs' wall times and calls, and the calls by operation id
    (mean per run) - where opsbook's calls go."""
    lines: list[str] = []
    for row in summary["rows"]:
        for kind in KINDS:
            k = row.get(kind)
            if k is None:
                continue
            walls = " ".join(f"{w:.2f}" for w in k["wall_s"])
            calls = " ".join(str(c) for c in k["calls"])
            own = k["reported_calls"]
            reported = f"; its report: {' '.join(str(c) for c in own)}" if own else ""
            poll = (
                f"; shortest GET gap {k['shortest_poll_s']:.2f} s ({k['shortest_poll_of']})"
                if k["shortest_poll_s"] is not None
                else ""
            )
            span = f"; first API call to last answer {k['api_span_s_median']:.2f} s (median)"
            lines.append(
                f"{row['target']} {row['step']} {kind}: wall {walls} s{span}; calls {calls}"
                f"{reported}{poll}"
            )
            ops = ", ".join(f"{name} {_num(n)}" for name, n in k["operations"].items())
            lines.append(f"    {ops}")
    return "\n".join(lines)


# --------------------------------------------------------------------- stand-ins that take time


class TimedVercel(VercelStandin):
    """VercelStandin whose builds last ``build_s`` seconds of wall clock: a GET of a building
    deployment finds it READY only once that long has passed since it was created."""

    def __init__(self, build_s: float, **kwargs: Any) -> None:
        self.build_s = build_s
        self._born: dict[str, float] = {}
        super().__init__(build_polls=0, **kwargs)

    def _new(self, dpl_id: str | None, **kwargs: Any) -> dict[str, Any]:
        record = super()._new(dpl_id, **kwargs)
        self._born[record["id"]] = time.monotonic()
        return record

    def _get_deployment(self, call: Any) -> tuple[Any, ...]:
        record = self._find(call.params.get("idOrUrl") or "")
        if record is not None and record["state"] in BUILDING:
            young = time.monotonic() - self._born.get(record["id"], 0.0) < self.build_s
            record["polls_left"] = 1 if young else 0
        return super()._get_deployment(call)


class TimedRender(RenderStandin):
    """RenderStandin whose deploys go live ``build_s`` seconds after they were made (a
    rollback, which builds nothing: ``start_s``), however often they are read."""

    def __init__(self, build_s: float, start_s: float, **kwargs: Any) -> None:
        self.build_s = build_s
        self.start_s = start_s
        self._born: dict[str, float] = {}
        super().__init__(build_polls=0, **kwargs)

    def _new_deploy(self, source: str, *, trigger: str, **kwargs: Any) -> dict[str, Any]:
        deploy = super()._new_deploy(source, trigger=trigger, **kwargs)
        self._born[deploy["id"]] = time.monotonic()
        return deploy

    def _advance(self) -> None:
        now = time.monotonic()
        for deploy in self.deploys:
            if deploy["status"] in ("build_in_progress", "update_in_progress", "queued"):
                takes = self.start_s if deploy["trigger"] == "rollback" else self.build_s
                # RenderStandin._advance counts this read: at 0 it stays pending, at 1 it is live
                young = now - self._born.get(deploy["id"], 0.0) < takes
                deploy["_reads"] = -1 if young else 0
        super()._advance()


def stamp_requests(standin: PlatformStandin) -> list[Request]:
    """Every request that reaches ``standin`` from now on, stamped as it arrives."""
    stamped: list[Request] = []
    serve = standin.server._serve

    def record(request: Any) -> None:
        seen = Request(time.monotonic(), request.command, urlsplit(request.path).path)
        stamped.append(seen)
        try:
            serve(request)
        finally:
            seen.ended = time.monotonic()

    standin.server._serve = record  # type: ignore[method-assign]
    return stamped


# ------------------------------------------------------------------------------ the raw script


class RawApi:
    """A team's minimal client: urllib, Bearer token, JSON in and out."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> Any:
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise BenchError(f"raw {method} {path}: {exc.code} {detail}") from None
        return json.loads(raw) if raw else None


def poll_until(
    read: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    every_s: float = RAW_POLL_S,
    timeout_s: float = RAW_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Sleep ``every_s``, read(), until done(answer); the last answer. BenchError when it
    is not done within ``timeout_s``."""
    started = clock()
    while True:
        sleep(every_s)
        answer = read()
        if done(answer):
            return answer
        if clock() - started > timeout_s:
            raise BenchError(f"the raw script gave up waiting after {timeout_s:g} s")


def curl_health(app_url: str) -> None:
    """One GET of <app>/health; it must answer 200."""
    try:
        with urllib.request.urlopen(f"{app_url}/health", timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 200:
        raise BenchError(f"raw script: {app_url}/health answered {status}")


# ----------------------------------------------------------------------------------- targets


def app_version(app_url: str, instance: str | None = None) -> str:
    headers = {INSTANCE_HEADER: instance} if instance else {}
    request = urllib.request.Request(f"{app_url}/api/version", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.loads(response.read()).get("version"))
    except urllib.error.HTTPError as exc:
        return f"(HTTP {exc.code})"


class Target:
    """One platform: its stand-in, what a deploy takes, the raw script, what is served."""

    name = ""
    standin: PlatformStandin

    def inventory_vars(self) -> dict[str, Any]:
        raise NotImplementedError

    def source(self, version: str) -> str:
        """Register what builds ``version`` on the platform (not timed); the app_source."""
        raise NotImplementedError

    def current(self) -> Any:
        """What serves now, as the raw rollback is told it."""
        raise NotImplementedError

    def raw_deploy(self, source: str) -> None:
        raise NotImplementedError

    def raw_rollback(self, to: Any) -> None:
        raise NotImplementedError

    def served(self) -> dict[str, str]:
        """Where -> the version it serves, by the stand-in's state and over HTTP."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """What is wrong with the stand-in's state whatever ran (document mismatches...)."""
        return [f"mismatch: {m}" for m in self.standin.mismatches]


class Vercel(Target):
    name = "vercel"

    def __init__(self, build_s: float) -> None:
        self.standin = self.vercel = TimedVercel(build_s)
        self.vercel.add_production(version=SEED_VERSION, sha=commit_of(SEED_VERSION))
        self.api = RawApi(self.vercel.url, self.vercel.token)

    def inventory_vars(self) -> dict[str, Any]:
        return {
            "vercel_api_url": self.vercel.url,
            "vercel_token": self.vercel.token,
            "vercel_project": self.vercel.project_name,
        }

    def source(self, version: str) -> str:
        return self.vercel.add_preview(version=version, sha=commit_of(version))

    def current(self) -> Any:
        return self.vercel.production

    def raw_deploy(self, source: str) -> None:
        project = self.vercel.project_name
        created = self.api.call(
            "POST", "/v13/deployments", query={"forceNew": "1"},
            body={"name": project, "project": project, "deploymentId": source,
                  "target": "production"},
        )  # fmt: skip
        dpl = created["id"]
        ready = poll_until(lambda: self.api.call("GET", f"/v13/deployments/{dpl}"), vercel_ready)
        if ready.get("readySubstate") == "STAGED":
            # after an Instant Rollback Vercel assigns production to no new deployment until
            # one is promoted
            self.api.call("POST", f"/v10/projects/{project}/promote/{dpl}")
        curl_health(self.vercel.app.url)

    def raw_rollback(self, to: Any) -> None:
        self.api.call("POST", f"/v1/projects/{self.vercel.project_name}/rollback/{to}")
        curl_health(self.vercel.app.url)

    def served(self) -> dict[str, str]:
        return {
            "production (stand-in)": str(self.vercel.serving_version()),
            "app /api/version": app_version(self.vercel.app.url),
        }


class Render(Target):
    name = "render"

    def __init__(self, build_s: float, start_s: float) -> None:
        self.standin = self.render = TimedRender(build_s, start_s)
        self.render.add_commit(commit_of(SEED_VERSION), SEED_VERSION)
        self.render.seed_live(commit_of(SEED_VERSION))
        self.api = RawApi(self.render.url + "/v1", self.render.token)

    def inventory_vars(self) -> dict[str, Any]:
        return {
            "render_api_url": self.render.url + "/v1",
            "render_api_key": self.render.token,
            "render_service_id": self.render.service_id,
        }

    def source(self, version: str) -> str:
        return self.render.add_commit(commit_of(version), version)

    def current(self) -> Any:
        live = self.render.live_deploy
        return live["id"] if live else None

    def _wait_live(self, deploy_id: str) -> None:
        service = self.render.service_id
        poll_until(
            lambda: self.api.call("GET", f"/services/{service}/deploys/{deploy_id}"), render_live
        )

    def raw_deploy(self, source: str) -> None:
        service = self.render.service_id
        deploy = self.api.call("POST", f"/services/{service}/deploys", body={"commitId": source})
        self._wait_live(deploy["id"])
        curl_health(self.render.app.url)

    def raw_rollback(self, to: Any) -> None:
        service = self.render.service_id
        deploy = self.api.call("POST", f"/services/{service}/rollback", body={"deployId": to})
        self._wait_live(deploy["id"])
        curl_health(self.render.app.url)

    def served(self) -> dict[str, str]:
        return {
            "live deploy (stand-in)": str(self.render.served_version),
            "app /api/version": app_version(self.render.app.url),
        }


class Fly(Target):
    name = "fly"

    def __init__(self, start_s: float, machines: int) -> None:
        self.standin = self.fly = FlyStandin(start_delay_s=start_s)
        for _ in range(machines):
            self.fly.add_machine(self.image(SEED_VERSION))
        deadline = time.monotonic() + start_s + 10
        while any(m["state"] != "started" for m in self.fly.machines.values()):
            if time.monotonic() > deadline:
                raise BenchError("the Fly stand-in's machines did not start")
            time.sleep(0.05)
        self.api = RawApi(self.fly.url + "/v1", self.fly.token)

    def image(self, version: str) -> str:
        return f"registry.fly.io/{self.fly.app_name}:{version}"

    def inventory_vars(self) -> dict[str, Any]:
        return {
            "fly_api_url": self.fly.url + "/v1",
            "fly_api_token": self.fly.token,
            "fly_app": self.fly.app_name,
        }

    def source(self, version: str) -> str:
        return self.image(version)

    def current(self) -> Any:
        return {machine: self.fly.image(machine) for machine in self.fly.alive()}

    def _roll(self, image_of: Callable[[str], str]) -> None:
        """Machine after machine: update its config's image, poll until it runs it."""
        app = self.fly.app_name
        machines = self.api.call("GET", f"/apps/{app}/machines")
        for machine in sorted(machines, key=lambda m: (m["created_at"], m["id"])):
            path = f"/apps/{app}/machines/{machine['id']}"
            body = {"config": with_image(machine["config"], image_of(machine["id"]))}
            updated = self.api.call("POST", path, body=body)
            instance = updated["instance_id"]
            poll_until(
                lambda p=path: self.api.call("GET", p),
                lambda m, i=instance: fly_started(m, i),
            )
        curl_health(self.fly.app.url)

    def raw_deploy(self, source: str) -> None:
        self._roll(lambda _machine: source)

    def raw_rollback(self, to: Any) -> None:
        self._roll(lambda machine: to[machine])

    def served(self) -> dict[str, str]:
        served: dict[str, str] = {}
        for machine in self.fly.alive():
            served[f"{machine} (stand-in)"] = self.fly.version_of(self.fly.image(machine))
            served[f"{machine} /api/version"] = app_version(self.fly.app.url, machine)
        return served

    def problems(self) -> list[str]:
        found = super().problems()
        if self.fly.leases:
            found.append(f"leases left on {sorted(self.fly.leases)}")
        found += self.fly.lease_violations
        return found


# ------------------------------------------------------------------------------ the benchmark


@dataclass
class PlatformBench:
    targets: Sequence[str]
    rounds: int
    build_s: float
    start_s: float
    machines: int
    keep: bool
    runs: list[Run] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="opsbook-bench-plat-")))

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def make(self, name: str) -> Target:
        if name == "vercel":
            return Vercel(self.build_s)
        if name == "render":
            return Render(self.build_s, self.start_s)
        return Fly(self.start_s, self.machines)

    def playbook(self, work: Path, name: str, inventory: Path, extravars: Mapping[str, Any]) -> int:
        """ansible-playbook playbooks/<name>.yml; its report's api_calls. BenchError with the
        output's tail when it fails or its report does not say it succeeded."""
        vars_file = work / "extravars.json"
        vars_file.write_text(json.dumps(dict(extravars)))
        oplog = work / "oplog.jsonl"
        argv = [str(VENV_BIN / "ansible-playbook"), f"playbooks/{name}.yml", "-i", str(inventory),
                "-e", f"@{vars_file}"]  # fmt: skip
        done = subprocess.run(
            argv, cwd=ROOT, env=ansible_env(oplog), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S, check=False,
        )  # fmt: skip
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
        if done.returncode != 0:
            raise BenchError(
                f"{name}.yml {dict(extravars)} failed (exit {done.returncode}):\n{tail}"
            )
        record = json.loads(oplog.read_text().splitlines()[-1])
        report = (record.get("outputs") or {}).get(name) or {}
        ok = report.get("status") == "succeeded" if name == "deploy" else report.get("ok") is True
        if not ok:
            raise BenchError(f"{name}.yml did not succeed by its own report: {report}\n{tail}")
        return int(report.get("api_calls") or 0)

    def check(self, target: Target, what: str, version: str) -> None:
        served = target.served()
        wrong = {where: v for where, v in served.items() if v != version}
        problems = target.problems()
        if wrong or problems:
            raise BenchError(
                f"{target.name} {what}: expected {version} everywhere, served {served}"
                + (f"; {'; '.join(problems)}" if problems else "")
            )

    def measure(
        self, target: Target, stamps: list[Request], kind: str, step: str, index: int,
        work: Callable[[], int | None],
    ) -> Run:  # fmt: skip
        standin = target.standin
        calls_before, requests_before = standin.api_calls, len(stamps)
        handled_before = len(standin.server.calls)
        started = time.monotonic()
        reported = work()
        wall = time.monotonic() - started
        handled = standin.server.calls[handled_before:]
        reads, writes, by = tally((c.method, c.operation_id) for c in handled)
        gap, of = shortest_poll(stamps[requests_before:])
        span = api_span(stamps[requests_before:])
        run = Run(target.name, kind, step, index, wall, standin.api_calls - calls_before,
                  reads, writes, by, gap, of, reported, span)  # fmt: skip
        self.log(
            f"{target.name:<6} round {index + 1} {kind:<7} {step:<8} {wall:6.2f} s, "
            f"{run.calls} calls ({reads} reads, {writes} writes), shortest GET gap "
            f"{_gap(gap)} s" + (f", its report {reported} calls" if reported is not None else "")
        )
        return run

    def pair(self, name: str, kind: str, index: int, version: str) -> None:
        """On a stand-in of its own: the first deploy (BASE_VERSION, not measured), then a
        deploy of ``version`` and the rollback after it, by ``kind``, each checked."""
        target = self.make(name)
        try:
            stamps = stamp_requests(target.standin)
            work = self.dir / name
            work.mkdir(parents=True, exist_ok=True)
            inventory = platform_inventory(
                work, name, target.standin.app.url, target.inventory_vars()
            )
            self.check(target, "as started", SEED_VERSION)
            first = target.source(BASE_VERSION)
            if kind == "opsbook":
                self.playbook(
                    work, "deploy", inventory, {"app_version": BASE_VERSION, "app_source": first}
                )
            else:
                target.raw_deploy(first)
            self.check(target, f"{kind} first deploy of {BASE_VERSION}", BASE_VERSION)
            source = target.source(version)
            before = target.current()
            if kind == "opsbook":
                deploy: Callable[[], int | None] = lambda: self.playbook(  # noqa: E731
                    work, "deploy", inventory, {"app_version": version, "app_source": source}
                )
                rollback: Callable[[], int | None] = lambda: self.playbook(  # noqa: E731
                    work, "rollback", inventory, {}
                )
            else:
                deploy = lambda: target.raw_deploy(source)  # noqa: E731
                rollback = lambda: target.raw_rollback(before)  # noqa: E731
            self.runs.append(self.measure(target, stamps, kind, "deploy", index, deploy))
            self.check(target, f"{kind} deploy of {version}", version)
            self.runs.append(self.measure(target, stamps, kind, "rollback", index, rollback))
            self.check(target, f"{kind} rollback after {version}", BASE_VERSION)
        finally:
            target.standin.close()

    def run_target(self, name: str) -> None:
        for index in range(self.rounds):
            versions = versions_of(index)
            for kind in round_order(index):
                self.pair(name, kind, index, versions[kind])

    def run(self) -> None:
        for name in self.targets:
            self.run_target(name)

    def close(self) -> None:
        if self.keep:
            self.log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="default vercel,render,fly")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--build-s", type=float, default=10.0,
        help="seconds a Vercel or Render build takes (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--start-s", type=float, default=3.0,
        help="seconds a Fly machine takes to start, a Render rollback to go live (default 3)",
    )  # fmt: skip
    parser.add_argument("--machines", type=int, default=4, help="Fly machines (default 4)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets or args.rounds < 1 or args.machines < 1:
        parser.error(f"--targets among {','.join(TARGETS)}, --rounds and --machines at least 1")
    bench = PlatformBench(
        targets, args.rounds, args.build_s, args.start_s, args.machines, args.keep
    )
    # a SIGTERM ends the run as Ctrl-C does: the stand-in closed, the work directory removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        bench.run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    summary = summarize(bench.runs)
    print(render(summary))
    print()
    print(render_details(summary))
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if args.json:
        figures = {
            "targets": targets,
            "rounds": args.rounds,
            "build_s": args.build_s,
            "start_s": args.start_s,
            "machines": args.machines,
            "runs": [asdict(r) for r in bench.runs],
            "summary": summary,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
