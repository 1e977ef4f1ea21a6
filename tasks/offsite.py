"""Offsite copies of a repo server's borg repos with rclone (3-2-1): see pyinfra_backup/offsite.py.

`deploys/backup.py` runs `copy()` last, after every client's backup steps (see `wanted`).
On its own:

    pyinfra -y INVENTORY tasks.offsite.copy --limit SERVER
"""

from __future__ import annotations

from datetime import datetime, timezone

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand

from facts.borg import fleet_servers, host_plan, servers_of
from facts.offsite import OffsiteRepos
from pyinfra_backup.enrollment import server_repos
from pyinfra_backup.offsite import Offsite, copy_result, copy_script
from pyinfra_backup.shell import parse_sections
from tasks.common import HostError, host_operation, run_as_login


def configured(target) -> bool:
    """Whether a host has `borgbackup.offsite`."""
    return bool((target.data.get("borgbackup") or {}).get("offsite"))


def _repos() -> dict[str, str]:
    """The server's repos, by name -> path: those in its data and one per enrolled client."""
    server = fleet_servers(inventory).get(host.name)
    if server is None:
        raise HostError(f"{host.name}: borgbackup.offsite: this host serves no repos (no borgbackup.repos)")
    enrolled = {client.name: None for client in inventory if server.name in servers_of(host_plan(client, inventory))}
    return {name: repo["path"] for name, repo in server_repos(server, enrolled).items()}


def _copy(state, host, offsite: Offsite, repos: dict[str, str], stamp: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Copy, check and record each repo (one remote command each); one repo's failure does not stop
    the others, except an unreachable remote. The host fails at the end, naming each failed repo."""
    failures, unreachable = [], False
    for name, path in repos.items():
        where = f"repo {name} -> {offsite.destination(name)}"
        if unreachable:
            failures.append(f"{where}: not tried, the remote cannot be reached or logged into")
            continue
        _, output = run_as_login(host, copy_script(offsite, name, path, stamp))
        result = copy_result(parse_sections(output.stdout_lines), offsite.verify)
        if result.failed_step is None:
            host.log_styled(f"offsite: {where}: {result.summary()}", log_func=logger.info)
            continue
        rclone_step = result.failed_step in ("sync", "check")
        failures.append(f"{where}: rclone {result.failed_step} failed: {result.reason}" if rclone_step
                        else f"{where}: {result.reason}")
        unreachable = result.unreachable
    for failure in failures:
        host.log_styled(f"{host.name}: borgbackup.offsite ({offsite.remote.describe()}): {failure}; "
                        "nothing recorded, the repo is untouched", fg="red", log_func=logger.error)
    return not failures


@host_operation
def copy():
    """Mirror each of the server's borg repos to `borgbackup.offsite` (`rclone sync`), verify the
    copy (`rclone check --one-way`), then record the repo's fingerprint on the server. A repo whose
    fingerprint matches the record of its last verified copy to the same destination is left alone,
    without contacting the remote. Secrets reach rclone only through its environment.

    Example: `copy()` on a host with `borgbackup.repos` and `borgbackup.offsite`.
    """
    offsite = Offsite.from_data(host.data.dict())
    if offsite is None:
        host.noop("no borgbackup.offsite on this host")
        return
    repos = _repos()
    state = host.get_fact(OffsiteRepos, repos=repos)
    if not state.rclone:
        raise HostError(f"{host.name}: borgbackup.offsite: rclone is not installed on this host")
    todo, unchanged, absent = {}, [], []
    for name, path in sorted(repos.items()):
        repo = state.repos[name]
        if repo.error:
            raise HostError(f"{host.name}: borgbackup.offsite: cannot read repo {name} at {path}: {repo.error}")
        if repo.fingerprint is None:
            absent.append(name)
        elif repo.record and (repo.record.destination, repo.record.fingerprint) == (offsite.identity, repo.fingerprint):
            unchanged.append(name)
        else:
            todo[name] = path
    if not todo:
        empty = f"; no borg repo yet: {', '.join(absent)}" if absent else ""
        host.noop(f"{len(unchanged)} repos unchanged since their last verified copy to {offsite.describe()}{empty}")
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    yield FunctionCommand(_copy, (offsite, todo, stamp), {})
