"""Sphinx configuration of pheanq's documentation. Build it with ./scripts/docs."""

from __future__ import annotations

import pheanq

project = "pheanq"
# The version lives in one place: pheanq/__init__.py.
version = release = pheanq.__version__

extensions = ["sphinx_click"]

root_doc = "index"
exclude_patterns = ["_build"]
# Code is highlighted only where a block names its language.
highlight_language = "none"
nitpicky = True

html_theme = "alabaster"
html_title = f"pheanq {release}"
html_show_copyright = False
html_show_sourcelink = False
