"""Sphinx configuration of the presence_kit documentation.

Build it with ``make docs`` (into ``docs/_build/html``). Sources are Markdown (MyST);
the API reference comes from the docstrings (autodoc + sphinx-autodoc-typehints).
Nothing is loaded from a CDN: mermaid's browser bundle is the npm package's
``mermaid.min.js``, which ``make docs`` fetches once into ``docs/_mermaid/`` (see
``_ext/mermaid_local.py``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import presence_kit  # noqa: E402

project = "presence_kit"
author = "presence_kit developers"
copyright = "presence_kit developers, MIT licence"
release = presence_kit.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "mermaid_local",
    "presence_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_mermaid", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# --- MyST -----------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3
# ```mermaid fences (as GitHub renders them) become the mermaid directive.
myst_fence_as_directive = ["mermaid"]

# sphinx-autodoc-typehints still calls an API that Sphinx 10 removes; not ours to fix.
warnings.filterwarnings(
    "ignore", message=r".*set_application.*", module="sphinx_autodoc_typehints"
)
warnings.filterwarnings("ignore", message=r".*sphinx_autodoc_typehints.*")

# --- autodoc ----------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options: dict[str, object] = {}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
typehints_use_signature = False
typehints_use_signature_return = False
always_document_param_types = False
typehints_fully_qualified = False
autodoc_type_aliases = {
    "SyncClient": "presence_kit.redis.SyncClient",
    "AsyncClient": "presence_kit.redis.AsyncClient",
}
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# --- cross references --------------------------------------------------------------------
# Warnings are errors and references are checked (nitpicky). The build is offline, so
# there is no intersphinx: references into the standard library and the backends'
# packages (redis, socketio, mixpanel) are accepted unresolved, nothing else is.
nitpicky = True
_EXTERNAL = (
    r"(typing|typing_extensions|collections\.abc|abc|enum|re|types|threading|asyncio"
    r"|json|logging|dataclasses|datetime|pathlib|redis|socketio|engineio|mixpanel"
    r"|flask_socketio)(\..+)?"
)
_BUILTINS = (
    r"(int|str|float|bool|bytes|object|dict|list|tuple|set|frozenset|type|None|Exception"
    r"|BaseException|ValueError|TypeError|KeyError|RuntimeError|TimeoutError|Ellipsis"
    r"|NoneType|callable)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL),
    (r"py:.*", _BUILTINS),
]
# Docstrings of the package that point at things the reference does not document.
# Fix the docstring, then delete its line here.
nitpick_ignore: list[tuple[str, str]] = [
    # presence_kit.feed's signatures say `Id` (presence_kit._session.Id, int | str),
    # which the reference does not document
    ("py:class", "Id"),
]

# --- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"presence_kit {release}"
html_static_path = ["_static"]
html_css_files: list[str] = []
html_theme_options = {
    "source_repository": "https://github.com/presence-kit/presence-kit",
    "source_branch": "main",
    "source_directory": "docs/",
}
# The local mermaid bundle: `make docs` passes -D mermaid_js_path=...; when empty, the
# newest docs/_mermaid/*/package/dist/mermaid.min.js is used.
mermaid_js_path = ""
