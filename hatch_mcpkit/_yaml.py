"""YAML loading that remembers the line of every key, bounded against bombs.

``load_yaml`` returns plain Python data plus a map from key path (a tuple of
mapping keys and list indices) to the 1-based line where that value starts,
so validation can say ``config.yaml:12: mcp.tools[1].name: ...``.
"""

from __future__ import annotations

from typing import Any

import yaml

from hatch_mcpkit.errors import Problem

__all__ = ["MAX_NODES", "MAX_YAML_BYTES", "KeyPath", "LineMap", "SpanMap", "format_path", "load_yaml"]

KeyPath = tuple[str | int, ...]
LineMap = dict[KeyPath, int]
# key path of a scalar -> (start, end) character offsets of its source text
SpanMap = dict[KeyPath, tuple[int, int]]

MAX_YAML_BYTES = 1024 * 1024
# Aliases let a tiny document describe a huge tree (the "billion laughs"); the
# walk below counts nodes as it expands them and stops here.
MAX_NODES = 100_000


class _TooLarge(Exception):
    pass


class _CountingLoader(yaml.SafeLoader):
    """A SafeLoader that gives up while composing once a document has too many nodes.

    (The walk below counts again as it expands aliases; this stops a merely huge document
    before all of it is composed in pure Python.)
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_NODES:
            raise _TooLarge
        return super().compose_node(parent, index)


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(text: str, file: str, spans: SpanMap | None = None) -> tuple[Any, LineMap, list[Problem]]:
    """Parse one YAML document; on failure return ``(None, {}, [problem])``.

    ``spans``, when given, is filled with where each scalar's source text lies.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        return (
            None,
            {},
            [Problem(file, "", f"file is larger than {MAX_YAML_BYTES // 1024} KiB; refusing to parse it")],
        )
    try:
        loader = _CountingLoader(text)
    except yaml.YAMLError as exc:  # e.g. ReaderError: control characters
        return None, {}, [Problem(file, "", f"invalid YAML: {exc}")]
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            what = exc.problem or str(exc)
            if exc.context:
                what = f"{exc.context}, {what}"
            return None, {}, [Problem(file, "", f"invalid YAML: {what}", line)]
        except yaml.YAMLError as exc:
            return None, {}, [Problem(file, "", f"invalid YAML: {exc}")]
        except RecursionError:
            return None, {}, [Problem(file, "", "document is nested too deeply; refusing to load it")]
        except _TooLarge:
            return None, {}, [_too_large(file, loader.line + 1)]
        if node is None:
            return None, {}, [Problem(file, "", "file is empty", 1)]
        lines: LineMap = {}
        problems: list[Problem] = []
        counter = [0]
        try:
            data = _walk(loader, node, (), lines, problems, file, counter, spans)
        except RecursionError:
            return None, {}, [Problem(file, "", "document is nested too deeply; refusing to load it")]
        except _TooLarge:
            return None, {}, [_too_large(file, node.start_mark.line + 1)]
        return data, lines, problems
    finally:
        loader.dispose()


def _too_large(file: str, line: int) -> Problem:
    return Problem(
        file, "", f"document has more than {MAX_NODES} nodes (counting what YAML aliases repeat); refusing to load it", line
    )


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: KeyPath,
    lines: LineMap,
    problems: list[Problem],
    file: str,
    counter: list[int],
    spans: SpanMap | None = None,
) -> Any:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise _TooLarge
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem(
                        file,
                        format_path(path),
                        "mapping keys must be plain strings",
                        key_node.start_mark.line + 1,
                    )
                )
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            child = (*path, key)
            if key in result:
                problems.append(
                    Problem(file, format_path(child), "duplicate key", key_node.start_mark.line + 1)
                )
            lines[child] = key_node.start_mark.line + 1
            result[key] = _walk(loader, value_node, child, lines, problems, file, counter, spans)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _walk(loader, item, (*path, index), lines, problems, file, counter, spans)
            for index, item in enumerate(node.value)
        ]
    if spans is not None:
        spans[path] = (node.start_mark.index, node.end_mark.index)
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(file, format_path(path), f"invalid value: {exc}", node.start_mark.line + 1))
        return None
