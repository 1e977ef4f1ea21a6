"""Entry points that are neither deploys nor operations: `python -m cli.<name>` from the project root."""
