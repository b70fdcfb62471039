"""Mermaid diagrams rendered in the browser from a local copy of mermaid (no CDN).

A ``mermaid`` directive (MyST turns ```` ```mermaid ```` fences into it) emits
``<pre class="mermaid">`` with the diagram's source. Pages that have one load
``_static/mermaid.min.js`` — the npm package's self-contained browser bundle, which
``make docs`` fetches — and ``_static/mermaid-init.js`` (from ``docs/_static/``),
which renders the diagrams with a theme that follows Furo's light/dark switch.

Why not sphinxcontrib-mermaid: it loads mermaid as an ES module
(``import mermaid from ...``), and browsers refuse module imports from ``file://``
URLs, so a site opened from disk would show the diagrams' source instead. The classic
bundle loads anywhere.

Configuration: ``mermaid_js_path``, the path of ``mermaid.min.js`` (relative to the
docs directory, or absolute); when empty, the newest ``_mermaid/*/package/dist/
mermaid.min.js`` is used. A missing bundle fails the build with what to run.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.util.docutils import SphinxDirective

BUNDLE = "mermaid.min.js"
INIT = "mermaid-init.js"


class mermaid(nodes.General, nodes.Element):  # noqa: N801 - docutils node naming
    """A diagram's source; rendered by the browser."""


class Mermaid(SphinxDirective):
    """``.. mermaid::`` with the diagram as content; ``:caption:`` is optional."""

    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {
        "caption": directives.unchanged,
        "name": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        source = "\n".join(self.content).strip()
        if not source:
            raise self.error("a mermaid diagram needs content")
        node = mermaid(source=source)
        self.set_source_info(node)
        caption = self.options.get("caption")
        if not caption:
            return [node]
        figure = nodes.figure(classes=["mermaid-figure"])
        figure += node
        figure += nodes.caption(caption, caption)
        self.add_name(figure)
        return [figure]


def _visit_html(self: Any, node: mermaid) -> None:
    self.body.append(f'<pre class="mermaid">{html.escape(node["source"])}</pre>\n')
    raise nodes.SkipNode


def _visit_text(self: Any, node: mermaid) -> None:
    self.add_text("[diagram]")
    raise nodes.SkipNode


def _bundle(app: Sphinx) -> Path:
    configured = app.config.mermaid_js_path
    if configured:
        path = Path(configured)
        path = path if path.is_absolute() else Path(app.confdir, path)
    else:
        found = sorted(Path(app.confdir).glob("_mermaid/*/package/dist/" + BUNDLE))
        path = found[-1] if found else Path(app.confdir, "_mermaid", "?", BUNDLE)
    if not path.is_file():
        raise ConfigError(
            f"mermaid's browser bundle is missing ({path}); run `make docs`, which "
            "fetches it with npm, or set mermaid_js_path"
        )
    return path.resolve()


def _config_inited(app: Sphinx, config: Any) -> None:
    # html_static_path entries may be files: the bundle lands in _static/ (next to
    # mermaid-init.js, which lives in docs/_static/).
    config.html_static_path = [*config.html_static_path, str(_bundle(app))]


def _page_context(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    if doctree is not None and doctree.next_node(mermaid) is not None:
        app.add_js_file(BUNDLE)
        app.add_js_file(INIT)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("mermaid_js_path", "", "html", types=frozenset({str}))
    app.add_node(mermaid, html=(_visit_html, None), text=(_visit_text, None))
    app.add_directive("mermaid", Mermaid)
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
