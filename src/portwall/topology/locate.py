"""Where each value of a topology file is: dotted path -> line number.

PyYAML's loader drops positions, so the document is composed a second time into nodes (which
keep their marks) and every path (``ports[3].fixed_ips[0].ip_address``) is indexed. JSON is
YAML, so one index serves both formats. The same walk finds duplicate mapping keys, which
``yaml.safe_load`` and ``json.loads`` would silently resolve to the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

#: libyaml's loader when PyYAML was built with it (10x faster on big files), else PyYAML's.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class DuplicateKey:
    path: str  # the repeated key's path, e.g. ``ports[0].name``
    line: int  # where it is repeated
    first_line: int  # where it first appeared


@dataclass
class SourceMap:
    """Line numbers (1-based) of every path in a document, and its duplicate keys."""

    lines: dict[str, int] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)

    @classmethod
    def of(cls, text: str) -> SourceMap:
        out = cls()
        try:
            # Tabs are legal JSON whitespace but not YAML indentation; spaces keep columns'
            # lines unchanged, which is all the index needs.
            node = yaml.compose(text.replace("\t", " "), Loader=SAFE_LOADER)
        except yaml.YAMLError:
            return out  # the real parser reports the syntax error with its own line
        if node is not None:
            out._walk(node, "")
        return out

    def _walk(self, node: yaml.Node, prefix: str) -> None:
        self.lines.setdefault(prefix, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                line = k.start_mark.line + 1
                if key in seen:
                    self.duplicates.append(DuplicateKey(key, line, seen[key]))
                    continue
                seen[key] = line
                self.lines[key] = line
                self._walk(v, key)
                self.lines[key] = line  # a key's line, not its value's, reads best
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, f"{prefix}[{i}]")

    def line(self, location: str) -> int | None:
        """The line of ``location`` or of its nearest ancestor that is in the file."""
        loc = location
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            cut = max(loc.rfind("."), loc.rfind("["))
            loc = loc[:cut] if cut > 0 else ""
        return None
