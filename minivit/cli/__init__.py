"""The `minivit` command line: train, compress, eval, demo, export, analyze, report (see README.md)."""
