"""The fleet backup run: enrollment, then each job's init, create (when due), prune + compact, check.

    pyinfra -y INVENTORY deploys/backup.py
    pyinfra -y INVENTORY deploys/backup.py --data backup_force=true   # create even when not due

Adding a host with a job whose repo is `borg@<server>:.` (a server of the inventory)
and running this deploy is the whole enrollment: the host gets a backup key, the
server authorises it append-only for the host's repo, the host pins the server's
host key, and the repo is initialised. A second run right after changes nothing.
"""

from pyinfra import host, inventory

from facts.borg import fleet_servers, has_backup_key, host_plan, read_fleet_at_once
from pyinfra_backup.validate import require_valid_inventory
from tasks import backup, borg, offsite, run

require_valid_inventory()

plan = host_plan(host, inventory)
enrolled = any(planned.server for planned in plan)

# Order matters: the key exists before the server authorises it, and the server is set up
# before the client pins its host keys and reaches its repo (both in `backup.run`). Every
# client and server is read once, all at once, now: only hosts without their key get the key operation.
# A client's read takes its run lock (tasks/run.py): a host another run holds is skipped whole.
read_fleet_at_once()
held = run.held_elsewhere(host) if plan else None
if held:
    run.skipped(name="Run lock", reason=held)
else:
    borg.operator_reach_up_front()  # prune runs here: is each server reached with the operator's key? (due jobs only)
    if enrolled and not has_backup_key(host):
        borg.backup_key(name="Backup key")
    if host.name in fleet_servers(inventory):
        borg.repo_server(name="Repo server: users, repo directories, authorized_keys")
    if plan:
        backup.run(name="Backup jobs: " + ", ".join(planned.job.name for planned in plan))

# Last: a server with borgbackup.offsite copies its repos offsite. pyinfra orders the operations
# of all hosts in layers of each host's own sequence (then by line): the copy, second in the
# server's sequence, runs after `backup.run`, first or second in every client's (see the offsite
# fleet test). An operation added before `backup.run` in a client's sequence must not be later here.
if offsite.configured(host) and not held:
    offsite.copy(name="Offsite copy of the repos (rclone)")
