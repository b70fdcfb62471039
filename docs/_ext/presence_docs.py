"""Reference tables generated from the code, so that they cannot drift from it.

``.. presence-settings::``
    Every field of :class:`presence_kit.Settings`: its type, its default and its
    docstring, grouped by the ``# --- group ---`` comments of the class body.
``.. presence-keys::``
    Every key name of the Redis schema: one row per method of the key schema, with an
    example built by the code itself and the method's docstring.
``.. presence-cli::``
    The ``presence-kit`` command's subcommands and options, from its argparse parser.
``.. presence-errors::``
    The exception tree under :class:`presence_kit.PresenceError`, walked from the
    classes themselves.

Both emit reStructuredText, so use them inside a MyST ``{eval-rst}`` block.

It also resolves references to private module paths (``presence_kit._model.X``, as
type hints name them) to the public name (``presence_kit.X``) when there is one.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

_GROUP = re.compile(r"^\s*#\s*---\s*(.+?)\s*---\s*$")
_FIELD = re.compile(r"^\s{4}(\w+)\s*:")


def _groups(cls: type) -> dict[str, str]:
    """Field name -> the ``# --- group ---`` comment above it."""
    group, found = "", {}
    for line in inspect.getsource(cls).splitlines():
        heading = _GROUP.match(line)
        if heading:
            group = heading.group(1)
            continue
        field = _FIELD.match(line)
        if field:
            found[field.group(1)] = group
    return found


def _cell(lines: list[str]) -> list[str]:
    """Docstring lines as the body of a list-table cell (indented by 6)."""
    text = [line.rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    return [f"      {line}" if line else "" for line in text] or ["      \\"]


class _RstDirective(SphinxDirective):
    has_content = False

    def _parse(self, rst: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(rst, source=self.get_source_info()[0]), 0, container)
        return container.children


class SettingsTable(_RstDirective):
    """The fields of ``presence_kit.Settings`` with defaults and docstrings."""

    def run(self) -> list[nodes.Node]:
        from presence_kit import Settings

        analyzer = ModuleAnalyzer.for_module(Settings.__module__)
        docs = analyzer.find_attr_docs()
        self.env.note_dependency(analyzer.srcname)
        groups = _groups(Settings)
        rst: list[str] = []
        current = None
        for field in dataclasses.fields(Settings):
            group = groups.get(field.name, "")
            if group != current:
                current = group
                if rst:
                    rst.append("")
                rst += [
                    f".. rubric:: {group[:1].upper() + group[1:]}" if group else "",
                    "",
                    ".. list-table::",
                    "   :header-rows: 1",
                    "   :widths: 22 12 26 40",
                    "",
                    "   * - setting",
                    "     - type",
                    "     - default",
                    "     - meaning",
                ]
            doc = docs.get(("Settings", field.name), [])
            rst += [
                f"   * - :attr:`~presence_kit.Settings.{field.name}`",
                f"     - ``{field.type}``",
                f"     - ``{field.default!r}``",
                "     -",
                "",
                *_cell(doc),
            ]
        return self._parse(rst)


_PLACEHOLDERS = {
    "org_id": "<org_id>",
    "user_id": "<user_id>",
    "role": "<role>",
    "sid": "<sid>",
    "member": "<node>/<incarnation>",
    "tracks_alive": False,
}


class KeyTable(_RstDirective):
    """Each key of ``presence_kit._model.KeySchema``, built by the schema itself."""

    def run(self) -> list[nodes.Node]:
        from presence_kit import Settings
        from presence_kit._keys import KeySchema

        settings = Settings()
        schema = KeySchema(alive_template=settings.alive_key, prefix=settings.key_prefix)
        alive = schema.alive("<org_id>", "<user_id>")
        rst = [
            ".. currentmodule:: presence_kit",  # the docstrings' names are the package's
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 45 55",
            "",
            "   * - key (default settings)",
            "     - holds",
        ]
        for name, method in vars(KeySchema).items():  # in definition order
            if name.startswith("_") or not inspect.isfunction(method):
                continue
            params = list(inspect.signature(method).parameters.values())[1:]
            values = {p.name: _PLACEHOLDERS.get(p.name, f"<{p.name}>") for p in params}
            if "alive_key" in values:
                values["alive_key"] = alive
            positional = [values[p.name] for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
            keywords = {p.name: values[p.name] for p in params if p.kind is p.KEYWORD_ONLY}
            key = getattr(schema, name)(*positional, **keywords)
            if not isinstance(key, str):  # every key of a kind (feeds): listed one by one
                continue
            doc = (inspect.getdoc(method) or "").split("\n\n")[0].replace("\n", " ")
            rst += [f"   * - ``{key}``", f"     - {doc}"]
        return self._parse(rst)


def _rst_text(text: str) -> str:
    return text.replace("*", "\\*").replace("`", "\\`")


def _option_rows(parser: Any) -> list[str]:
    rows = []
    for action in parser._actions:
        if action.help == "==SUPPRESS==" or not action.option_strings or action.dest == "help":
            continue
        names = ", ".join(action.option_strings)
        metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
        details = _rst_text((action.help or "") % {"default": action.default})
        if action.required:
            details += " (required)"
        rows += [f"   * - ``{names}{metavar}``", f"     - {details}"]
    return rows


class CliReference(_RstDirective):
    """``presence-kit``'s subcommands and options, read from its argparse parser."""

    def run(self) -> list[nodes.Node]:
        import argparse

        from presence_kit._cli import _parser

        parser = _parser()
        rst: list[str] = []
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                rst += [
                    f".. rubric:: ``presence-kit {name}``",
                    "",
                    _rst_text(sub.description or helps.get(name) or ""),
                    "",
                ]
                rows = _option_rows(sub)
                if rows:
                    rst += [
                        ".. list-table::",
                        "   :widths: 35 65",
                        "",
                        *rows,
                        "",
                    ]
        rst += [".. rubric:: ``presence-kit --version``", "", "Prints the version.", ""]
        return self._parse(rst)


def _walk(cls: type, depth: int, rst: list[str]) -> None:
    indent = "  " * depth
    extra = [base.__name__ for base in cls.__bases__ if not base.__module__.startswith("presence")]
    also = f" (also a ``{'``, ``'.join(extra)}``)" if extra and depth else ""
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    rst += [f"{indent}- :class:`~presence_kit.{cls.__name__}`{also}: {summary}", ""]
    for sub in sorted(cls.__subclasses__(), key=_order):
        if sub.__module__.startswith("presence_kit"):
            _walk(sub, depth + 1, rst)


def _order(cls: type) -> Any:
    return inspect.getsourcelines(cls)[1]


class ErrorTree(_RstDirective):
    """The exception tree under ``presence_kit.PresenceError``."""

    def run(self) -> list[nodes.Node]:
        from presence_kit import PresenceError

        rst: list[str] = []
        _walk(PresenceError, 0, rst)
        return self._parse(rst)


_PRIVATE = re.compile(r"^(presence_kit(?:\.\w+)*)\._\w+\.(\w+)(\..+)?$")


def _candidates(node: Any) -> list[str]:
    """Public names a failed reference may mean, best first."""
    target = node.get("reftarget", "")
    match = _PRIVATE.match(target)
    if match is not None:
        # presence_kit._model.ConnectOutcome -> presence_kit.ConnectOutcome, if exported
        package, name, rest = match.group(1), match.group(2), match.group(3) or ""
        module = sys.modules.get(package)
        if module is not None and name in getattr(module, "__all__", ()):
            return [f"{package}.{name}{rest}"]
        return []
    context = node.get("py:module") or ""
    if not context.startswith("presence_kit") or target.startswith(("presence_kit", "~", ".")):
        return []
    # a docstring says `PresenceKit.register_policy` or `KeySchema.alive`: relative to
    # the package, or to the private module that defines the name
    head = target.split(".", 1)[0]
    private = sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("presence_kit._") and hasattr(module, head)
    )
    # ... or to a public submodule that exports it (`feed_shard`: presence_kit.feed)
    public = sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("presence_kit.")
        and not name.split(".")[1].startswith("_")
        and head in getattr(module, "__all__", ())
    )
    return [
        f"presence_kit.{target}",
        *(f"{name}.{target}" for name in public),
        *(f"{name}.{target}" for name in private),
    ]


def _public_alias(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve private-module paths and package-relative names to the public objects."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for target in _candidates(node):
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
        )
        if found is not None:
            return found
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", _public_alias)
    app.add_directive("presence-settings", SettingsTable)
    app.add_directive("presence-errors", ErrorTree)
    app.add_directive("presence-keys", KeyTable)
    app.add_directive("presence-cli", CliReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
