"""The `minivit` command line: train, compress, eval, demo, export, analyze, report, push (see README.md)."""
