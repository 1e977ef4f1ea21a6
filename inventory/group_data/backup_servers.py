"""The repo server of inventory/example.py (NixOS' `services.borgbackup.repos`).

Enrolled hosts get `repos.<host>` (path /var/lib/borgbackup/<host>) with their own
append-only key without being listed here. The operator's key reaches every repo.
"""

borgbackup = {
    "repos": {},
    "operatorKeys": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM1Rpr3K2hS0VrY0tH2XbqL3n5m0ZcXq3r8f2kUq3Lw9 operator@workstation",
    ],
}
