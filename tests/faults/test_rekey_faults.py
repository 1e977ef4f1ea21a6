"""Scenario 8 (issue 8): a rekey with one undecryptable secret changes no file; no secret is lost.

The secrets repo of tests/integration/test_rekey.py (real ssh-ed25519 and X25519 keys, Go age and rage
files), rekeyed on the operator's machine (`@local`) as users do: `pyinfra -y @local deploys/rekey.py`.
"""

from __future__ import annotations

from tests.integration.helpers import pyinfra
from tests.integration.test_rekey import _no_plaintext, repo  # noqa: F401 (the fixture)

# Who still reads each secret afterwards (recipients from the rules of test_rekey.py).
READERS = {"wifi.age": "operator", "borg.age": "admin", "sub/token.age": "admin", "host-only.age": "host1"}


def test_8_one_undecryptable_secret_changes_no_file(repo):  # noqa: F811
    before = repo.snapshot()
    # Forced: every secret, including host-only.age that no configured identity can read.
    run = pyinfra(repo.inventory, "deploys/rekey.py", "--data", "agenix.force=true")
    assert run.returncode != 0, run.stdout
    assert "nothing was changed: 1 of 4 secret(s) to rekey failed" in run.stdout
    assert "host-only.age: cannot decrypt: No matching keys found" in run.stdout
    assert repo.snapshot() == before  # zero files changed, the manifest neither
    assert not list(repo.dir.rglob("*.rekey.tmp"))
    for name, reader in READERS.items():
        assert repo.decrypts(name, reader), f"{name} no longer decrypts for {reader}"
    _no_plaintext(repo, run.stdout)
