"""The escrow's key digest, checked against real borg: a keyfile, a repokey repo's config and `borg key
export` give the same digest, as the host's shell commands compute it and as the operator's Python does."""

from __future__ import annotations

import os
import subprocess

import pytest

from pyinfra_backup.escrow import (
    Kept, key_digest, keyfile_digests_command, needs_escrow, parse_digests, repo_config_digest_command, repo_id_of,
)
from pyinfra_backup.shell import sh_join


@pytest.fixture
def borg_env(tmp_path):
    return {**os.environ, "BORG_BASE_DIR": str(tmp_path / "base"), "BORG_PASSPHRASE": "pp-unit"}


def _borg(env, *args) -> str:
    return subprocess.run(["borg", *args], env=env, check=True, capture_output=True, text=True).stdout


def _sh(command: str) -> list[str]:
    return subprocess.run(["sh", "-c", command], check=True, capture_output=True, text=True).stdout.splitlines()


def test_keyfile_digest_on_the_host_equals_the_export_digest(tmp_path, borg_env):
    _borg(borg_env, "init", "-e", "keyfile-blake2", str(tmp_path / "repo"))
    export = _borg(borg_env, "key", "export", str(tmp_path / "repo"), "-")
    seen = parse_digests(_sh(keyfile_digests_command(sh_join([str(tmp_path / "base/.config/borg/keys")]))))
    assert seen == {repo_id_of(export): key_digest(export)}
    _borg(borg_env, "init", "-e", "keyfile", str(tmp_path / "other"))
    assert len(parse_digests(_sh(keyfile_digests_command(sh_join([str(tmp_path / "base/.config/borg/keys")]))))) == 2


def test_repokey_digest_from_the_repo_config_equals_the_export_digest(tmp_path, borg_env):
    _borg(borg_env, "init", "-e", "repokey-blake2", str(tmp_path / "repo"))
    export = _borg(borg_env, "key", "export", str(tmp_path / "repo"), "-")
    assert parse_digests(_sh(repo_config_digest_command(str(tmp_path / "repo")))) == {repo_id_of(export): key_digest(export)}
    subprocess.run(["borg", "key", "change-passphrase", str(tmp_path / "repo")], check=True, capture_output=True,
                   env={**borg_env, "BORG_NEW_PASSPHRASE": "pp-new"})
    changed = parse_digests(_sh(repo_config_digest_command(str(tmp_path / "repo"))))
    assert changed[repo_id_of(export)] != key_digest(export)  # a new passphrase re-encrypts the key: a new digest


def test_no_key_no_digest(tmp_path):
    assert _sh(keyfile_digests_command(sh_join([str(tmp_path / "none")]))) == []
    assert _sh(repo_config_digest_command(str(tmp_path / "none"))) == []


def test_not_an_export_is_refused():
    with pytest.raises(ValueError, match="BORG_KEY"):
        repo_id_of("hello\nworld\n")


def test_when_the_escrow_is_renewed():
    kept = Kept("ab", "d1", "sha256:r", "keyfile-blake2", "2026-12-08T00:00:00Z", True)
    assert needs_escrow(None, "sha256:r", {}, True, True, False) == "no escrow yet"
    assert needs_escrow(None, "sha256:r", {}, True, False, False) is None  # no repo yet: nothing to export
    assert needs_escrow(kept, "sha256:r", {"ab": "d1"}, True, True, False) is None
    assert needs_escrow(kept, "sha256:r", {"ab": "d2"}, True, True, False) == "the repo's key changed"
    assert needs_escrow(kept, "sha256:other", {"ab": "d1"}, True, True, False) == "the escrow recipients changed"
    assert needs_escrow(kept, "sha256:r", {}, False, True, False) is None  # a repokey repo on a server: not visible
    assert needs_escrow(kept, "sha256:r", {"ab": "d1"}, True, False, True).startswith("the repo may be new")


def test_the_paper_key_is_borgs_own(tmp_path, borg_env):
    from pyinfra_backup.sheet import paper_key

    for mode in ("keyfile-blake2", "repokey"):
        repo = str(tmp_path / mode)
        _borg(borg_env, "init", "-e", mode, repo)
        export = _borg(borg_env, "key", "export", repo, "-")
        assert paper_key(export) == _borg(borg_env, "key", "export", "--paper", repo, "-")


def test_yubikey_serials_from_an_age_plugin_yubikey_identity_file():
    from pyinfra_backup.sheet import yubikey_serials

    text = ("#       Serial: 18765432, Slot: 1\n#         Name: age identity 1a2b3c4d\n"
            "#    Recipient: age1yubikey1q...\nAGE-PLUGIN-YUBIKEY-1XYZ\n")
    assert yubikey_serials(text) == ["18765432 (slot 1)"]
    assert yubikey_serials("AGE-SECRET-KEY-1ABC\n") == []


def test_a_servers_repos_in_one_command(tmp_path, borg_env):
    from pyinfra_backup.escrow import parse_config_digests

    exports = {}
    for name in ("host01", "host 02"):
        _borg(borg_env, "init", "-e", "repokey-blake2", str(tmp_path / name))
        exports[str(tmp_path / name)] = _borg(borg_env, "key", "export", str(tmp_path / name), "-")
    _borg(borg_env, "init", "-e", "none", str(tmp_path / "plain"))
    lines = _sh(repo_config_digest_command(*exports, str(tmp_path / "plain"), str(tmp_path / "absent")))
    assert parse_config_digests(lines) == {path: (repo_id_of(e), key_digest(e)) for path, e in exports.items()}


def test_the_examples_in_the_docstrings():
    import doctest

    from pyinfra_backup import escrow, sheet

    assert doctest.testmod(escrow).failed == 0 and doctest.testmod(sheet).failed == 0
