"""Sphinx configuration of msrpc's documentation (``sphinx-build -W docs DIR``)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's msrpc, not an installed one
sys.path.insert(0, os.path.join(HERE, "_ext"))

import msrpc  # noqa: E402

project = "msrpc"
author = "the msrpc developers"
copyright = "the msrpc developers"
release = msrpc.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "msrpcdocs",  # options tables from the real Options classes; API coverage check
]

root_doc = "index"
# docs/ref holds the team's verified notes on the registries' APIs (Markdown, offered as
# downloads from development.rst, not pages); tutorial/ holds the tutorial's programs,
# included from tutorial.rst.
exclude_patterns = ["_build", "ref", "tutorial"]
templates_path: list[str] = []
nitpicky = False  # Twisted's and the stdlib's types have no inventory offline

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_class_signature = "mixed"

html_theme = "furo"
html_title = f"msrpc {release}"
html_static_path = ["_static"]
html_css_files = ["msrpc.css"]
html_show_sourcelink = False
# "--option" stays two hyphens, never an en dash, and quotes stay straight.
smartquotes = False
pygments_style = "friendly"
pygments_dark_style = "monokai"
