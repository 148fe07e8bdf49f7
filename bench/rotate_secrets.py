#!/usr/bin/env python3
"""Benchmark: rotating JWT_SECRET with rotate_secrets.yml, side by side with a deploy to the same
hosts (issue 13's performance target) and with the manual rotation of the runbooks.

    .venv/bin/python bench/rotate_secrets.py [--hosts 4] [--rounds 3] [--json out.json] [--keep]

Starts N real sshd app hosts on 127.0.10.101.. (the opsbook lab: the sample app serving from
<deploy_root>/current, one set of secrets in every host's shared/.env), deploys a first release
(not measured), then runs --rounds rounds of three runs, in an order that rotates each round:

  deploy    ansible-playbook playbooks/deploy.yml of a new release (built before, not timed) to
            the N hosts: canary 1, then batches of 50%, the deploy's defaults
  rotation  ansible-playbook playbooks/rotate_secrets.yml -e secrets=jwt on the same hosts and
            inventory (opsbook_secrets {jwt: {store: env_file, test_path: /api/me}}): lock, read,
            generate, stage, set with a rolling restart behind the health gate (the same serial
            batches), test, finish
  manual    what users would do instead, as one shell loop: `openssl rand -base64 32`, then host
            after host `ssh` (the lab's key and options) to rewrite JWT_SECRET in shared/.env and
            restart the app, and `curl /health` until it answers (no lock, no grace period for the
            old tokens, no test, no journal)

timing each run's wall clock and CPU (as bench/deploy_rollback.py does: the machine's busy time,
and of it ansible-playbook's own process tree). After every run the bench checks that it was
real: after a deploy every host serves the new version; after a rotation, opsbook's or the manual
one, every host's env file holds one new JWT_SECRET (the same on every host, none of the values
it held before, no JWT_SECRET_PENDING left) and its app signs with it (a token from /api/login of
every host verifies with that value).

The ratios rotation/deploy and rotation/manual are taken within each round and their median
reported (this machine is shared and noisy); issue 13's target is rotation <= 1.0x deploy. Where
the playbooks' time goes: every stdout line is stamped as it arrives, and each task's time is from
its banner to the next one (what profile_tasks measures), summed over a run's serial batches,
then the mean over the rounds; --top tasks of each playbook are printed, and all in --json.

A manual rotation leaves rotate_secrets' journal naming a value no host holds any more (the run
after it refuses, as it should: the journal's current value is on no app host), so after each
manual run the bench removes the journal of jwt (not timed): the next rotation starts from what
the hosts hold, as a first rotation does.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.deploy_rollback import (
    MANUAL_RESTART,
    Bench,
    BenchError,
    Measured,
    health_wait_shell,
    median,
)
from opsbook.lab.sampleapp import build_release

FIRST_ADDRESS = 101  # 127.0.10.101.. (deploy_rollback uses .61-.79, runbooks .81-.84)
KINDS = ("deploy", "rotation", "manual")
SECRET = "jwt"
ENV_VAR = "JWT_SECRET"
SECRETS = {SECRET: {"store": "env_file", "test_path": "/api/me"}}
# Issue 13: the rotation of JWT_SECRET on 4 hosts costs no more than a deploy to them.
ROTATION_VS_DEPLOY_MAX = 1.0
WORDS = {
    "deploy": "`deploy.yml` (a new release)",
    "rotation": "`rotate_secrets.yml -e secrets=jwt`",
    "manual": "manual: `openssl rand` + ssh (rewrite .env, restart) + curl /health, host by host",
}
BANNER = re.compile(r"^(PLAY|TASK|RUNNING HANDLER) \[(.*)\] \**\s*$")
RECAP = re.compile(r"^PLAY RECAP \**\s*$")
START, END = "(start-up: config, inventory, playbook)", "(recap and exit)"


# ------------------------------------------------------------------------------- pure helpers


def round_order(index: int, kinds: Sequence[str] = KINDS) -> list[str]:
    """The kinds in the order of round index (0-based): each round starts one later."""
    shift = index % len(kinds)
    return [*kinds[shift:], *kinds[:shift]]


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hs256_signed_by(token: str, secret: str) -> bool:
    """True when the compact JWT token carries an HS256 signature made with secret."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        return False
    expected = hmac.new(
        secret.encode("utf-8"), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
    ).digest()
    return hmac.compare_digest(signature, expected)


def rotation_problems(
    before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]], var: str
) -> list[str]:
    """What is wrong with the hosts' env files after a rotation of var (no values in the text):
    every host must hold one value, the same on every host, none of the values any host held
    before (current or previous), and no <var>_PENDING."""
    problems: list[str] = []
    values = {host: env.get(var) for host, env in after.items()}
    missing = sorted(host for host, value in values.items() if not value)
    if missing:
        problems.append(f"{var} missing on {', '.join(missing)}")
    held = {value for value in values.values() if value}
    if len(held) > 1:
        problems.append(f"the hosts hold {len(held)} different {var} values")
    old = {env.get(key) for env in before.values() for key in (var, f"{var}_PREVIOUS")}
    stale = sorted(host for host, value in values.items() if value and value in old)
    if stale:
        problems.append(f"{var} not changed on {', '.join(stale)}")
    pending = sorted(host for host, env in after.items() if f"{var}_PENDING" in env)
    if pending:
        problems.append(f"{var}_PENDING left on {', '.join(pending)}")
    return problems


@dataclass
class HostRow:
    """What the manual loop needs of one host."""

    login: str  # user@address
    port: int
    known_hosts: str
    deploy_root: str
    base_url: str


def remote_rotation(var: str = ENV_VAR) -> str:
    """The command run on each host: the new value read from stdin (never on a command line),
    var's line of shared/.env rewritten in place (sed -i keeps the file's mode), the app
    restarted as bench/deploy_rollback.py's manual rollback restarts it."""
    return (
        f'IFS= read -r new && sed -i "s|^{var}=.*|{var}=$new|" shared/.env '
        f"&& grep -q '^{var}=' shared/.env && {MANUAL_RESTART}"
    )


def manual_script(rows: Sequence[HostRow], key: str, ssh_options: Sequence[str]) -> str:
    """The runbooks' rotation of JWT_SECRET as a bash loop: one value from `openssl rand -base64
    32`, then host after host: ssh (the key and options given, each host's port and known_hosts)
    to rewrite the env file and restart the app, and curl /health until it answers."""
    options = " ".join(shlex.quote(o) for o in ssh_options)
    hosts = "\n".join(
        " ".join(
            shlex.quote(str(v)) for v in (r.login, r.port, r.known_hosts, r.deploy_root, r.base_url)
        )
        for r in rows
    )
    return f"""set -eu
secret=$(openssl rand -base64 32)
remote={shlex.quote(remote_rotation())}
while read -r login port known root base; do
  printf '%s\\n' "$secret" | ssh -i {shlex.quote(key)} -p "$port" {options} \\
    -o UserKnownHostsFile="$known" "$login" "cd '$root' && $remote"
  {health_wait_shell("$base")}
  curl -fsS "$base/health" >/dev/null || {{ echo "$base/health does not answer" >&2; exit 1; }}
done <<'HOSTS'
{hosts}
HOSTS
"""


def common_ssh_options(argv: Sequence[str]) -> list[str]:
    """The options of an SshHost.ssh_command() argv that are the same for every host: without
    ssh itself, -i KEY, -p PORT, -o UserKnownHostsFile=... and the final user@address."""
    options: list[str] = []
    args = list(argv[1:-1])
    i = 0
    while i < len(args):
        if args[i] in ("-i", "-p"):
            i += 2
            continue
        if args[i] == "-o" and args[i + 1].startswith("UserKnownHostsFile="):
            i += 2
            continue
        options.append(args[i])
        i += 1
    return options


@dataclass
class TaskTime:
    play: str
    task: str
    seconds: float
    count: int = 1


def task_times(
    stamped: Sequence[tuple[float, str]], started: float, ended: float
) -> list[TaskTime]:
    """Per-task wall time of one ansible-playbook run from its stamped stdout lines (monotonic
    time each line arrived): each banner (PLAY, TASK, RUNNING HANDLER) lasts until the next one
    or the recap; a play banner's own time is its set-up ("(play start)"); the same task run in
    several serial batches is summed (count = how many times). First the start-up (process
    start to the first banner), last the recap and exit. In the order first seen."""
    times: dict[tuple[str, str], TaskTime] = {}

    def add(play: str, task: str, seconds: float) -> None:
        entry = times.setdefault((play, task), TaskTime(play, task, 0.0, 0))
        entry.seconds += max(seconds, 0.0)
        entry.count += 1

    play = ""
    open_: tuple[str, str] | None = ("", START)
    opened = started
    for stamp, line in stamped:
        banner, recap = BANNER.match(line.rstrip("\n")), RECAP.match(line.rstrip("\n"))
        if not banner and not recap:
            continue
        if open_ is not None:
            add(*open_, stamp - opened)
        if recap:
            open_, opened = ("", END), stamp
            continue
        kind, name = banner.group(1), banner.group(2)  # type: ignore[union-attr]
        if kind == "PLAY":
            play = name
            open_ = (play, "(play start)")
        else:
            open_ = (play, name if kind == "TASK" else f"handler: {name}")
        opened = stamp
    if open_ is not None:
        add(*open_, ended - opened)
    return list(times.values())


def mean_task_times(runs: Sequence[Sequence[TaskTime]]) -> list[TaskTime]:
    """The mean over runs of each (play, task)'s time (0 in a run where it did not appear);
    count is the mean count rounded. In the order first seen."""
    total: dict[tuple[str, str], TaskTime] = {}
    for run in runs:
        for t in run:
            entry = total.setdefault((t.play, t.task), TaskTime(t.play, t.task, 0.0, 0))
            entry.seconds += t.seconds
            entry.count += t.count
    n = max(len(runs), 1)
    return [TaskTime(t.play, t.task, t.seconds / n, round(t.count / n)) for t in total.values()]


def play_totals(times: Sequence[TaskTime]) -> list[tuple[str, float, int]]:
    """(play, seconds, tasks) per play in order (the start-up and recap are play "")."""
    totals: dict[str, list[float]] = {}
    for t in times:
        entry = totals.setdefault(t.play, [0.0, 0])
        entry[0] += t.seconds
        if not t.task.startswith("("):
            entry[1] += 1
    return [(play, seconds, int(tasks)) for play, (seconds, tasks) in totals.items()]


def summarize(
    measured: Sequence[Measured], rounds: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Medians per kind, the per-round ratios and their medians, issue 13's verdict."""
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        runs = [m for m in measured if m.step == kind]
        if runs:
            kinds[kind] = {
                "runs": len(runs),
                "wall_s_median": median([m.wall_s for m in runs]),
                "wall_s": [m.wall_s for m in runs],
                "cpu_s_median": median([m.cpu_s for m in runs]),
                "cpu_controller_s_median": median([m.cpu_controller_s for m in runs]),
            }
    ratios: dict[str, Any] = {}
    for other in ("deploy", "manual"):
        each = [r["rotation"] / r[other] for r in rounds if "rotation" in r and r.get(other)]
        if each:
            ratios[f"rotation/{other}"] = {"median": median(each), "rounds": each}
    vs_deploy = ratios.get("rotation/deploy", {}).get("median")
    return {
        "kinds": kinds,
        "ratios": ratios,
        "target": f"rotation <= {ROTATION_VS_DEPLOY_MAX:.1f}x deploy",
        "pass": None if vs_deploy is None else vs_deploy <= ROTATION_VS_DEPLOY_MAX,
    }


def render(summary: Mapping[str, Any], hosts: int) -> str:
    lines = [
        f"| {hosts} hosts | runs | wall s median | wall s each | CPU s median "
        "| of which the controller's tree |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for kind, k in summary["kinds"].items():
        lines.append(
            f"| {WORDS[kind]} | {k['runs']} | {k['wall_s_median']:.2f} "
            f"| {' '.join(f'{w:.2f}' for w in k['wall_s'])} | {k['cpu_s_median']:.2f} "
            f"| {k['cpu_controller_s_median']:.2f} |"
        )
    lines += ["", "| ratio | median of the rounds' ratios | each round |", "|---|---:|---|"]
    for name, r in summary["ratios"].items():
        each = " ".join(f"{v:.2f}" for v in r["rounds"])
        lines.append(f"| {name} | {r['median']:.2f}x | {each} |")
    passed = summary["pass"]
    verdict = "n/a" if passed is None else ("pass" if passed else "miss")
    lines += ["", f"{verdict}: {summary['target']}"]
    return "\n".join(lines)


def render_task_times(name: str, times: Sequence[TaskTime], top: int) -> str:
    total = sum(t.seconds for t in times)
    lines = [f"{name}: {total:.2f} s per run (mean of the rounds), by play:"]
    for play, seconds, tasks in play_totals(times):
        lines.append(f"  {seconds:6.2f} s  {tasks:>2} tasks  {play or '(outside the plays)'}")
    lines.append(f"  slowest {top} tasks:")
    for t in sorted(times, key=lambda t: -t.seconds)[:top]:
        runs = f" x{t.count}" if t.count > 1 else ""
        lines.append(f"  {t.seconds:6.2f} s  {t.task}{runs}   [{t.play or '-'}]")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the benchmark


def login_token(base_url: str, user: str = "bench") -> str:
    request = urllib.request.Request(
        f"{base_url}/api/login",
        data=json.dumps({"user": user}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["token"])


class RotationBench(Bench):
    def __init__(self, n: int, rounds: int, keep: bool) -> None:
        super().__init__([n], keep, repeat=0, first_address=FIRST_ADDRESS,
                         prefix="opsbook-bench-rotate-")  # fmt: skip
        self.n = n
        self.rounds = rounds
        self.measured: list[Measured] = []
        self.round_walls: list[dict[str, float]] = []
        self.stamps: dict[str, list[list[TaskTime]]] = {"deploy": [], "rotation": []}
        self.release = 0

    def run_stamped(self, name: str, inventory: Path, extravars: dict[str, Any]) -> None:
        """ansible-playbook as Bench.playbook runs it, each stdout line stamped on arrival."""
        argv, env = self.playbook_command(name, inventory, extravars)
        # Ansible's defaults, made explicit: every task banner printed when the task starts (the
        # default callback defers it to the first shown result when ok or skipped hosts are hidden)
        env.update(ANSIBLE_DISPLAY_OK_HOSTS="true", ANSIBLE_DISPLAY_SKIPPED_HOSTS="true")
        stamped: list[tuple[float, str]] = []
        started = time.monotonic()
        with subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                stamped.append((time.monotonic(), line))
        ended = time.monotonic()
        if proc.returncode != 0:
            tail = "".join(line for _, line in stamped[-30:])
            raise BenchError(f"{name} {extravars} failed (exit {proc.returncode}):\n{tail}")
        kind = "rotation" if name == "rotate_secrets" else name
        self.stamps[kind].append(task_times(stamped, started, ended))

    def next_release(self) -> dict[str, str]:
        self.release += 1
        version = f"{self.n}.{self.release}.0"
        return {
            "app_version": version,
            "app_artifact": str(build_release(version, self.dir / "artifacts")),
        }

    def envs(self) -> dict[str, dict[str, str]]:
        return {h.name: h.read_env() for h in self.hosts}

    def check_rotated(self, kind: str, before: dict[str, dict[str, str]]) -> None:
        after = self.envs()
        problems = rotation_problems(before, after, ENV_VAR)
        value = after[self.hosts[0].name].get(ENV_VAR) or ""
        for host in self.hosts:
            if not problems and not hs256_signed_by(login_token(host.base_url), value):
                problems.append(f"{host.name}'s app does not sign with the new {ENV_VAR}")
        if problems:
            raise BenchError(f"{kind}: {'; '.join(problems)}")

    def manual(self, script: str) -> None:
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"the manual rotation failed (exit {done.returncode}): {done.stderr}")

    def clear_journal(self) -> None:
        for entry in (self.dir / "state" / "secrets").glob(f"*/{SECRET}.json"):
            entry.unlink()

    def manual_script(self) -> str:
        rows = [
            HostRow(
                f"{h.user}@{h.address}",
                h.port,
                str(h.known_hosts_file),
                str(h.deploy_root),
                h.base_url,
            )
            for h in self.hosts
        ]
        first = self.hosts[0]
        return manual_script(
            rows, str(first.key.private_key), common_ssh_options(first.ssh_command())
        )

    def measure_kind(self, kind: str, inventory: Path, script: str) -> Measured:
        """One timed run of kind, then the check that it did what it says."""
        if kind == "deploy":
            release = self.next_release()
            work = partial(self.run_stamped, "deploy", inventory, release)
            measured = self.timed(self.n, kind, work)
            served = {h.version() for h in self.hosts}
            if served != {release["app_version"]}:
                raise BenchError(f"after the deploy the hosts serve {served}")
            return measured
        before = self.envs()
        if kind == "rotation":
            work = partial(self.run_stamped, "rotate_secrets", inventory, {"secrets": SECRET})
        else:
            work = partial(self.manual, script)
        measured = self.timed(self.n, kind, work)
        self.check_rotated(kind, before)
        if kind == "manual":
            self.clear_journal()
        return measured

    def run(self) -> None:
        inventory = self.inventory(self.n, {"opsbook_secrets": SECRETS})
        self.log(f"{self.n} host(s): first deploy (not measured)")
        self.playbook("deploy", inventory, self.next_release())
        script = self.manual_script()
        for index in range(self.rounds):
            walls: dict[str, float] = {}
            for kind in round_order(index):
                self.measured.append(self.measure_kind(kind, inventory, script))
                walls[kind] = self.measured[-1].wall_s
            self.round_walls.append(walls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=4, help="app hosts (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--top", type=int, default=12, help="slowest tasks shown (default 12)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' directory")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 19 or args.rounds < 1:
        parser.error("--hosts between 1 and 19 (127.0.10.101-119), --rounds at least 1")
    bench = RotationBench(args.hosts, args.rounds, args.keep)
    try:
        bench.start()
        bench.run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.stop()
    summary = summarize(bench.measured, bench.round_walls)
    profiles = {kind: mean_task_times(runs) for kind, runs in bench.stamps.items()}
    print(render(summary, args.hosts))
    for kind, name in (("rotation", "rotate_secrets.yml"), ("deploy", "deploy.yml")):
        print()
        print(render_task_times(name, profiles[kind], args.top))
    if args.json:
        figures = {
            "hosts": args.hosts,
            "rounds": args.rounds,
            "measured": [
                {"round": i // len(KINDS) + 1, **asdict(m)} for i, m in enumerate(bench.measured)
            ],
            "summary": summary,
            "task_times": {k: [asdict(t) for t in v] for k, v in profiles.items()},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
