"""``report.html`` (psfax.io.report_page): self-contained, every figure decoded by headless Chromium."""

from __future__ import annotations

import numpy as np

from psfax.io.report_page import write_report


def _png(path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().imshow(np.arange(16.0).reshape(4, 4))
    fig.savefig(path, format="png", dpi=50)
    return path


def test_page_is_self_contained_and_counts_decoded_figures(tmp_path, render_dom):
    good = _png(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:100])  # a cut PNG: the browser cannot decode it
    (tmp_path / "table.parquet").write_bytes(b"x")
    page = write_report(tmp_path, "a <title> & more", [("rows", "3 < 4")],
                        tables={"cuts": (("cut", "left"), [("edge", 7)])},
                        figures=[good, broken], files=[tmp_path / "table.parquet", tmp_path / "absent.fits"])
    text = page.read_text()
    assert "a &lt;title&gt; &amp; more" in text and "3 &lt; 4" in text  # escaped
    assert 'href="table.parquet"' in text and "absent.fits" not in text  # absent files are not linked
    assert "http" not in text  # no external asset: the figures are data URIs
    # the page's own count tells a decoded figure from a broken one, so the stars test can trust "4/4"
    assert 'data-figures-loaded="1/2"' in render_dom(page)
