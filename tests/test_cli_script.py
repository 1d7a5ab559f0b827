"""The ``psfax`` console script ends with ``os._exit``: its output and exit code must still arrive whole."""

import subprocess
import sys

PROGRAM = "import sys; sys.argv = ['psfax'] + sys.argv[1:]; from psfax.cli import script; script()"


def _script(*args):
    return subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True, timeout=120)


def test_script_flushes_its_output_and_keeps_the_exit_code():
    from psfax import __version__

    done = _script("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"psfax {__version__}")
    # stdout is a pipe here (block-buffered): a missing flush before os._exit would lose this text
    help_text = _script("stars", "fit", "--help")
    assert help_text.returncode == 0 and "--psf-oversampling" in help_text.stdout


def test_script_user_error_is_one_line_with_code_2(tmp_path):
    done = _script("stars", "fit", str(tmp_path / "missing.fits"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("psfax: error:") and len(done.stderr.strip().splitlines()) == 1
