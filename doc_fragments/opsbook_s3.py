# Copyright: opsbook contributors
# Apache-2.0
"""Documentation of the S3 connection options every opsbook module that reads or writes S3 takes
(module_utils/opsbook_storage.py's open_storage uses them), and of boto3 which they need:
extends_documentation_fragment: [opsbook.runbooks.opsbook_s3]. A module's own entry for one of
them is merged over the fragment's, key by key."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
requirements:
  - boto3, for C(s3://) storage, for the Python interpreter that runs the module
options:
  s3_endpoint_url:
    description:
      - Endpoint of an S3-compatible service (MinIO, Ceph, R2, ...); AWS when omitted.
      - Credentials come from the usual boto3 sources (environment, profile, instance role),
        never from options.
      - Shared by every opsbook module that reads or writes S3.
    type: str
  s3_region:
    description:
      - Region of the bucket.
      - Shared by every opsbook module that reads or writes S3.
    type: str
"""
