"""JavaScript and CSS for the project's HTML pages, served from the project instead of CDNs.

`dvc plots show` (Vega, Vega-Lite, Vega-Embed) and Great Expectations' Data Docs (Bootstrap, Font
Awesome, jQuery, Vega...) name CDNs for their scripts and styles, so without a network their
charts are blank and their pages unstyled. The same files come from npm packages pinned in
`package.json` and `package-lock.json` (`make setup` runs `npm ci`, into `node_modules/`).
`copy_assets` copies the files a page loads, with each package's licence and `package.json`, into
a `vendor/` folder beside the page; `localize_urls` points a page's CDN addresses at that copy.

`python -m digits.web_assets DIR` copies Vega, Vega-Lite and Vega-Embed into `DIR/vendor/`
(what `make plots` does after `dvc plots show --html-template src/digits/dvc_plots.html`).
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from digits.errors import DigitsError

VENDOR = "vendor"


def find_node_modules() -> Path:
    """Where `npm ci` installed the packages.

    Returns:
        `node_modules/` in the working folder (where make and dvc run) when there is one, else the
        one in the checkout this package runs from (an editable install).
    """
    here = Path("node_modules")
    checkout = Path(__file__).resolve().parents[2] / "node_modules"
    return here if here.is_dir() or not checkout.is_dir() else checkout


@dataclass(frozen=True)
class Asset:
    """One file of an npm package that a page loads.

    Attributes:
        package: the npm package, as named in package.json.
        path: the file inside the package.
        companions: folders inside the package that the file loads by relative address (fonts).
    """

    package: str
    path: str
    companions: tuple[str, ...] = ()

    def local(self) -> str:
        """Address of the copy, relative to the page's folder."""
        return f"{VENDOR}/{self.package}/{self.path}"


VEGA = Asset("vega", "build/vega.min.js")
VEGA_LITE = Asset("vega-lite", "build/vega-lite.min.js")
VEGA_EMBED = Asset("vega-embed", "build/vega-embed.min.js")
# What `dvc plots show` needs; src/digits/dvc_plots.html loads them in this order.
PLOT_ASSETS = (VEGA, VEGA_LITE, VEGA_EMBED)

_BOOTSTRAP_TABLE = "bootstrap-table"
_FILTER_CONTROL = "dist/extensions/filter-control/bootstrap-table-filter-control"
# Every CDN address Great Expectations' Data Docs (1.x) name, and the file of a pinned package
# that replaces it. Popper is 1.16.1 where the pages name 1.12.9 (Bootstrap 4.3.1 needs 1.14.7+).
DATA_DOCS_ASSETS: dict[str, Asset] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": Asset(
        "bootstrap", "dist/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": Asset(
        "bootstrap", "dist/js/bootstrap.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": Asset(
        "@forevolve/bootstrap-dark", "dist/css/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": Asset(
        "bootstrap-datepicker", "dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": Asset(
        "bootstrap-datepicker", "dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": Asset(
        "@fortawesome/fontawesome-free", "css/all.min.css", companions=("webfonts",)
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": Asset(
        "popper.js", "dist/umd/popper.min.js"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": Asset("jquery", "dist/jquery.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": Asset(
        _BOOTSTRAP_TABLE, "dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": Asset(
        _BOOTSTRAP_TABLE, "dist/bootstrap-table.min.js"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.1/{_FILTER_CONTROL}.min.js": Asset(
        _BOOTSTRAP_TABLE, f"{_FILTER_CONTROL}.min.js"
    ),
    # The pages name 1.19.0 for these two; the package has one version (1.19.1).
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER_CONTROL}.css": Asset(
        _BOOTSTRAP_TABLE, f"{_FILTER_CONTROL}.css"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER_CONTROL}.min.css": Asset(
        _BOOTSTRAP_TABLE, f"{_FILTER_CONTROL}.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": VEGA,
    "https://cdn.jsdelivr.net/npm/vega-lite@5": VEGA_LITE,
    "https://cdn.jsdelivr.net/npm/vega-embed@6": VEGA_EMBED,
}

# A <script src> or <link href> that leaves the machine.
_REMOTE_LOAD = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["'](https?://[^"']+)["']""")
_SCRIPT_OR_LINK = re.compile(r"<(?:script|link)\b[^>]*>")
# Subresource integrity asks for a CORS fetch, which a page opened from a file cannot make (and
# the hashes name the CDN's files: Popper's is another version). npm checked the packages against
# package-lock.json's hashes when it installed them.
_INTEGRITY = re.compile(r"""\s+(?:integrity|crossorigin)=(?:"[^"]*"|'[^']*'|[^\s>]+)""")


def copy_assets(
    assets: tuple[Asset, ...] | list[Asset], page_dir: Path, node_modules: Path | None = None
) -> Path:
    """Copy `assets` (with their packages' licences) into `page_dir/vendor/`.

    Args:
        assets: the files to copy.
        page_dir: the folder of the page that loads them.
        node_modules: where the packages are; by default `find_node_modules()`.

    Returns:
        The vendor folder.

    Raises:
        DigitsError: a package or file is missing from `node_modules` (run `make setup`).
    """
    vendor = Path(page_dir) / VENDOR
    node_modules = find_node_modules() if node_modules is None else Path(node_modules)
    for asset in assets:
        package = node_modules / asset.package
        source = package / asset.path
        if not source.is_file():
            raise DigitsError(
                f"{source}: missing; run `make setup` (or `npm ci`) in the project folder to "
                "install the pinned web assets"
            )
        target = vendor / asset.package
        (target / asset.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / asset.path)
        for folder in asset.companions:
            shutil.copytree(package / folder, target / folder, dirs_exist_ok=True)
        # The licence (kept beside the copy, as the licences require) and the version copied.
        for kept in [package / "package.json", *package.glob("LICEN[CS]E*")]:
            shutil.copyfile(kept, target / kept.name)
    return vendor


def localize_urls(html: str, replacements: dict[str, str]) -> str:
    """`html` with each quoted address in `replacements` (src or href) replaced by its value.

    Local <script> and <link> tags lose their `integrity` and `crossorigin` attributes: a page
    opened from a file cannot fetch with CORS, which integrity checks require.

    Raises:
        DigitsError: a script or stylesheet is still loaded from the network afterwards (a new
            address: add its package to package.json and its address here).
    """
    for url, local in replacements.items():
        html = html.replace(f'"{url}"', f'"{local}"')
    html = _SCRIPT_OR_LINK.sub(
        lambda tag: tag[0] if "://" in tag[0] else _INTEGRITY.sub("", tag[0]), html
    )
    remote = sorted(set(_REMOTE_LOAD.findall(html)))
    if remote:
        raise DigitsError(
            f"the page still loads {', '.join(remote)} from the network; add the package to "
            "package.json and the address to digits.web_assets"
        )
    return html


def main(argv: list[str] | None = None) -> int:
    """`python -m digits.web_assets DIR`: Vega, Vega-Lite, Vega-Embed into DIR/vendor."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m digits.web_assets DIR", file=sys.stderr)
        return 2
    try:
        copy_assets(PLOT_ASSETS, Path(args[0]))
    except DigitsError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
