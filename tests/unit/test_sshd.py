"""The repo server's sshd drop-in: its content and whether the main sshd_config reads it."""

from pyinfra_backup.sshd import dropin_content, dropin_path, includes_dropins


def test_one_match_block_per_repo_user():
    assert dropin_path("borg") == "/etc/ssh/sshd_config.d/pyinfra-backup-borg.conf"
    assert dropin_content("borg", 1, 3).splitlines()[1:] == ["Match User borg", "    ClientAliveInterval 1",
                                                             "    ClientAliveCountMax 3"]


def test_the_drop_in_counts_only_when_sshd_config_includes_it():
    assert includes_dropins("Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n")  # Debian's first line
    assert includes_dropins("  include sshd_config.d/*.conf\n")  # relative to /etc/ssh, any case
    assert includes_dropins("Include /etc/ssh/other.conf /etc/ssh/sshd_config.d/pyinfra-backup-*.conf\n")
    assert not includes_dropins("Port 22\n# Include /etc/ssh/sshd_config.d/*.conf\n")
    assert not includes_dropins("Include /etc/ssh/sshd_config.d/*.cfg\n")
    assert not includes_dropins(None)  # unreadable or absent
