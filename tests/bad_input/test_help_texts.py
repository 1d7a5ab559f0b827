"""Help texts print every word (#20 item 13, #21 item 9): no rich markup eats a bracketed word,
on/off flags carry no ``<bool>`` placeholder, ``psfax run --help`` shows no sub-command list."""

from __future__ import annotations

import pytest

from psfax.cli import main
from psfax.version import __version__

COMMANDS = [["stars", "fit"], ["stars", "forced"], ["aia", "prep"], ["aia", "psf"], ["run"],
            ["run", "stars-fit"], ["clusters", "infer"], ["clusters", "evaluate"], ["data", "fetch"]]


def _help(capsys, argv) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_has_no_eaten_words_or_bool_placeholders(capsys, argv):
    text = _help(capsys, argv)
    first = text.splitlines()[0]
    assert first.startswith("Usage: ") and " ".join(argv) in first, first
    assert "<bool>" not in text
    # rich markup turned "[pointing] -> [deconvolve]" into "  ->  ->" and "side [px], odd" into "side , odd"
    assert "->  ->" not in text and " , " not in text


def test_aia_prep_help_keeps_its_bracketed_stages(capsys):
    text = _help(capsys, ["aia", "prep"])
    assert "(pointing) -> (deconvolve) -> (register)" in text


def test_run_help_shows_no_subcommand_list(capsys):
    text = _help(capsys, ["run"])
    assert "COMMAND [ARGS]" not in text
    assert "stars-fit" in text  # the jobs are named


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"psfax {__version__}"
