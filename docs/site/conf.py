# The documentation site (`make docs`, helpers.harness.site): Sphinx with myst-nb and the book theme, the stack
# of Jupyter Book 1. The notebooks are shown as published (docs/notebooks/), never executed here.
project = "lora-rlhf-tutorial"
author = "the lora-rlhf-tutorial authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # the README's links to its own sections (#the-recipe) work on the pages cut from it
html_theme = "sphinx_book_theme"
html_title = "lora-rlhf-tutorial"
html_theme_options = {
    "repository_url": "https://github.com/lora-rlhf-tutorial/lora-rlhf-tutorial",
    "use_repository_button": True,
    "show_toc_level": 2,
}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
