"""Malformed model files: one BadFileError naming the file and the field (API), one line and exit 2 (CLI)."""

import json

import jax
import numpy as np
import pytest

from psfax.cli import main
from psfax.clusters.encoder import EncoderSpec, TileEncoder, load_model, save_model
from psfax.errors import BadFileError

SPEC = EncoderSpec(tile=4, widths=(4, 4), context_layers=1, groups=2, field_size=16)


@pytest.fixture
def stem(tmp_path):
    stem = tmp_path / "m"
    save_model(TileEncoder(SPEC, np.zeros(4), np.ones(4), jax.random.PRNGKey(0)), SPEC, stem, {"note": "toy"})
    return stem


def _edit_json(stem, edit):
    meta = json.loads(stem.with_suffix(".json").read_text())
    edit(meta)
    stem.with_suffix(".json").write_text(json.dumps(meta))


def _set_spec(key, value):
    return lambda meta: meta["spec"].__setitem__(key, value)


CASES = {
    "tile_0": (_set_spec("tile", 0), r"spec.tile=0 must be a power of two"),
    "tile_not_power_of_two": (_set_spec("tile", 6), r"spec.tile=6 must be a power of two"),
    "groups_0": (_set_spec("groups", 0), r"spec.groups=0 must be a positive integer dividing every width"),
    "groups_not_dividing": (_set_spec("groups", 3), r"spec.groups=3 must be a positive integer dividing"),
    "widths_empty": (_set_spec("widths", []), r"spec.widths=\[\] must be 2 positive integers"),
    "widths_negative": (_set_spec("widths", [4, -4]), r"spec.widths=\[4, -4\] must be 2 positive integers"),
    "context_negative": (_set_spec("context_layers", -1), r"spec.context_layers=-1 must be an integer >= 0"),
    "field_size_not_multiple": (_set_spec("field_size", 18), r"spec.field_size=18 must be a positive multiple"),
    "bands_empty": (_set_spec("bands", []), r"spec.bands=\[\] must be a non-empty list"),
    "threshold_nan": (_set_spec("threshold", float("nan")), r"spec.threshold=nan must be a probability"),
    "cut_negative": (_set_spec("candidate_cut", -1.0), r"spec.candidate_cut=-1.0 must be a finite number >= 0"),
    "cut_text": (_set_spec("candidate_cut", "4"), r"spec.candidate_cut='4' must be a finite number >= 0"),
    "unknown_key": (_set_spec("depth", 3), r"spec has unknown keys \['depth'\]"),
    "missing_record": (lambda meta: meta.pop("record"), r"'record' is missing or not an object"),
    "missing_spec": (lambda meta: meta.pop("spec"), r"'spec' is missing or not an object"),
    "wrong_format": (lambda meta: meta.__setitem__("format", "other/1"), r"not a psfax cluster-encoder description"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_spec_raises_naming_file_and_field(stem, case):
    edit, message = CASES[case]
    _edit_json(stem, edit)
    with pytest.raises(BadFileError, match=r"model .*m\.json: " + message):
        load_model(stem)


def test_json_that_is_not_json(stem):
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(BadFileError, match=r"m\.json: not JSON"):
        load_model(stem)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights_are_refused(stem, bad):
    with np.load(stem.with_suffix(".npz")) as data:
        leaves = {k: data[k].copy() for k in data.files}
    leaves["leaf_003"].flat[0] = bad
    np.savez(stem.with_suffix(".npz"), **leaves)
    with pytest.raises(BadFileError, match=r"m\.npz: leaf 3 holds NaN or infinite weights"):
        load_model(stem)


@pytest.mark.parametrize("case", ["tile_0", "groups_0", "widths_empty", "missing_record"])
def test_infer_cli_with_a_malformed_model_exits_2_with_one_line(stem, tmp_path, capsys, case):
    _edit_json(stem, CASES[case][0])
    cube = tmp_path / "cube.fits"
    cube.write_bytes(b"")  # never read: the model is checked first
    assert main(["clusters", "infer", str(cube), "--out-dir", str(tmp_path / "out"), "--model", str(stem)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psfax: error: ") and "m.json" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_infer_cli_with_nan_weights_exits_2(stem, tmp_path, capsys):
    with np.load(stem.with_suffix(".npz")) as data:
        leaves = {k: data[k].copy() for k in data.files}
    leaves["leaf_000"][:] = np.nan
    np.savez(stem.with_suffix(".npz"), **leaves)
    assert main(["clusters", "infer", str(tmp_path / "none.fits"), "--out-dir", str(tmp_path / "o"),
                 "--model", str(stem)]) == 2
    assert "holds NaN or infinite weights" in capsys.readouterr().err
