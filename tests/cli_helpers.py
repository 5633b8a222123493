"""Helpers the command-line tests share: run ``minivit`` in-process, check a one-line error."""

import pytest

from minivit.cli.main import main


def cli(capsys, *argv):
    """Run ``minivit argv`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, pattern=""):
    """Exit 2 and exactly one plain line ``error: ...`` on stderr (no traceback, no terminal codes)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "\x1b" not in err
    assert pattern.lower() in lines[0].lower(), lines[0]
