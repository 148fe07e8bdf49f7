# Copyright: opsbook contributors
# Apache-2.0
"""Documentation of the options every opsbook module that calls a vendor's REST API takes
(module_utils/opsbook_rest.py's rest_argument_spec and client_from_params):
extends_documentation_fragment: [opsbook.runbooks.opsbook_rest]. A module's own entry for one of
them is merged over the fragment's, key by key; each module documents its own base_url (the
vendor's API)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  timeout_s:
    description:
      - Seconds to wait for the answer to one attempt of a call.
      - Shared by every opsbook module that calls a vendor's REST API.
    type: float
    default: 30
  deadline_s:
    description:
      - Seconds for all attempts of one call together, waits included. 429 and 5xx answers,
        timeouts and refused connections are retried with exponential backoff, or after the
        wait the vendor asks for (C(Retry-After), C(X-RateLimit-Reset)); a wait that would end
        past the deadline is not begun, and the error says so.
      - Shared by every opsbook module that calls a vendor's REST API.
    type: float
    default: 120
  validate_certs:
    description:
      - Validate the API's TLS certificate.
      - Shared by every opsbook module that calls a vendor's REST API.
    type: bool
    default: true
"""
