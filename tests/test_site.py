"""The documentation site (`make docs`, helpers.harness.site): its pages are cut from the README with working
links, and the built site, opened page by page in a real headless browser, shows its figures and has no broken
link. The browser is Chromium: $SITE_BROWSER, else `chromium`/`chromium-browser`/`google-chrome` on the PATH
(Debian: `apt-get install chromium`; .ci/run installs it), else Playwright's own if `playwright install
chromium` fetched it. Without one the browser test is skipped, unless SITE_BROWSER_REQUIRED=1 (CI) makes a
missing browser a failure."""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from helpers.harness.site import PAGES, REPOSITORY, assemble, build_site, rewrite_links, sections, slug

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "outputs" / "site" / "screenshots"


def test_the_pages_are_the_readmes_sections_with_links_that_work_on_the_site(tmp_path):
    order = assemble(tmp_path / "src", ROOT)
    found = sections((ROOT / "README.md").read_text())
    for name, (title, starts) in PAGES.items():
        page = (tmp_path / "src" / f"{name}.md").read_text()
        assert page.startswith(f"# {title}\n")
        for start in starts:  # every section it names, once
            heading = next(h for h in found if h and h.startswith(start))
            assert page.count(f"### {heading}\n") == 1
    assert "| Why merge? |" in (tmp_path / "src" / "answers.md").read_text()  # the answers first
    assert "](docs/site/" not in (tmp_path / "src" / "performance.md").read_text()
    assert order[0] == "answers" and "notebooks/06_grpo_reference" in order
    assert (tmp_path / "src" / "notebooks" / "06_grpo_reference.ipynb").exists()
    index = (tmp_path / "src" / "index.md").read_text()
    assert all(page in index for page in order)  # every page in the table of contents


def test_links_go_to_the_executed_notebook_a_copied_figure_or_github(tmp_path):
    text = ("[03](notebooks/03_ppo_lora.ipynb) [run](docs/notebooks/03_ppo_lora.ipynb) [arch](docs/architecture.md) ![f](docs/tutorial/smol/figures/03_ppo_curves.png) "
            "[code](src/helpers/ppo.py) [dir](benchmarks/) [web](https://example.org/x) [here](#the-recipe) "
            "[page](docs/site/performance.md)")
    out = rewrite_links(text, ROOT, tmp_path)
    assert "[03](notebooks/03_ppo_lora.ipynb)" in out and "[page](performance.md)" in out
    assert "[run](notebooks/03_ppo_lora.ipynb)" in out and f"[arch]({REPOSITORY}/blob/main/docs/architecture.md)" in out
    assert "![f](docs/tutorial/smol/figures/03_ppo_curves.png)" in out
    assert (tmp_path / "docs/tutorial/smol/figures/03_ppo_curves.png").is_file()  # copied beside the page
    assert f"[code]({REPOSITORY}/blob/main/src/helpers/ppo.py)" in out and f"[dir]({REPOSITORY}/tree/main/benchmarks)" in out
    assert "[web](https://example.org/x)" in out and "[here](#the-recipe)" in out
    moved = rewrite_links("[run](#what-the-tutorial-run-shows)", ROOT, tmp_path, anchors={
        "what-the-tutorial-run-shows": "answers"}, page="recipe")
    assert moved == "[run](answers.md#what-the-tutorial-run-shows)"  # the section is on another page now
    assert slug("## What the tutorial run shows (a real `smol` run)") == "what-the-tutorial-run-shows-a-real-smol-run"


def _browser() -> str | None:
    named = os.environ.get("SITE_BROWSER")
    if named:
        return named
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _internal_target(html: Path, href: str) -> Path | None:
    """The file an in-site link points to (None for web links, mail, javascript and the page's own anchors)."""
    url = urlparse(href)
    if url.scheme in ("http", "https", "mailto", "javascript", "data") or not url.path:
        return None
    path = unquote(url.path)
    return (Path(path) if url.scheme == "file" else (html.parent / path)).resolve()


def _figures_in_source(page: Path, source: Path) -> int:
    """The figures a built page's source holds: markdown images, or a notebook's PNG outputs."""
    md, notebook = source / page.with_suffix(".md"), source / page.with_suffix(".ipynb")
    if md.exists():
        return md.read_text().count("![")
    if notebook.exists():
        cells = json.loads(notebook.read_text())["cells"]
        return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    return 0


@pytest.mark.slow
def test_the_site_builds_and_every_page_renders_its_figures_without_a_broken_link(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the [docs] extra)")
    executable = _browser()
    if executable is None and os.environ.get("SITE_BROWSER_REQUIRED") == "1":
        pytest.fail("SITE_BROWSER_REQUIRED=1 but no Chromium found: apt-get install chromium, or set SITE_BROWSER")
    index = build_site(tmp_path / "site", ROOT)
    html = index.parent
    pages = sorted(p for p in html.rglob("*.html") if not p.name.startswith(("genindex", "search"))
                   and "_static" not in p.parts and "_sources" not in p.parts)
    assert {"index.html", "answers.html", "performance.html"} <= {p.name for p in pages}
    assert len([p for p in pages if p.parent.name == "notebooks"]) == len(list((ROOT / "docs/notebooks").glob("*.ipynb")))
    with sync_playwright() as play:
        try:
            browser = play.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as e:  # no browser of Playwright's own either
            if os.environ.get("SITE_BROWSER_REQUIRED") == "1":
                raise
            pytest.skip(f"no headless Chromium to open the site with ({str(e).splitlines()[0]})")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        broken, empty, shown_any = [], [], False
        for html_page in pages:
            page.goto(html_page.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && "
                                   "i.naturalWidth > 0])")
            # a web image (the Colab badge) cannot load offline: only the site's own figures must render
            empty += [f"{html_page.name}: {src}" for src, shown in images if not shown and not src.startswith("http")]
            expected = _figures_in_source(html_page.relative_to(html), tmp_path / "site" / "src")
            assert len(images) >= expected, f"{html_page.name}: {len(images)} images shown, its source has {expected}"
            shown_any |= expected > 0
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                target, anchor = _internal_target(html_page, href), unquote(urlparse(href).fragment)
                if target is not None and (not target.exists() or (
                        anchor and target.suffix == ".html" and f'id="{anchor}"' not in target.read_text())):
                    broken.append(f"{html_page.relative_to(html)} -> {href}")
            if html_page.name == "answers.html":
                assert "Why merge?" in page.inner_text("main")
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "answers.png"), full_page=False)
        browser.close()
    assert shown_any, "no page of the site has a figure"
    assert not empty, f"figures that do not render: {empty}"
    assert not broken, f"broken links: {broken[:20]}"
