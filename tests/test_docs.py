"""The documentation: the built site renders offline, and its code examples run.

The site (``make docs``, into ``docs/_build/html``) is opened in headless Chromium: the
index must render, and every mermaid diagram must have become an SVG, with the browser
unable to reach any network (so nothing can come from a CDN). Screenshots go to
``test-artifacts/``. ``make test`` builds the site before pytest; run alone, these
tests build it if they can, and skip only when they cannot (no Sphinx, or neither the
mermaid bundle nor npm).

Every ```` ```python ```` block of ``docs/**/*.md`` and ``README.md`` must compile. An
HTML comment on the line before a block says what more to do with it:

``<!-- docs-test: run -->``
    execute the block, in a fresh namespace;
``<!-- docs-test: continue -->``
    execute it in the namespace of the page's previous executed block;
``<!-- docs-test: file NAME -->``
    the block is the file NAME of a page's walkthrough (the tutorial's ``server.py``
    and ``clients.py``, which are run for real below);
``<!-- docs-test: output NAME -->``
    the block (any language) is what running NAME prints;
``<!-- docs-test: example NAME -->``
    the block is ``examples/NAME`` verbatim (the README's quickstarts, which
    docs/quickstart.md includes as files; tests/test_examples.py runs them).
"""

from __future__ import annotations

import ast
import dataclasses
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import presence_kit

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SITE = DOCS / "_build" / "html"
ARTIFACTS = ROOT / "test-artifacts"
MARKER = re.compile(r"<!--\s*docs-test:\s*(run|continue|file|output|example)\s*(\S*)\s*-->")
MERMAID_BUNDLE = "_static/mermaid.min.js"


# --- the code blocks ------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line
    language: str
    code: str
    marker: str  # "", "run", "continue", "file", "output" or "example"
    argument: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _pages() -> list[Path]:
    skip = {"_build", "_mermaid"}
    pages = [p for p in sorted(DOCS.rglob("*.md")) if not skip & set(p.relative_to(DOCS).parts)]
    return [*pages, ROOT / "README.md"]


def _blocks(page: Path) -> list[Block]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))
    blocks, previous = [], None
    for token in tokens:
        if token.type == "fence" and token.map is not None:
            marker, argument = "", ""
            if previous is not None and previous.map is not None:
                found = MARKER.fullmatch(previous.content.strip())
                if found and previous.map[1] == token.map[0]:
                    marker, argument = found.group(1), found.group(2)
            language = token.info.strip().split(" ")[0]
            blocks.append(Block(page, token.map[0] + 2, language, token.content, marker, argument))
        if token.type == "html_block" and "docs-test" in token.content:
            assert MARKER.fullmatch(token.content.strip()), f"{page}: bad marker {token.content!r}"
        if token.block and token.nesting >= 0:
            previous = token
    return blocks


ALL_BLOCKS = [block for page in _pages() for block in _blocks(page)]
PYTHON = [b for b in ALL_BLOCKS if b.language in ("python", "py")]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_compiles(block: Block) -> None:
    # Snippets may await at top level, as if inside your handler.
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _runnable_pages() -> dict[Path, list[Block]]:
    pages: dict[Path, list[Block]] = {}
    for block in PYTHON:
        if block.marker in ("run", "continue"):
            pages.setdefault(block.page, []).append(block)
    return pages


RUNNABLE = _runnable_pages()


@pytest.mark.parametrize(
    "blocks", RUNNABLE.values(), ids=[str(p.relative_to(ROOT)) for p in RUNNABLE]
)
def test_runnable_blocks_run(blocks: list[Block]) -> None:
    namespaces: list[dict[str, object]] = []
    try:
        for block in blocks:
            if block.marker == "run":
                namespaces.append({"__name__": f"docs_{block.page.stem}"})
            exec(compile(block.code, block.id, "exec"), namespaces[-1])
    finally:  # stop the background work of the examples' kits
        for namespace in namespaces:
            for value in namespace.values():
                if isinstance(value, presence_kit.PresenceKit):
                    value.close()


def test_the_docs_run_their_examples() -> None:
    assert len(RUNNABLE) >= 8, "runnable examples went missing"
    for blocks in RUNNABLE.values():
        assert blocks[0].marker == "run", f"{blocks[0].id}: a page's first block is 'continue'"


# --- the quickstarts: one set, the same in the README and the docs ---------------------

QUICKSTARTS = ["quickstart_asyncio.py", "quickstart_flask.py"]
LITERALINCLUDE = re.compile(r"^```\{literalinclude\} \.\./examples/(\S+)$", re.MULTILINE)


def test_the_quickstarts_are_the_examples_verbatim() -> None:
    """README.md shows each quickstart as a block, docs/quickstart.md includes its file:
    both are ``examples/quickstart_*.py``, which tests/test_examples.py runs."""
    examples = [b for b in ALL_BLOCKS if b.marker == "example"]
    for block in examples:
        expected = (ROOT / "examples" / block.argument).read_text(encoding="utf-8")
        assert block.code == expected, f"{block.id} is not examples/{block.argument}"
    in_readme = [b.argument for b in examples if b.page == ROOT / "README.md"]
    assert in_readme == QUICKSTARTS
    page = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    assert LITERALINCLUDE.findall(page) == QUICKSTARTS


# --- the tutorial, for real -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _walkthrough(page: Path) -> tuple[dict[str, str], dict[str, str]]:
    files, outputs = {}, {}
    for block in _blocks(page):
        if block.marker == "file":
            files[block.argument] = block.code
        elif block.marker == "output":
            outputs[block.argument] = block.code
    return files, outputs


def test_tutorial_server_and_clients(tmp_path: Path) -> None:
    files, outputs = _walkthrough(DOCS / "tutorial.md")
    assert set(files) == {"server.py", "clients.py"} and set(outputs) == {"clients.py"}
    port = str(_free_port())
    for name, code in files.items():
        assert "8000" in code, name
        (tmp_path / name).write_text(code.replace("8000", port), encoding="utf-8")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert server.poll() is None, log.read_text()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", int(port))) == 0:
                    break
            assert time.monotonic() < deadline, f"server.py did not listen:\n{log.read_text()}"
            time.sleep(0.05)
        clients = subprocess.run(
            [sys.executable, "clients.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert clients.returncode == 0, clients.stderr
        assert clients.stdout.splitlines() == outputs["clients.py"].splitlines()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)


# --- the built site -------------------------------------------------------------------


def _build_or_skip() -> None:
    """Build the site with ``make docs``, or skip if this machine cannot."""
    try:
        import sphinx  # noqa: F401
    except ImportError:
        pytest.skip("the site is not built and Sphinx is not installed (pip install -e '.[docs]')")
    bundles = list(DOCS.glob("_mermaid/*/package/dist/mermaid.min.js"))
    if not bundles and shutil.which("npm") is None:
        pytest.skip("the site is not built and npm (to fetch mermaid) is not installed")
    if shutil.which("make") is None:
        pytest.skip("the site is not built and make is not installed")
    built = subprocess.run(
        ["make", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if built.returncode != 0:
        pytest.fail(f"make docs failed:\n{built.stdout}\n{built.stderr}")


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site (built here if it is missing)."""
    if not (SITE / "index.html").is_file():
        _build_or_skip()
    assert (SITE / "index.html").is_file()
    return SITE


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    # CI must prove the pages render; a contributor's machine may lack a browser.
    message = "headless Chromium is needed to check the docs: apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"{message} (required when CI=true)")


def _browse(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``page`` with no network at all."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # a CDN would be unreachable
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        *extra,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def _dom(page: Path, tmp_path: Path) -> str:
    return _browse(page, tmp_path, "--dump-dom").stdout


def _screenshot(page: Path, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    _browse(page, tmp_path, f"--screenshot={target}", "--window-size=1280,2000")
    assert target.is_file() and target.stat().st_size > 10_000, target
    return target


def test_index_renders(site: Path, tmp_path: Path) -> None:
    dom = _dom(site / "index.html", tmp_path)
    assert "<title>presence_kit" in dom
    assert "Presence and disconnect handling for Python Socket.IO servers" in dom
    for section in ("Tutorial", "How-to guides", "Reference", "Explanation"):
        assert section in dom, section
    _screenshot(site / "index.html", tmp_path, "docs-index.png")


MERMAID_BLOCK = re.compile(r'<pre class="mermaid"[^>]*>(.*?)</pre>', re.DOTALL)


def _mermaid_pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if 'class="mermaid"' in p.read_text("utf-8"))


def test_mermaid_diagrams_render_as_svg(site: Path, tmp_path: Path) -> None:
    pages = _mermaid_pages(site)
    assert site / "explanation" / "flows.html" in pages
    for page in pages:
        source = (DOCS / page.relative_to(site)).with_suffix(".md").read_text("utf-8")
        expected = source.count("```mermaid")
        dom = _dom(page, tmp_path)
        diagrams = MERMAID_BLOCK.findall(dom)
        assert len(diagrams) == expected, page
        for number, diagram in enumerate(diagrams, 1):
            assert "<svg" in diagram, f"{page}: diagram {number} was not rendered"
            assert "Syntax error" not in diagram, f"{page}: diagram {number}"
        assert "data-mermaid-error" not in dom, page
    _screenshot(site / "explanation" / "flows.html", tmp_path, "docs-flows.png")


RESOURCE = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]+)"', re.IGNORECASE)


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    assert (site / MERMAID_BUNDLE).is_file()
    for page in site.rglob("*.html"):
        for url in RESOURCE.findall(page.read_text("utf-8")):
            url = html.unescape(url)
            is_remote = url.startswith(("http:", "https:", "//"))
            # <link> also carries navigation (rel=next etc.), never remote assets here
            assert not is_remote, f"{page.relative_to(site)} loads {url}"


def _anchors(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text("utf-8")))


def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    anchors = _anchors(site / "reference" / "api.html")
    modules = ["presence_kit", "redis", "socketio", "mixpanel", "memory", "testing"]
    missing = []
    for short in modules:
        name = short if short == "presence_kit" else f"presence_kit.{short}"
        module = __import__(name, fromlist=["__all__"])
        for public in module.__all__:
            if public != "__version__" and f"{name}.{public}" not in anchors:
                missing.append(f"{name}.{public}")
    assert not missing, f"not in docs/reference/api.md: {missing}"


def test_the_settings_page_lists_every_field(site: Path) -> None:
    text = (site / "reference" / "settings.html").read_text("utf-8")
    for field in dataclasses.fields(presence_kit.Settings):
        assert f"presence_kit.Settings.{field.name}" in text, field.name


def test_the_docs_list_every_instrument() -> None:
    """docs/howto/metrics.md shows the table generated from INSTRUMENTS (paste the rows
    of ``Instrument.row()`` there when an instrument changes)."""
    from presence_kit.otel import INSTRUMENTS

    page = (Path(__file__).parent.parent / "docs" / "howto" / "metrics.md").read_text()
    start = page.index("<!-- generated: presence_kit.otel.INSTRUMENTS -->")
    end = page.index("<!-- end of presence_kit.otel.INSTRUMENTS -->")
    rows = [line for line in page[start:end].splitlines() if line.startswith("| `")]
    assert rows == [instrument.row() for instrument in INSTRUMENTS]
