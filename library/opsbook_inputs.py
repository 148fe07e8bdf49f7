#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_inputs: documentation of the action plugin action_plugins/opsbook_inputs.py."""

from __future__ import annotations

DOCUMENTATION = r"""
module: opsbook_inputs
short_description: Check a runbook's inputs against its declaration before anything is touched
description:
  - The first task of every runbook's preflight. Reads the runbook's declaration,
    C(playbooks/vars/inputs/<runbook>.yml), and checks every input given - with C(-e), in the
    inventory or in play vars - against it. B(Every) problem is listed at once and the task
    fails with C(<runbook> refused, nothing was changed), before any lock, host or database is
    touched.
  - "Types are converted as Ansible converts module arguments, with its own
    C(ArgumentSpecValidator): inputs given with C(ansible-playbook -e name=value) arrive as
    text, so C(-e deploy_batch=2) is the number 2 and C(-e deploy_batch=abc) is refused with a
    message naming C(deploy_batch) and what it accepts."
  - "A declaration is one mapping under the key C(opsbook_inputs): C(runbook) (the file's
    name); C(options) - per input C(description), C(type) (C(str), C(int), C(float), C(bool),
    C(list), C(dict), C(path), C(raw), or C(count_or_percent): a number of hosts or C(N%),
    what C(serial) takes), C(required), C(default) (documentation: the playbook applies it),
    C(choices) (C(ignore_case) to compare without case), C(min) and C(max) (numbers, and the
    count of a C(count_or_percent)), C(pattern) (a regular expression the whole text must
    match) with C(format) (what the pattern means, in words), C(elements), C(no_log) (the
    value is never shown), C(accepts) (overrides the generated words); C(rules) -
    C(required_if), C(required_together), C(required_one_of), C(mutually_exclusive), as in
    Ansible's argument specs; C(inventory) - C(vars), names the host running the check must
    hold, and C(groups), C(group: [names]) - the group must hold a host and each host those
    names (or C(group: {vars: [names], optional: true}) for a group that may be empty, and
    C(when: {input: value}) for a group needed only when an input, given or by its default, has
    that value - the app hosts on C(deploy_target=hosts)); the condition of a C(required_if)
    sees the declared defaults too;
    C(role_inputs) - roles whose inputs may be given with C(-e), checked against the
    role's C(meta/argument_specs.yml); C(role_input_limits) - C(name: {min, max}), the ranges
    of role inputs (an argument spec cannot say one), checked wherever the role's inputs are
    taken; C(include) - runbooks whose inputs this one accepts too (C(tour)). C(common.yml)
    declares what every runbook accepts (C(opsbook_reason)) and the ranges of role inputs."
  - "Extra-var names the runbook does not know are B(warned about), with the closest known
    name (C(-e data_fix_verify_sql) - did you mean data_fix_verify?). A warning and not a
    refusal: AWX passes extra vars of its own (C(awx_*), C(tower_*)) to every job. Only the
    runbook the operator started warns (not one imported by C(tour)), and not again when
    C(opsbook run) has already warned (it sets C(OPSBOOK_INPUT_WARNINGS_SHOWN))."
  - Also returns the commands that run this very run again with O(rerun_with) added (the
    deploy lock quotes them, the exact command that breaks a dead run's lock).
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
options:
  runbook:
    description:
      - The runbook whose declaration applies (C(deploy) reads
        C(playbooks/vars/inputs/deploy.yml)).
    type: str
    required: true
  directory:
    description:
      - Where the declarations are. Default - C(<playbook_dir>/vars/inputs).
    type: path
  rerun_with:
    description:
      - Extra vars added to the re-run commands of RV(rerun), such as C(break_lock) set to true.
    type: dict
    default: {}
  warn_unknown:
    description:
      - Warn about extra-var names the runbook does not know. Default - only when this
        runbook's playbook is the one started and C(opsbook run) did not already warn.
    type: bool
attributes:
  action:
    support: full
    description: An action plugin; it runs on the controller and never on a managed host.
  check_mode:
    support: full
    description: Reads only; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed.
  platform:
    support: full
    platforms: posix
    description: The controller.
notes:
  - Values are never shown for inputs declared C(no_log) or whose name says they are secret
    (password, token, secret, ...); URLs in the re-run commands lose their credentials and
    query strings.
  - Defaults stay with the roles (C(roles/deploy/defaults/main.yml) for deploy and rollback);
    the declaration's C(default) documents them, and a unit test keeps both equal.
seealso:
  - module: opsbook.runbooks.deploy_lock
    description: Quotes RV(rerun) when another run holds the lock.
"""

EXAMPLES = r"""
- name: Check the inputs (every problem at once; nothing is touched before this passes)
  opsbook_inputs:
    runbook: deploy
    rerun_with:
      break_lock: true
  register: deploy_inputs_check

# playbooks/vars/inputs/deploy.yml (an excerpt):
# opsbook_inputs:
#   runbook: deploy
#   options:
#     deploy_batch:
#       description: size of every batch after the canary
#       type: count_or_percent
#       default: 50%
#     deploy_keep_releases:
#       type: int
#       min: 1
#   inventory:
#     vars: [opsbook_state_url, opsbook_env]
#     groups:
#       app: [deploy_root, app_base_url]
#   role_inputs: [deploy_lock, app_service, pg_backup, db_migrate]
"""

RETURN = r"""
problems:
  description: Every problem found, one sentence each (empty when the inputs are good).
  returned: always
  type: list
  elements: str
  sample: ["deploy_batch='abc' is not valid: deploy_batch accepts a number of hosts (at least
    1) or a percentage of the hosts from 1% to 100% (e.g. 2 or 50%)"]
checked:
  description: The names of the declared inputs that were given and checked.
  returned: always
  type: list
  elements: str
unknown:
  description: Extra-var names the runbook does not know (warned about), when warning applies.
  returned: always
  type: list
  elements: str
rerun:
  description: This run again with O(rerun_with) added - C(opsbook) and C(ansible_playbook)
    forms (secrets and URL credentials shown as C(...)).
  returned: always
  type: dict
  sample:
    opsbook: opsbook run deploy --env production -e break_lock=true -e app_version=2.1.0
    ansible_playbook: ansible-playbook -i inventories/production playbooks/deploy.yml -e
      break_lock=true -e app_version=2.1.0
runbook:
  description: The runbook checked.
  returned: always
  type: str
msg:
  description: C(<runbook> refused, nothing was changed ...) with every problem numbered, or
    how many inputs were checked.
  returned: always
  type: str
"""

import json


def main() -> None:
    print(
        json.dumps(
            {
                "failed": True,
                "msg": "opsbook_inputs runs through its action plugin "
                "(action_plugins/opsbook_inputs.py): add the project's action_plugins to "
                "Ansible's action plugin path",
            }
        )
    )


if __name__ == "__main__":
    main()
