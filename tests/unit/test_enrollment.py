"""Who backs up where, and the authorized_keys lines a repo server gets."""

import pytest

from pyinfra_backup.enrollment import (
    Server, authorized_keys, client_location, find_server, installed_keys, plan_jobs, repo_host, repo_serve_command,
    server_repos,
)

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
