"""Who backs up where, and the authorized_keys lines a repo server gets."""

import subprocess

import pytest

from pyinfra_backup.enrollment import (
    Server, authorized_keys, client_location, find_server, fingerprint, installed_keys, key_changes, plan_jobs,
    repo_host, repo_serve_command, server_repos, unexplained_removals,
)
from pyinfra_backup.validate import _repo_host_errors

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA host01"
KEY_OP = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB operator"


@pytest.mark.parametrize("repo, host", [
    ("/srv/borg/repo", None),
    ("borg@backup:.", "backup"),
    ("borg@10.0.0.2:/var/lib/borgbackup/x", "10.0.0.2"),
    ("ssh://borg@backup:2222/./repo", "backup"),
    ("ssh://borg@[fd00::2]/srv/repo", "fd00::2"),
    ("backup:repo", "backup"),
])
def test_repo_host(repo, host):
    assert repo_host(repo) == host


def servers():
    data = {"ssh_hostname": "10.0.0.2", "borgbackup": {"repos": {"legacy": {
        "path": "/srv/legacy", "authorizedKeys": [KEY_OP], "quota": "10G"}}, "operatorKeys": [KEY_OP]}}
    return {"backup": Server.from_data("backup", data)}


def test_find_server_by_inventory_name_or_address():
    assert find_server("borg@backup:.", servers()).name == "backup"
    assert find_server("ssh://borg@10.0.0.2/./.", servers()).name == "backup"
    assert find_server("borg@elsewhere:.", servers()) is None
    assert find_server("/srv/borg", servers()) is None


def test_enrolled_client_gets_an_append_only_repo_of_its_own():
    repos = server_repos(servers()["backup"], {"host01": KEY_A, "host02": None})
    assert repos["host01"] == {"path": "/var/lib/borgbackup/host01", "user": "borg", "authorizedKeysAppendOnly": [KEY_A]}
    assert repos["host02"]["authorizedKeysAppendOnly"] == []  # enrolled, key not made yet


def test_authorized_keys_lines_as_nixos_writes_them():
    server = servers()["backup"]
    lines = authorized_keys(server_repos(server, {"host01": KEY_A}), server.operator_keys)["borg"]
    assert lines == [
        f'command="cd /var/lib/borgbackup/host01 && borg serve --restrict-to-repository . --append-only",restrict {KEY_A}',
        f'command="cd /srv/legacy && borg serve --restrict-to-repository . --storage-quota 10G",restrict {KEY_OP}',
        f'command="borg serve --restrict-to-path /",restrict {KEY_OP}',
    ]


def test_installed_keys_reads_back_the_key_of_a_forced_command():
    """What the server keeps for a client that is unreachable during a run."""
    server = servers()["backup"]
    repos = server_repos(server, {"host01": KEY_A})
    text = "".join(line + "\n" for line in authorized_keys(repos, server.operator_keys)["borg"])
    command = repo_serve_command(repos["host01"]["path"], repos["host01"], append_only=True)
    assert installed_keys(text, command) == [KEY_A]
    assert installed_keys(text, command.replace("host01", "host02")) == []
    assert installed_keys(text, command.replace(" --append-only", "")) == []  # full access is another command


def test_operator_key_reaches_the_common_base_of_the_repos():
    server = Server.from_data("backup", {"borgbackup": {"repos": {}, "operatorKeys": [KEY_OP]}})
    lines = authorized_keys(server_repos(server, {"host01": KEY_A, "host02": KEY_A}), server.operator_keys)
    assert lines["borg"][-1] == f'command="borg serve --restrict-to-path /var/lib/borgbackup",restrict {KEY_OP}'


def test_plan_marks_enrolled_jobs_and_leaves_others_alone():
    data = {"borgbackup": {"jobs": {
        "system": {"repo": "borg@backup:.", "paths": ["/etc"], "encryption": {"mode": "none"}},
        "local": {"repo": "/srv/borg", "paths": ["/etc"], "encryption": {"mode": "none"}},
    }}}
    plan = {p.job.name: p for p in plan_jobs("host01", data, servers())}
    assert plan["system"].server.name == "backup"
    assert plan["system"].location.url == "borg@10.0.0.2:."
    assert "IdentitiesOnly=yes" in plan["system"].location.rsh and "StrictHostKeyChecking=yes" in plan["system"].location.rsh
    assert plan["local"].server is None and plan["local"].location.url == "/srv/borg"


def test_a_path_with_shell_or_option_characters_stays_one_quoted_word():
    from pyinfra_backup.enrollment import repo_serve_command, serve_line

    command = repo_serve_command('/srv/my "repos"/a b', {}, append_only=True)
    assert command == "cd '/srv/my \"repos\"/a b' && borg serve --restrict-to-repository . --append-only"
    line = serve_line(command, KEY_A)
    assert line == f'command="cd \'/srv/my \\"repos\\"/a b\' && borg serve --restrict-to-repository . --append-only",restrict {KEY_A}'


def test_a_client_trusts_only_its_pinned_server_keys():
    rsh = client_location(servers()["backup"], "host01").rsh
    assert "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/var/lib/pyinfra-backup/ssh/known_hosts" in rsh
    assert "-o GlobalKnownHostsFile=/dev/null" in rsh  # not /etc/ssh/ssh_known_hosts too


def test_borg_connections_send_keepalives_so_a_network_cut_ends_them():
    job = {"repo": "borg@backup:.", "paths": ["/etc"], "encryption": {"mode": "none"}}
    [default] = plan_jobs("host01", {"borgbackup": {"jobs": {"system": job}}}, servers())
    assert "-o ServerAliveInterval=30 " in default.location.rsh
    [tuned] = plan_jobs("host01", {"borgbackup": {"jobs": {"system": job}, "serverAliveInterval": 5}}, servers())
    assert "-o ServerAliveInterval=5 " in tuned.location.rsh


# --- what a server run would remove ---------------------------------------------------------------------------

def _server_lines(*clients, operator=True):
    server = Server.from_data("backup", {"borgbackup": {"repos": {}, "operatorKeys": [KEY_OP] if operator else []}})
    return authorized_keys(server_repos(server, {c: f"ssh-ed25519 {k} pyinfra-backup@{c}" for c, k in clients}),
                           server.operator_keys)


def _text(lines):
    return {user: "".join(line + "\n" for line in user_lines) for user, user_lines in lines.items()}


def test_fingerprint_is_ssh_keygens(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c@h", "-f", str(key)], check=True)
    shown = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True, check=True).stdout
    assert fingerprint(key.with_suffix(".pub").read_text()) == shown.split()[1]


def test_a_client_left_out_while_in_the_inventory_is_refused_unless_revoked():
    now = _server_lines(("host01", "AAAAC3NzaC1lZDI1NTE5AAAAIA"), ("host02", "AAAAC3NzaC1lZDI1NTE5AAAAIB"))
    wanted = _server_lines(("host01", "AAAAC3NzaC1lZDI1NTE5AAAAIA"))
    changes = key_changes(_text(now), wanted)
    assert [(c.added, c.repo_path) for c in changes] == [(False, "/var/lib/borgbackup/host02")]
    [why] = unexplained_removals(changes, wanted, {"host01", "host02"}, {}, set())
    assert "pyinfra-backup@host02 (repo /var/lib/borgbackup/host02) would be removed, but host02 is still" in why
    assert unexplained_removals(changes, wanted, {"host01", "host02"}, {}, {"host02"}) == []
    assert unexplained_removals(changes, wanted, {"host01"}, {}, set()) == []  # host02 left the inventory
    assert unexplained_removals(changes, wanted, {"host01", "host02"}, {}, {changes[0].fingerprint}) == []


def test_a_new_key_for_the_same_repo_is_a_replacement_not_a_revocation():
    now = _server_lines(("host01", "AAAAC3NzaC1lZDI1NTE5AAAAIA"))
    wanted = _server_lines(("host01", "AAAAC3NzaC1lZDI1NTE5AAAAIC"))
    changes = key_changes(_text(now), wanted)
    assert sorted(c.added for c in changes) == [False, True]
    assert unexplained_removals(changes, wanted, {"host01"}, {}, set()) == []


def test_the_last_operator_key_is_refused_a_rotated_one_is_not():
    clients = (("host01", "AAAAC3NzaC1lZDI1NTE5AAAAIA"),)
    now, wanted = _server_lines(*clients), _server_lines(*clients, operator=False)
    [why] = unexplained_removals(key_changes(_text(now), wanted), wanted, {"host01"}, {}, set())
    assert "(operator key) would be removed: borg would keep no operator key" in why
    assert unexplained_removals(key_changes(_text(now), wanted), wanted, {"host01"}, {}, {"operator"}) == []
    rotated = {user: [line.replace(KEY_OP, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID op2") for line in lines]
               for user, lines in now.items()}
    assert unexplained_removals(key_changes(_text(now), rotated), rotated, {"host01"}, {}, set()) == []


def test_a_repo_host_close_to_a_servers_name_is_a_typo():
    client = {"borgbackup": {"jobs": {"system": {"repo": "borg@bakup:.", "paths": ["/etc"]}}}}
    external = {"borgbackup": {"jobs": {"system": {"repo": "u123@u123.your-storagebox.de:repo", "paths": ["/etc"]}}}}
    data = {"backup": {"ssh_hostname": "10.0.0.2", "borgbackup": {"repos": {}}}, "h1": client, "h2": external,
            "h3": {"borgbackup": {"jobs": {"system": {"repo": "borg@10.0.0.2:.", "paths": ["/etc"]}}}}}
    assert _repo_host_errors(data) == [
        "h1: borgbackup.jobs.system.repo: expected a host of the inventory or one outside it, got 'borg@bakup:.': "
        "bakup is no host of the inventory, did you mean backup?"]
