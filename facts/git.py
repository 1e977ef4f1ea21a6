"""Facts about the config repo (`config_repo` host data), each read in ONE remote command.

    pyinfra INVENTORY fact facts.git.ConfigRepoSync     # per remote and ref: local vs remote, ahead/behind

`GitRepoSync` reads the repo and `git ls-remote` of every remote in one sectioned script (see
pyinfra_backup/git.py). pyinfra 3 does not cache facts: `repo_state(host, config)` keeps this run's
view of a host until an operation of ours changes the repo or a remote (`forget`), so a deploy whose
operations all find nothing to do reads the host once.
"""

from __future__ import annotations

from pyinfra import context
from pyinfra.api import FactBase

from pyinfra_backup.git import (
    ConfigRepo, RepoState, TagState, parse_state, parse_tag_state, problems, state_command, sync_plan, tag_sections,
)
from pyinfra_backup.shell import sectioned_script


class GitRepoSync(FactBase):
    """The repo and, per configured remote, its refs (`git ls-remote`) with ahead/behind counts for the
    configured branches. Example: `host.get_fact(GitRepoSync, config=ConfigRepo.from_data(data))` -> RepoState."""

    def command(self, config: ConfigRepo | None = None) -> str:
        self.config = config = config or _host_config_or_fail()
        return state_command(config)

    def process(self, output) -> RepoState:
        return parse_state(self.config, output)


def host_config(host) -> ConfigRepo | None:
    data = host.data.get("config_repo")
    return ConfigRepo.from_data(data) if data else None


def _host_config_or_fail() -> ConfigRepo:
    """The current host's `config_repo` (a fact's `config` given no value, from the command line)."""
    config = host_config(context.host)
    if config is None:
        raise ValueError(f"{context.host.name}: no config_repo in its data")
    return config


class ConfigRepoSync(GitRepoSync):
    """The host's `config_repo` against each of its remotes, for people (None without `config_repo`):
    `{"path", "error", "problems": [..], "remotes": {name: {"url", "configured", "error",
    "refs": {ref: {"local", "remote", "status", "ahead", "behind"}}}}}`."""

    def command(self) -> str:  # type: ignore[override]
        config = host_config(context.host)
        if config is None:
            self.config = None
            return "true"
        return super().command(config)

    def process(self, output) -> dict | None:  # type: ignore[override]
        if self.config is None:
            return None
        state = super().process(output)
        plan = sync_plan(state, self.config) if state.error is None else {}
        return {
            "path": state.path,
            "error": state.error,
            "problems": problems(state, self.config, plan) if state.error is None else [],
            "remotes": {
                name: {
                    "url": remote.url,
                    "configured": remote.configured,
                    "error": remote.error,
                    "refs": {
                        sync.ref: {"local": sync.local, "remote": sync.remote_id, "status": sync.status,
                                   "ahead": sync.ahead, "behind": sync.behind}
                        for sync in plan.get(name, [])
                    },
                }
                for name, remote in state.remotes.items()
            },
        }


class GitTag(FactBase):
    """A tag name in a repo and the commit a ref names, for `release_tag`.
    Example: `host.get_fact(GitTag, config=config, tag="v1.2.0", ref="HEAD")` -> TagState."""

    def command(self, tag: str, ref: str, config: ConfigRepo | None = None) -> str:
        self.tag = tag
        config = config or _host_config_or_fail()
        return sectioned_script(tag_sections(config, tag, ref))

    def process(self, output) -> TagState:
        return parse_tag_state(output, self.tag)


_CACHE = "_pyinfra_backup_git"  # {"config": ConfigRepo, "state": RepoState} on the host object


def _cache(host) -> dict:
    if not hasattr(host, _CACHE):
        setattr(host, _CACHE, {})
    return getattr(host, _CACHE)


def repo_state(host, config: ConfigRepo) -> RepoState:
    """This run's view of the host's repo and remotes, read once until `forget(host)`."""
    cache = _cache(host)
    if cache.get("config") != config or "state" not in cache:
        cache.clear()
        cache["state"] = host.get_fact(GitRepoSync, config=config)
        cache["config"] = config
    return cache["state"]


def forget(host) -> None:
    """Drop this run's view of the repo: an operation of ours is about to change it or a remote."""
    _cache(host).clear()
