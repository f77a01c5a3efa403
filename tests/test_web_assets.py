"""The offline pages' web assets: pinned, copied with their licences, every CDN address replaced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from digits import web_assets
from digits.errors import DigitsError
from digits.web_assets import DATA_DOCS_ASSETS, PLOT_ASSETS, Asset, copy_assets, localize_urls

REPO = Path(__file__).resolve().parents[1]
ALL_ASSETS = [*PLOT_ASSETS, *DATA_DOCS_ASSETS.values()]


def test_every_asset_comes_from_a_package_pinned_to_one_version():
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]
    lock = json.loads((REPO / "package-lock.json").read_text())["packages"]
    for package in {asset.package for asset in ALL_ASSETS}:
        assert re.fullmatch(r"\d+\.\d+\.\d+", pinned[package]), package
        assert lock[f"node_modules/{package}"]["version"] == pinned[package]


def test_the_plots_template_loads_the_copied_vega_and_no_cdn():
    template = (REPO / "src/digits/dvc_plots.html").read_text()
    loaded = re.findall(r'<script src="([^"]+)"', template)
    assert loaded == [asset.local() for asset in PLOT_ASSETS]
    # DVC fills {scripts} with its CDN <script> tags: the template must not ask for them.
    assert "{plot_divs}" in template and "{scripts}" not in template


def _fake_package(node_modules: Path) -> Asset:
    package = node_modules / "@scope" / "lib"
    (package / "dist").mkdir(parents=True)
    (package / "dist" / "lib.css").write_text("a{}")
    (package / "fonts").mkdir()
    (package / "fonts" / "f.woff2").write_bytes(b"font")
    (package / "LICENSE.txt").write_text("MIT")
    (package / "package.json").write_text('{"version": "1.2.3"}')
    return Asset("@scope/lib", "dist/lib.css", companions=("fonts",))


def test_copy_assets_copies_the_file_its_fonts_and_the_licence(tmp_path):
    asset = _fake_package(tmp_path / "node_modules")
    vendor = copy_assets([asset], tmp_path / "page", tmp_path / "node_modules")
    assert vendor == tmp_path / "page" / "vendor"
    copied = sorted(str(p.relative_to(vendor)) for p in vendor.rglob("*") if p.is_file())
    assert copied == [
        "@scope/lib/LICENSE.txt",
        "@scope/lib/dist/lib.css",
        "@scope/lib/fonts/f.woff2",
        "@scope/lib/package.json",
    ]
    assert (tmp_path / "page" / asset.local()).read_text() == "a{}"


def test_missing_packages_name_the_file_and_make_setup(tmp_path):
    with pytest.raises(DigitsError, match=r"vega\.min\.js: missing; run `make setup`"):
        copy_assets(PLOT_ASSETS, tmp_path / "page", tmp_path / "node_modules")


def test_localize_urls_replaces_quoted_addresses_and_refuses_what_is_left():
    page = (
        '<link href="https://cdn.example/a.css" rel="stylesheet">'
        '<script src="https://cdn.example/b.js"></script>'
        '<a href="https://docs.example/guide">docs</a>'
    )
    local = {"https://cdn.example/a.css": "static/a.css", "https://cdn.example/b.js": "b.js"}
    assert localize_urls(page, local) == (
        '<link href="static/a.css" rel="stylesheet"><script src="b.js"></script>'
        '<a href="https://docs.example/guide">docs</a>'
    )
    # A file page cannot make the CORS fetch an integrity check needs: local copies drop both.
    tagged = '<script src="https://cdn.example/b.js" integrity="sha384-x" crossorigin="anonymous">'
    assert localize_urls(tagged, local) == '<script src="b.js">'
    with pytest.raises(DigitsError, match=r"still loads https://cdn\.example/b\.js"):
        localize_urls(page, {"https://cdn.example/a.css": "static/a.css"})


def test_main_copies_vega_beside_the_plots_page(tmp_path, monkeypatch):
    node_modules = tmp_path / "node_modules"
    for asset in PLOT_ASSETS:
        (node_modules / asset.package / asset.path).parent.mkdir(parents=True)
        (node_modules / asset.package / asset.path).write_text(asset.package)
        (node_modules / asset.package / "package.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert web_assets.main(["dvc_plots"]) == 0
    for asset in PLOT_ASSETS:
        assert (tmp_path / "dvc_plots" / asset.local()).read_text() == asset.package
    assert web_assets.main([]) == 2
    (node_modules / "vega" / "build" / "vega.min.js").unlink()
    assert web_assets.main(["dvc_plots"]) == 2
