"""The fleet backup run: enrollment, then each job's init, create (when due), prune + compact, check.

    pyinfra -y INVENTORY deploys/backup.py
    pyinfra -y INVENTORY deploys/backup.py --data backup_force=true   # create even when not due

Adding a host with a job whose repo is `borg@<server>:.` (a server of the inventory)
and running this deploy is the whole enrollment: the host gets a backup key, the
server authorises it append-only for the host's repo, the host pins the server's
host key, and the repo is initialised. A second run right after changes nothing.
"""

from pyinfra import host, inventory

from facts.borg import fleet_servers, host_plan
from pyinfra_backup.validate import require_valid_inventory
from tasks import borg, state

require_valid_inventory()

plan = host_plan(host, inventory)
enrolled = any(planned.server for planned in plan)

# Order matters: the key exists before the server authorises it, and the server
# is set up before the client pins its host key and reaches its repo.
if enrolled:
    borg.backup_key(name="Backup key")
if host.name in fleet_servers(inventory):
    borg.repo_server(name="Repo server: users, repo directories, authorized_keys")
if enrolled:
    borg.pin_server_keys(name="Pin repo server host keys")

# One job's failure does not stop the host's other jobs: each step records its outcome on the
# host, and `outcome` fails the host at the end, naming every failed job and why.
for planned in plan:
    job = planned.job.name
    borg.init(job=job, name=f"borg init {job}", _ignore_errors=True)
    borg.create(job=job, name=f"borg create {job}", _ignore_errors=True)
    borg.prune(job=job, name=f"borg prune + compact {job}", _ignore_errors=True)
    borg.check(job=job, name=f"borg check {job}", _ignore_errors=True)
    if job == state.state_job(host):  # host identity files (system_state) in this job's repo
        state.snapshot(name=f"System state archive ({job})", _ignore_errors=True)
        if state.age_recipients(host):
            state.encrypted_copy(name="System state: age-encrypted copy", _ignore_errors=True)
if plan:
    borg.outcome(name="Backup outcome")
