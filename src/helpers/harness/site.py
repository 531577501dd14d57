"""The documentation site (`make docs`): the executed notebooks of `docs/notebooks/` and a few pages, built with
Sphinx, myst-nb and the book theme (the stack behind Jupyter Book 1). Jupyter Book 2 (MyST) fetches its theme
from api.mystmd.org at build time, which an offline machine cannot reach, so the site is built the way Jupyter
Book 1 built it.

Nothing is written twice: the pages are the README's own sections (the answers, the recipe, running at scale,
troubleshooting), cut out by heading at build time, and `docs/site/*.md` (performance); `make publish`
regenerates the generated blocks in both. Links are rewritten for the site: a notebook to its page, a file of
`docs/` copied beside the page, anything else of the repository to its page on GitHub.

    python -m helpers.harness.site [--out DIR]   # DIR/html/index.html (default: outputs/site)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..artifacts import output_dir, project_root
from .readme import ANSWERS_BEGIN, ANSWERS_END

REPOSITORY = "https://github.com/lora-rlhf-tutorial/lora-rlhf-tutorial"
SITE_SOURCE = Path("docs") / "site"  # conf.py and the pages the README does not hold
# page: (title, the README sections it is made of, by the start of their heading)
PAGES = {
    "answers": ("The answers", ["The thread's questions", "Which arm is my framework?", "What the tutorial run shows"]),
    "recipe": ("The recipe", ["The recipe", "Two commands", "Profiles", "One output folder", "On Colab",
                              "PPO (owned by the package)"]),
    "scale": ("Running at scale", ["Running the study on more machines"]),
    "troubleshooting": ("Troubleshooting", ["Troubleshooting"]),
}
HAND_PAGES = ("performance",)  # docs/site/<name>.md
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")


def sections(readme: str) -> dict[str, str]:
    """The README's `## ` sections by heading, each with its heading line; "" holds the text before the first."""
    parts = re.split(r"^(## .*)$", readme, flags=re.M)
    found = {"": parts[0]}
    for heading, body in zip(parts[1::2], parts[2::2]):
        found[heading[3:].strip()] = heading + body
    return found


def pick(found: dict[str, str], start: str) -> str:
    matches = [text for heading, text in found.items() if heading and heading.startswith(start)]
    if len(matches) != 1:
        raise ValueError(f"The README has {len(matches)} sections whose heading starts with {start!r} (the site's "
                         f"pages are cut from it by heading: helpers.harness.site.PAGES); its headings: "
                         f"{[h for h in found if h]}")
    return matches[0]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MyST (myst_heading_anchors) make it: "## The recipe" -> "the-recipe"."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def rewrite_links(text: str, root: Path, build: Path, page_dir: str = "", anchors: dict[str, str] | None = None,
                  page: str = "") -> str:
    """Links of README text made to work on the site: `notebooks/X.ipynb` (or its executed copy in docs/notebooks/)
    to the executed notebook's page, a file under docs/ (a figure, a table) copied into the build at the same path, a page of docs/site/ to its page, anything else in the
    repository to GitHub; an anchor of a README section that is on another page (`anchors`: anchor -> page) to
    that page; web links and other anchors as they are."""
    def fix(match):
        label, target = match.group(1), match.group(2)
        if target.startswith("#") and anchors and anchors.get(target[1:], page) != page:  # a section now elsewhere
            return f"{label}({page_dir}{anchors[target[1:]]}.md{target})"
        if re.match(r"^(https?:|mailto:|#)", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        anchor = f"#{anchor}" if anchor else ""
        if re.match(r"^(docs/)?notebooks/[^/]+\.ipynb$", path):  # the lesson or its executed copy: its page
            return f"{label}({page_dir}notebooks/{Path(path).name}{anchor})"
        if path.startswith(str(SITE_SOURCE) + "/") and path.endswith(".md"):
            return f"{label}({page_dir}{Path(path).name}{anchor})"
        source = root / path
        if path.startswith("docs/") and source.is_file() and source.suffix not in (".md", ".ipynb"):
            (build / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, build / path)
            return f"{label}({page_dir}{path}{anchor})"
        kind = "tree" if source.is_dir() else "blob"
        return f"{label}({REPOSITORY}/{kind}/main/{path.rstrip('/')}{anchor})"
    return LINK.sub(fix, text)


def assemble(build: Path, root: Path | None = None) -> list[str]:
    """Write the site's sources into `build`: conf.py, the pages, the executed notebooks. Returns the pages in
    the order of the table of contents."""
    root = Path(root or project_root())
    notebooks = sorted((root / "docs" / "notebooks").glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"No executed notebooks in {root / 'docs' / 'notebooks'}: run `make tutorial` and "
                                f"`make publish` first (the site shows the published runs).")
    if build.exists():
        shutil.rmtree(build)
    (build / "notebooks").mkdir(parents=True)
    shutil.copy2(root / SITE_SOURCE / "conf.py", build / "conf.py")
    for notebook in notebooks:
        shutil.copy2(notebook, build / "notebooks" / notebook.name)
    readme = (root / "README.md").read_text()
    found = sections(readme)
    pages = {}
    for name, (title, starts) in PAGES.items():
        body = "\n".join(pick(found, s).replace("## ", "### ", 1).replace("\n## ", "\n### ") for s in starts)
        pages[name] = f"# {title}\n\n{body}"
    pages["answers"] = pages["answers"].replace("# The answers\n\n", "# The answers\n\n" + _answers_first(readme), 1)
    for name in HAND_PAGES:  # written to render on GitHub: their links are relative to docs/site/
        pages[name] = LINK.sub(lambda m: m.group(0) if re.match(r"^(https?:|mailto:|#)", m.group(2)) else
                               f"{m.group(1)}({os.path.normpath(SITE_SOURCE / m.group(2))})",
                               (root / SITE_SOURCE / f"{name}.md").read_text())
    order = ["answers", "recipe", *[f"notebooks/{n.stem}" for n in notebooks], "performance", "scale",
             "troubleshooting"]
    intro = found[""].split("\n", 1)[1]  # the README's opening, without its title
    index = (f"# lora-rlhf-tutorial\n\n{intro.strip()}\n\n```{{toctree}}\n:maxdepth: 1\n\n" + "\n".join(order)
             + "\n```\n")
    anchors = {slug(line): name for name, text in {"index": index, **pages}.items()
               for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines() if line.startswith("#")}
    for name, text in {"index": index, **pages}.items():
        (build / f"{name}.md").write_text(rewrite_links(text, root, build, anchors=anchors, page=name))
    return order


def _answers_first(readme: str) -> str:
    return readme.split(ANSWERS_BEGIN, 1)[1].split(ANSWERS_END, 1)[0].strip() + "\n\n"


def build_site(out: str | Path | None = None, root: Path | None = None) -> Path:
    """Assemble the sources in <out>/src and build the HTML into <out>/html; returns the index page."""
    out = Path(out) if out else output_dir(None) / "site"
    assemble(out / "src", root)
    if importlib.util.find_spec("myst_nb") is None:  # the notebook reader: only the site needs it
        raise ImportError('The site needs Sphinx, myst-nb and the book theme: pip install "lora-rlhf-tutorial[docs]" '
                          "(make docs installs them).")
    html = out / "html"
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", str(out / "src"), str(html)]
    done = subprocess.run(command, capture_output=True, text=True)
    missing = [line for line in done.stderr.splitlines() if "xref_missing" in line]  # a link Sphinx drops to "#"
    if done.returncode or missing:
        raise RuntimeError(f"sphinx-build failed ({' '.join(command)}):\n"
                           + ("\n".join(missing) if missing else done.stderr[-3000:]))
    return html / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="default: <OUTPUT_DIR>/site (outputs/site)")
    args = parser.parse_args(argv)
    index = build_site(args.out)
    print(f"the site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
