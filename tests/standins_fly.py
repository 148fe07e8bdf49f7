"""Fly.io's Machines API played by a local server (tests/platform_standin.py), every request and
answer judged by tests/platform_api/fly.openapi.json.

    with FlyStandin() as fly:
        m1 = fly.add_machine("registry.fly.io/opsbook-app:1.0.0")
        fly.versions_broken.add("1.2.0")          # machines on 1.2.0 answer /health 500
        ... the code under test calls fly.url with fly.token for app fly.app_name ...
        assert fly.machines[m1]["config"]["image"].endswith(":1.0.0")
        assert fly.leases == {} and fly.lease_violations == [] and fly.mismatches == []

State a test can assert on: ``machines`` (id -> the Machine object as Fly returns it, destroyed
ones kept with state ``destroyed``), ``leases`` (id -> Lease held), ``secrets`` (name ->
{value, digest, ...}), ``secrets_version``, ``booted`` (id -> the secrets a machine booted
with), ``booted_env`` (id -> the env its app runs with), ``cordoned``, ``lease_violations``
(an update or release without the lease's nonce).

Behaviour (Fly's document and docs; where they are silent, said here):
- A machine boots (``app.serve``) when created or updated: its version is the one registered
  for its image (``add_image``), else the image's tag; unhealthy when in ``versions_broken``;
  in maintenance when ``MAINTENANCE_MODE`` is ``true`` in its config env or in the app secrets
  it booted with. Fly injects app secrets "at boot time" (https://fly.io/docs/apps/secrets/):
  an update (a new machine version) boots with the current secrets, a restart keeps the ones
  it booted with (opsbook applies secrets by an update with ``min_secrets_version``). The app
  runs with that same env (``app.serve(..., env=...)``): its config env and, over it, the
  secrets' values as set, both as of its last boot (``booted_env``).
- A machine is ``replacing`` for ``start_delay_s`` after an update (0 by default), then
  ``started``; GET .../wait blocks until the state (and version) is reached, else answers 408
  when its ``timeout`` ends, as Fly does (undeclared in the document: listed in
  ``server.api.undocumented_faults``).
- Leases: a held lease refuses an update or a second lease without its nonce (Fly answers 409,
  undeclared: listed as an undocumented fault, and in ``lease_violations``).
- Secrets: values are never returned (Fly's API servers cannot decrypt them); ``digest`` is
  this stand-in's own (sha256 of the value, 16 hex digits: Fly does not document its own).
- ``refuse_updates``: machine id -> how many of its next updates answer 400 (an image the
  registry lacks, say).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from tests.platform_standin import PlatformStandin
from tests.vendor_server import Call

FLY_APP = "opsbook-app"
_ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GUEST = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}


def fly_error(status: int, message: str) -> dict[str, Any]:
    """Fly's ErrorResponse: ``{"error": ...}``."""
    return {"error": message}


def new_instance_id() -> str:
    return "".join(secrets.choice(_ULID_CHARS) for _ in range(26))


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class FlyStandin(PlatformStandin):
    def __init__(self, app: str = FLY_APP, *, start_delay_s: float = 0.0) -> None:
        self.app_name = app
        self.start_delay_s = start_delay_s
        self.machines: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.secrets_version = 0
        self.booted: dict[str, dict[str, str]] = {}
        #: id -> the env a machine's app runs with (config env + secrets at its last boot)
        self.booted_env: dict[str, dict[str, str]] = {}
        self.images: dict[str, str] = {}
        self.cordoned: set[str] = set()
        self.refuse_updates: dict[str, int] = {}
        self.lease_violations: list[str] = []
        self._state_lock = threading.RLock()
        self._created = 0
        #: (operation id, status answered or None when the handler ran, monotonic time)
        handlers = {
            "Machines_list": self._list,
            "Machines_show": self._show,
            "Machines_create": self._create,
            "Machines_update": self._update,
            "Machines_delete": self._delete,
            "Machines_cordon": self._cordon,
            "Machines_uncordon": self._uncordon,
            "Machines_create_lease": self._lease,
            "Machines_show_lease": self._show_lease,
            "Machines_release_lease": self._release,
            "Machines_restart": self._restart,
            "Machines_wait": self._wait,
            "Secrets_list": self._secrets_list,
            "Secret_get": self._secret_get,
            "Secret_create": self._secret_create,
            "Secret_delete": self._secret_delete,
        }
        super().__init__(
            "fly",
            handlers,
            auth_status=401,
            error_body=fly_error,
        )

    # ---------------------------------------------------------------- test set-up

    def add_image(self, image: str, version: str) -> None:
        """``image`` builds ``version`` (else an image's version is its tag)."""
        self.images[image] = version

    def add_machine(
        self,
        image: str,
        *,
        region: str = "ams",
        mounts: bool = False,
        metadata: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """A started machine of the app running ``image``; its id."""
        config: dict[str, Any] = {
            "image": image,
            "guest": dict(GUEST),
            "env": dict(env or {"PORT": "8080"}),
            "metadata": {"fly_process_group": "app", **(metadata or {})},
            "restart": {"policy": "on-failure"},
        }
        if mounts:
            config["mounts"] = [{"volume": "vol_" + secrets.token_hex(7), "path": "/data"}]
        return self._new_machine(config, region)["id"]

    def version_of(self, image: str) -> str:
        if image in self.images:
            return self.images[image]
        last = image.split("@", 1)[0].rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else "latest"

    def image(self, machine_id: str) -> str:
        return str(self.machines[machine_id]["config"].get("image", ""))

    def metadata(self, machine_id: str) -> dict[str, str]:
        return dict(self.machines[machine_id]["config"].get("metadata") or {})

    def alive(self) -> list[str]:
        return [i for i, m in self.machines.items() if m["state"] != "destroyed"]

    # -------------------------------------------------------------------- internals

    def _new_machine(self, config: dict[str, Any], region: str) -> dict[str, Any]:
        with self._state_lock:
            self._created += 1
            machine_id = secrets.token_hex(7)
            stamp = f"2026-01-01T00:{self._created // 60:02d}:{self._created % 60:02d}Z"
            machine = {
                "id": machine_id,
                "name": f"{self.app_name}-{self._created}",
                "region": region,
                "state": "created",
                "private_ip": f"fdaa:0:1::{self._created}",
                "created_at": stamp,
                "updated_at": stamp,
                "events": [],
                "checks": [],
            }
            self.machines[machine_id] = machine
            self._apply(machine, config)
        return machine

    def _apply(self, machine: dict[str, Any], config: dict[str, Any]) -> None:
        """A new version of the machine with ``config``: it boots with the current secrets."""
        image = str(config.get("image") or "")
        repository, _, tag = image.split("@", 1)[0].rpartition(":")
        if "/" in tag:  # no tag: the colon was a registry port
            repository, tag = image, ""
        registry, _, repo = repository.partition("/")
        machine.update(
            config=config,
            instance_id=new_instance_id(),
            image_ref={"registry": registry, "repository": repo, "tag": tag or "latest"},
            updated_at=now_iso(),
        )
        self.booted[machine["id"]] = {n: s["value"] for n, s in self.secrets.items()}
        self.booted_env[machine["id"]] = {
            **{str(k): str(v) for k, v in (config.get("env") or {}).items()},
            **self.booted[machine["id"]],
        }
        if self.start_delay_s > 0:
            machine["state"] = "replacing"
            threading.Timer(self.start_delay_s, self._started, [machine["id"]]).start()
        else:
            self._started(machine["id"])

    def _started(self, machine_id: str) -> None:
        with self._state_lock:
            machine = self.machines[machine_id]
            if machine["state"] == "destroyed":
                return
            machine["state"] = "started"
            self._serve(machine)

    def _serve(self, machine: dict[str, Any]) -> None:
        config = machine["config"]
        version = self.version_of(str(config.get("image") or ""))
        env = self.booted_env.get(machine["id"], {})  # a restart keeps what it booted with
        self.app.serve(
            machine["id"],
            version,
            healthy=version not in self.versions_broken,
            maintenance=env.get("MAINTENANCE_MODE") == "true",
            env=env,
        )

    def _machine(self, call: Call) -> dict[str, Any] | None:
        if call.params.get("app_name") != self.app_name:
            return None
        machine = self.machines.get(call.params.get("machine_id", ""))
        return machine if machine and machine["state"] != "destroyed" else None

    def _undocumented(self, status: int, message: str) -> tuple[int, Any]:
        """An answer Fly gives that its document does not declare (409, 404, 408)."""
        self.server.api.injected.status = status
        return status, fly_error(status, message)

    def _nonce_ok(self, call: Call, machine_id: str, what: str) -> bool:
        lease = self.leases.get(machine_id)
        given = call.headers.get("fly-machine-lease-nonce") or call.headers.get(
            "Fly-Machine-Lease-Nonce"
        )
        if lease is None or lease["expires_at"] < time.time():
            return True
        if given == lease["nonce"]:
            return True
        self.lease_violations.append(f"{what} {machine_id} without the lease's nonce")
        return False

    # --------------------------------------------------------------------- machines

    def _list(self, call: Call) -> tuple[int, Any]:
        if call.params.get("app_name") != self.app_name:
            return self._undocumented(404, "app not found")
        deleted = (call.query.get("include_deleted") or ["false"])[-1] == "true"
        with self._state_lock:
            return 200, [m for m in self.machines.values() if deleted or m["state"] != "destroyed"]

    def _show(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        return 200, machine

    def _create(self, call: Call) -> tuple[int, Any]:
        if call.params.get("app_name") != self.app_name:
            return self._undocumented(404, "app not found")
        body = call.body or {}
        machine = self._new_machine(dict(body.get("config") or {}), body.get("region") or "ams")
        return 200, machine

    def _update(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        if not self._nonce_ok(call, machine["id"], "update of"):
            return self._undocumented(409, "machine is leased by someone else")
        if self.refuse_updates.get(machine["id"], 0) > 0:
            self.refuse_updates[machine["id"]] -= 1
            return 400, fly_error(400, "failed to update machine: image not found")
        body = call.body or {}
        wanted = body.get("min_secrets_version")
        if wanted is not None and wanted > self.secrets_version:
            return 400, fly_error(400, f"secrets version {wanted} does not exist")
        with self._state_lock:
            self._apply(machine, dict(body.get("config") or {}))
        return 200, machine

    def _delete(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        force = (call.query.get("force") or ["false"])[-1] == "true"
        if machine["state"] == "started" and not force:
            return self._undocumented(412, "machine is running: stop it or use force")
        with self._state_lock:
            machine["state"] = "destroyed"
            self.leases.pop(machine["id"], None)
            self.app.drop(machine["id"])
        return 200, None

    def _cordon(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        self.cordoned.add(machine["id"])
        return 200, None

    def _uncordon(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        self.cordoned.discard(machine["id"])
        return 200, None

    def _lease(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        if not self._nonce_ok(call, machine["id"], "lease of"):
            return self._undocumented(409, "machine is leased by someone else")
        ttl = int((call.body or {}).get("ttl") or 30)
        lease = {
            "nonce": secrets.token_hex(8),
            "expires_at": int(time.time()) + ttl,
            "owner": "opsbook@example.com",
            "description": str((call.body or {}).get("description") or ""),
            "version": machine["instance_id"],
        }
        self.leases[machine["id"]] = lease
        return 201, lease

    def _show_lease(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        lease = self.leases.get(machine["id"]) if machine else None
        if lease is None:
            return self._undocumented(404, "no lease")
        return 200, lease

    def _release(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None or machine["id"] not in self.leases:
            return self._undocumented(404, "no lease")
        if not self._nonce_ok(call, machine["id"], "release of the lease of"):
            return self._undocumented(409, "lease nonce mismatch")
        del self.leases[machine["id"]]
        return 200, None

    def _restart(self, call: Call) -> tuple[int, Any]:
        machine = self._machine(call)
        if machine is None:
            return self._undocumented(404, "machine not found")
        with self._state_lock:
            machine["state"] = "started"
            self._serve(machine)  # the secrets it booted with: a restart is not an update
        return 200, None

    def _wait(self, call: Call) -> tuple[int, Any]:
        machine_id = call.params.get("machine_id", "")
        machine = self.machines.get(machine_id)
        if machine is None or call.params.get("app_name") != self.app_name:
            return self._undocumented(404, "machine not found")
        state = (call.query.get("state") or ["started"])[-1]
        version = (call.query.get("version") or call.query.get("instance_id") or [None])[-1]
        timeout = int((call.query.get("timeout") or ["60"])[-1])
        deadline = time.monotonic() + min(timeout, 60)
        while True:
            if machine["state"] == state and (
                version is None or machine["instance_id"] == version or state == "destroyed"
            ):
                return 200, {
                    "ok": True,
                    "state": state,
                    "version": machine["instance_id"],
                    "event_id": new_instance_id(),
                }
            if time.monotonic() >= deadline:
                return self._undocumented(408, f"timed out waiting for {state}")
            time.sleep(0.01)

    # ---------------------------------------------------------------------- secrets

    def _secret_view(self, name: str) -> dict[str, Any]:
        secret = self.secrets[name]
        return {k: secret[k] for k in ("name", "digest", "created_at", "updated_at")}

    def _secrets_list(self, call: Call) -> tuple[int, Any]:
        if call.params.get("app_name") != self.app_name:
            return self._undocumented(404, "app not found")
        return 200, {"secrets": [self._secret_view(n) for n in sorted(self.secrets)]}

    def _secret_get(self, call: Call) -> tuple[int, Any]:
        name = call.params.get("secret_name", "")
        if call.params.get("app_name") != self.app_name or name not in self.secrets:
            return self._undocumented(404, "secret not found")
        return 200, self._secret_view(name)

    def _secret_create(self, call: Call) -> tuple[int, Any]:
        if call.params.get("app_name") != self.app_name:
            return self._undocumented(404, "app not found")
        name = call.params["secret_name"]
        value = (call.body or {}).get("value")
        if not isinstance(value, str):
            return 400, fly_error(400, "value is required")
        with self._state_lock:
            stamp = now_iso()
            created = self.secrets.get(name, {}).get("created_at", stamp)
            self.secrets_version += 1
            self.secrets[name] = {
                "name": name,
                "value": value,
                "digest": digest(value),
                "created_at": created,
                "updated_at": stamp,
            }
            return 201, {**self._secret_view(name), "version": self.secrets_version}

    def _secret_delete(self, call: Call) -> tuple[int, Any]:
        name = call.params.get("secret_name", "")
        if call.params.get("app_name") != self.app_name or name not in self.secrets:
            return self._undocumented(404, "secret not found")
        with self._state_lock:
            del self.secrets[name]
            self.secrets_version += 1
            return 200, {"version": self.secrets_version}
