"""A search-space file's text -> its YAML document: plain YAML only (no tags), no duplicate keys,
no anchors or aliases; a problem is one SpecError naming the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sweeper.errors import SpecError, quoted


class StrictLoader(yaml.SafeLoader):
    """safe_load that also rejects duplicate keys (YAML silently keeps the last) and anchors and
    aliases: a few hundred bytes of nested aliases expand to gigabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.events.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not accepted; write each value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {quoted(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(str(path), [("", "file not found; pass --space path/to/space.yaml")])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [(f"byte {exc.start}", f"not UTF-8 text (byte "
                                     f"0x{exc.object[exc.start]:02x}); save the file as UTF-8")]) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """A search-space file's text (read from disk, or as a study stored it) -> its document."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        if "could not determine a constructor" in str(what):
            what += " (only plain YAML is accepted; remove the !! tag)"
        raise SpecError(source, [(where, f"invalid YAML: {what}")]) from None
