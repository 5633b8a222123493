"""The `minivit` command line: train, compress, eval, demo (see docs/cli.md)."""
