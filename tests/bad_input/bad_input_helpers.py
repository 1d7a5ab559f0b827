"""The checks every failing command of the bad-input suite must pass (a module of its own name, so that
``from bad_input_helpers import ...`` never finds another folder's conftest)."""

from __future__ import annotations

from pathlib import Path

from psfax.cli import main

ZTF_HEADER = {"GAIN": 6.0, "READNOI": 9.0, "SATURATE": 60000.0, "MAGZP": 26.0, "MAGZPUNC": 0.0,
              "SEEING": 2.0, "PIXSCALE": 1.0}


def assert_untouched(out: Path) -> None:
    """Only the earlier result, unchanged: nothing destroyed, nothing half-written, no staging left."""
    assert sorted(p.name for p in out.iterdir()) == ["psf.json"]
    assert (out / "psf.json").read_text() == '{"old": true}\n'


def fails_cleanly(capsys, argv, *names, code: int = 2, reported=()) -> str:
    """Run ``psfax argv`` in this process; assert exit ``code``, one error line naming each of
    ``names``, no traceback, and each of ``reported`` somewhere in stderr (per-file reasons).
    Returns the line."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("psfax: error:")]
    assert rc == code, captured.err
    assert len(errors) == 1, captured.err
    for name in names:
        assert str(name) in errors[0], errors[0]
    for text in reported:
        assert text in captured.err, captured.err
    return errors[0]
