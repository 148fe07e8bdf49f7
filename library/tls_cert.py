#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""tls_cert: the TLS certificate an https:// URL serves - days to expiry and trust (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tls_cert
short_description: Days to expiry and trust of the TLS certificate each https URL serves
description:
  - For each of O(urls), connects to its host and port (443 by default) from the host the task
    runs on (the controller, C(delegate_to) C(localhost)) and reads the certificate the server
    presents B(without verifying it) - so that the dates of an expired, self-signed or
    otherwise untrusted certificate are still reported - then connects a second time
    B(verifying) the chain against the system's trusted CAs (and O(ca_file)) and the host name,
    as a browser or C(curl) would.
  - "Judges each certificate (RV(certificates) C(status)) - C(fail) when it cannot be read, is
    expired or not yet valid, is not trusted (self-signed, an unknown CA, a name it is not
    valid for: the verification's own words are given), or expires in fewer than O(fail_days)
    days; C(warn) when it expires in fewer than O(warn_days) days; else C(ok). Every problem is
    listed; the days left are reported whatever the verdict."
  - A bad certificate does not fail the task (C(routine_checks.yml) turns the statuses into its
    verdict); invalid input does.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# the action attribute
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
requirements:
  - cryptography (installed with ansible-core) to read the certificate
options:
  urls:
    description:
      - The C(https://) URLs whose certificates to check (each host and port once).
    type: list
    elements: str
    required: true
  ca_file:
    description:
      - A PEM file of CA certificates trusted in addition to the system's - a private CA that
        signs internal services.
    type: path
  warn_days:
    description:
      - A certificate that expires in fewer than this many days is a warning.
    type: float
    default: 21
  fail_days:
    description:
      - A certificate that expires in fewer than this many days is a failure.
    type: float
    default: 7
  timeout_s:
    description:
      - Seconds to wait for the connection and the TLS handshake.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
    description: Read-only - it runs the same in check mode.
notes:
  - The host name checked is the URL's; an IP address is matched against the certificate's IP
    subject alternative names.
seealso:
  - module: opsbook.runbooks.http_check
    description: The app's /health (over https, with certificate validation).
"""

EXAMPLES = r"""
- name: Days to expiry of every https app_base_url
  tls_cert:
    urls: ["https://app.example.com", "https://api.example.com:8443"]
    ca_file: /etc/ssl/private-ca.pem
    warn_days: 21
    fail_days: 7
  delegate_to: localhost
  run_once: true
  register: certificates
"""

RETURN = r"""
certificates:
  description: Per URL (as given), what was found.
  returned: always
  type: dict
  contains:
    host:
      description: The host connected to.
      type: str
    port:
      description: The port connected to.
      type: int
    status:
      description: C(ok), C(warn) or C(fail).
      type: str
    problems:
      description: Every problem, in words (empty when C(ok)).
      type: list
      elements: str
    days_left:
      description: Days until C(not_after) (negative once expired; one decimal); null when the
        certificate could not be read.
      type: float
    not_before:
      description: Start of validity (ISO 8601, UTC).
      type: str
    not_after:
      description: End of validity (ISO 8601, UTC).
      type: str
    subject:
      description: The certificate's subject (RFC 4514).
      type: str
    issuer:
      description: Its issuer (RFC 4514).
      type: str
    names:
      description: The DNS names and IP addresses it is valid for (subject alternative names).
      type: list
      elements: str
    self_signed:
      description: Whether its issuer is its subject.
      type: bool
    trusted:
      description: Whether the verifying handshake succeeded (chain and host name).
      type: bool
    verify_error:
      description: Why the verifying handshake failed, in OpenSSL's words (null when trusted).
      type: str
    error:
      description: Why the certificate could not be read at all (null when it was).
      type: str
    summary:
      description: One line for a report.
      type: str
  sample:
    "https://app.example.com":
      host: app.example.com
      port: 443
      status: warn
      problems: ["expires in under 21 days"]
      days_left: 12.4
      not_after: "2024-05-13T12:00:00Z"
      trusted: true
      summary: "expires in under 21 days; 12.4 days left (until 2024-05-13T12:00:00Z); issued by
        CN=R3,O=Let's Encrypt,C=US"
status:
  description: The worst status of all the URLs (C(ok) when none was given a worse one).
  returned: always
  type: str
  sample: warn
msg:
  description: One line per URL that is not C(ok), or how many are.
  returned: always
  type: str
"""

import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module

try:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    HAS_CRYPTOGRAPHY = True
except ImportError:  # reported by execute()
    HAS_CRYPTOGRAPHY = False

STATUSES = ("ok", "warn", "fail")
MAX_THREADS = 16
ISO = "%Y-%m-%dT%H:%M:%SZ"


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "urls": {"type": "list", "elements": "str", "required": True},
        "ca_file": {"type": "path"},
        "warn_days": {"type": "float", "default": 21.0},
        "fail_days": {"type": "float", "default": 7.0},
        "timeout_s": {"type": "float", "default": 10.0},
    }


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an https:// URL; ValueError saying what is wrong."""
    parts = urlsplit(str(url).strip())
    if parts.scheme.lower() != "https":
        raise ValueError(f"{url!r} is not an https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port or 443
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return parts.hostname, port


def input_errors(params: dict[str, Any]) -> list[str]:
    errors = []
    if not params["urls"]:
        errors.append("urls must name at least one https:// URL")
    for url in params["urls"]:
        try:
            endpoint(url)
        except ValueError as exc:
            errors.append(str(exc))
    if params["fail_days"] < 0 or params["warn_days"] < 0:
        errors.append("warn_days and fail_days must be >= 0")
    if params["timeout_s"] <= 0:
        errors.append(f"timeout_s must be > 0, got {params['timeout_s']}")
    return errors


def handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes:
    """The DER certificate the server presents, through ``context``'s checks."""
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


def unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verifying_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def describe_certificate(der: bytes) -> dict[str, Any]:
    """The facts of a DER certificate that a report needs."""
    cert = x509.load_der_x509_certificate(der)
    try:
        alt = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = [str(n) for n in alt.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "names": names,
        "self_signed": cert.issuer == cert.subject,
    }


def judge(
    facts: dict[str, Any], verify_error: str | None, params: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Status, problems and a summary line from a certificate's facts (pure)."""
    days = round((facts["not_after"] - now).total_seconds() / 86400, 1)
    until = facts["not_after"].strftime(ISO)
    problems: list[str] = []
    status = "ok"
    if days < 0:
        problems.append(f"expired {-days:g} days ago ({until})")
    elif facts["not_before"] > now:
        problems.append(f"not valid before {facts['not_before'].strftime(ISO)}")
    if verify_error and not (days < 0 and "expired" in verify_error):
        problems.append(f"not trusted: {verify_error}")
    if problems:
        status = "fail"
    elif days < params["fail_days"]:
        status = "fail"
        problems.append(f"expires in under {params['fail_days']:g} days")
    elif days < params["warn_days"]:
        status = "warn"
        problems.append(f"expires in under {params['warn_days']:g} days")
    left = [] if days < 0 else [f"{days:g} days left (until {until})"]
    summary = "; ".join([*problems, *left, f"issued by {facts['issuer']}"])
    return {
        "status": status,
        "problems": problems,
        "days_left": days,
        "not_before": facts["not_before"].strftime(ISO),
        "not_after": until,
        "subject": facts["subject"],
        "issuer": facts["issuer"],
        "names": facts["names"],
        "self_signed": facts["self_signed"],
        "trusted": verify_error is None,
        "verify_error": verify_error,
        "error": None,
        "summary": summary,
    }


def check_one(url: str, params: dict[str, Any]) -> dict[str, Any]:
    host, port = endpoint(url)
    where = {"host": host, "port": port}
    timeout = params["timeout_s"]
    try:
        facts = describe_certificate(handshake(host, port, unverified_context(), timeout))
    except (OSError, ValueError) as exc:  # refused, timed out, no TLS, not a certificate
        error = f"cannot read the certificate of {host}:{port}: {exc}"
        unread = {"days_left": None, "trusted": False, "verify_error": None}
        return {**where, **unread, "status": "fail", "problems": [error], "error": error,
                "summary": error}  # fmt: skip
    try:
        handshake(host, port, verifying_context(params.get("ca_file")), timeout)
        verify_error = None
    except ssl.SSLCertVerificationError as exc:
        verify_error = exc.verify_message or str(exc)
    except (OSError, ValueError) as exc:
        verify_error = f"the verifying handshake failed: {exc}"
    return {**where, **judge(facts, verify_error, params, datetime.now(UTC))}


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters (read-only: the same in check mode). main()
    runs it in a module process; on the controller the action plugin
    (action_plugins/tls_cert.py) runs it in the task's worker."""
    del check_mode
    if not HAS_CRYPTOGRAPHY:
        msg = "tls_cert: the Python package cryptography is needed to read certificates"
        return {"failed": True, "changed": False, "msg": msg}
    errors = input_errors(params)
    if errors:
        msg = "tls_cert: invalid input: " + "; ".join(errors)
        return {"failed": True, "changed": False, "msg": msg}
    urls = list(dict.fromkeys(params["urls"]))
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(urls))) as pool:
        found = dict(zip(urls, pool.map(lambda u: check_one(u, params), urls), strict=True))
    worst = max((STATUSES.index(c["status"]) for c in found.values()), default=0)
    bad = [f"{url}: {c['summary']}" for url, c in found.items() if c["status"] != "ok"]
    return {
        "changed": False,
        "certificates": found,
        "status": STATUSES[worst],
        "msg": "; ".join(bad) or f"{len(found)} certificate(s) valid and trusted",
    }


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
