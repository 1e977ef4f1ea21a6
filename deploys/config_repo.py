"""Push the config repo to all its remotes (`config_repo` host data).

    pyinfra -y INVENTORY deploys/config_repo.py      # usually INVENTORY = @local, any host works
    pyinfra -y INVENTORY tasks.git.release_tag v1.2.0 "Release 1.2.0"   # before, to release

On each host with `config_repo`: every remote of `remotes` exists with its URL, then the configured
`branches` (default: the current branch) and, with `push_tags` (default true), the annotated tags they
carry are pushed to every remote where that is new or a fast-forward. A re-run changes nothing and
reads the host in one command. Never forced: a remote with commits the repo lacks is named with its
branch and ahead/behind counts, left as it is, and fails the host after the other remotes are pushed.
"""

from pyinfra import host

from pyinfra_backup.validate import require_valid_inventory
from tasks import git

require_valid_inventory()

if host.data.get("config_repo"):
    git.remotes(name="Config repo: remotes")
    git.push(name="Config repo: push branches and tags")
