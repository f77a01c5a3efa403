"""The plots page and the Data Docs render with the network cut off, in headless Chromium.

Every request that is not a local file is aborted (and recorded: there must be none). The plots
page of `dvc plots show --html-template src/digits/dvc_plots.html` (what `make plots` runs) must
draw every chart; each Data Docs page written by `validate` must be styled by Bootstrap, show Font
Awesome's icons and run its scripts (bootstrap-table, Vega-Embed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from digits.config import DataConfig, ValidationConfig
from digits.data.prepare import prepare
from digits.data.sources import pull
from digits.edges.validation import validate
from digits.web_assets import PLOT_ASSETS, copy_assets

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000

# The templates dvc.yaml uses, each on a small table of the shape it expects.
PLOTS_YAML = """\
plots:
  - curve.csv:
      x: epoch
      y: train_accuracy
  - tuning.csv:
      template: bar_horizontal
      x: mean_cv_accuracy
      y: cell
  - confusion.csv:
      template: confusion
      x: predicted
      y: actual
"""

# Every vega-embed chart, and how many of its canvas pixels are painted (0: blank).
PAINTED = """() => [...document.querySelectorAll('.vega-embed')].map(chart => {
    const marks = chart.querySelector('canvas.marks');
    if (!marks || !marks.width || !marks.height) return 0;
    const pixels = marks.getContext('2d').getImageData(0, 0, marks.width, marks.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) painted += pixels[i] > 0;
    return painted;
})"""

# What only the pinned assets set: Bootstrap's spacing and navbar, its text-success colour on Font
# Awesome's icons (drawn in Font Awesome's own font), jQuery with bootstrap-table, Vega-Embed.
STYLED = """() => {
    const css = (selector, property) => {
        const element = document.querySelector(selector);
        return element ? getComputedStyle(element)[property] : null;
    };
    const fonts = [...document.fonts];
    return {
        padding: css('.container-fluid.pl-5', 'paddingLeft'),
        navbar: css('.navbar', 'display'),
        icon: css('i.fas.text-success', 'color'),
        iconFont: fonts.some(f => f.family.includes('Font Awesome') && f.status === 'loaded'),
        scripts: typeof jQuery === 'function' && typeof jQuery.fn.bootstrapTable === 'function'
            && typeof vegaEmbed === 'function',
        table: document.querySelectorAll('.bootstrap-table').length,
    };
}"""


@pytest.fixture
def offline_page(tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page that can reach local files only; the list of what it tried beyond them."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: make chromium (apt-get install chromium)")
    remote: list[str] = []

    def local_only(route: Any) -> None:
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        context.route("**/*", local_only)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page, remote
        browser.close()
        assert not errors, errors


def test_every_dvc_plot_draws_offline(offline_page, tmp_path: Path) -> None:
    page, remote = offline_page
    project, out = tmp_path / "project", tmp_path / "dvc_plots"
    project.mkdir()
    (project / "curve.csv").write_text("epoch,train_accuracy\n1,0.5\n2,0.7\n3,0.8\n")
    (project / "tuning.csv").write_text("cell,mean_cv_accuracy\nmlp-64,0.91\nmlp-128,0.94\n")
    rows = [f"{a},{p}" for a in range(3) for p in range(3) for _ in range(1 + (a == p) * 4)]
    (project / "confusion.csv").write_text("actual,predicted\n" + "\n".join(rows) + "\n")
    (project / "dvc.yaml").write_text(PLOTS_YAML)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True, timeout=120)
    template = REPO / "src" / "digits" / "dvc_plots.html"
    show = [*dvc, "plots", "show", "--html-template", str(template), "-o", str(out)]
    subprocess.run(show, cwd=project, check=True, timeout=120, capture_output=True)
    copy_assets(PLOT_ASSETS, out)

    index = out / "index.html"
    assert index.read_text().count("vegaEmbed(") == 3
    page.goto(index.as_uri())
    page.wait_for_function(
        f"() => ({PAINTED})().filter(n => n > 0).length === 3", timeout=TIMEOUT_MS
    )
    assert all(n > 500 for n in page.evaluate(PAINTED))
    assert remote == []


def test_data_docs_are_styled_offline(offline_page, data_cfg: DataConfig, tmp_path: Path) -> None:
    page, remote = offline_page
    quick = data_cfg.model_copy(
        update={"svhn_synthetic": True, "svhn_synthetic_train": 40, "svhn_synthetic_test": 20}
    )
    pull("svhn", quick)
    prepare("svhn", quick)
    validate("svhn", quick, ValidationConfig(), tmp_path / "reports")
    docs = tmp_path / "reports" / "svhn" / "data_docs"
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) == 3
    for html in pages:
        page.goto(html.as_uri())
        page.wait_for_function("() => document.fonts.ready.then(() => true)")
        page.wait_for_function(f"() => ({STYLED})().iconFont || !document.querySelector('i.fas')")
        styled = page.evaluate(STYLED)
        assert styled["padding"] == "48px" and styled["navbar"] == "flex", (html, styled)
        assert styled["scripts"], (html, styled)
        if html.name == "index.html":
            assert styled["icon"] == "rgb(40, 167, 69)" and styled["iconFont"], styled
            assert styled["table"] >= 1, styled
    assert remote == []
