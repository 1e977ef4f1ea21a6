"""Baseline for bench (c)/(d): a one-operation pyinfra deploy that changes nothing.

`files.directory` reads one fact (one remote command per host) and finds /tmp in place:
the cheapest useful no-op pyinfra run on the same fleet, inventory and --parallel.
"""

from pyinfra.operations import files

files.directory(name="/tmp exists", path="/tmp", present=True)
