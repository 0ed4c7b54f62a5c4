""".dockerignore matching with Docker's own rules (moby/patternmatcher), not git's.

The two differ where it matters here: in a .dockerignore, ``*.pyc`` excludes only files at
the context root (``**/*.pyc`` is needed for every folder), a leading ``/`` changes nothing,
and a pattern that matches a folder excludes everything below it. So this follows
``patternmatcher.MatchesOrParentMatches``:

- each line is trimmed; empty lines and lines starting with ``#`` are skipped; ``!`` re-includes;
- the pattern is cleaned like Go's ``filepath.Clean`` and a leading ``/`` is dropped;
- ``**`` matches any number of path segments (none included; ``**/`` is taken as ``**``),
  ``*`` any run of characters but ``/``, ``?`` one character but ``/``, ``[...]`` a class,
  ``\\`` escapes the next character;
- a path is excluded when the last pattern matching it, or matching one of its parent
  folders, is not a ``!`` pattern.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool  # a "!" line: it re-includes what it matches
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is "**"
                # "**" at the end matches everything; elsewhere any number of segments.
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[" and (end := pattern.find("]", i + 1)) != -1:
            # A class, as Go's filepath.Match has them ("[^...]" negates).
            out.append("[" + pattern[i:end].replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


def parse(lines: Iterable[str]) -> list[Pattern]:
    patterns: list[Pattern] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if not line:
            continue
        cleaned = posixpath.normpath(line)
        if cleaned.startswith("//"):  # normpath keeps a leading "//"; Go's Clean does not
            cleaned = "/" + cleaned.lstrip("/")
        if len(cleaned) > 1 and cleaned.startswith("/"):
            cleaned = cleaned[1:]
        patterns.append(Pattern(line, exclusion, _compile(cleaned)))
    return patterns


class DockerIgnore:
    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns

    @classmethod
    def from_file(cls, path: Path) -> DockerIgnore:
        if not path.exists():
            return cls([])
        return cls(parse(path.read_text().splitlines()))

    def excluded(self, path: str | PurePosixPath) -> bool:
        """Whether the context path (relative, ``/``-separated) is left out of the context."""
        file = posixpath.normpath(str(path)).lstrip("/")
        parent = posixpath.dirname(file)
        parents = parent.split("/") if parent else []
        matched = False
        for pattern in self.patterns:
            # An exclude pattern cannot change an excluded path, nor a "!" an included one.
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(file)
            if not hit:
                hit = any(pattern.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched

    def context_files(self, root: Path) -> list[str]:
        """Every file of ``root`` that the build context holds, as relative paths."""
        prune = not any(p.exclusion for p in self.patterns)  # nothing below can come back
        files: list[str] = []
        for folder, dirs, names in os.walk(root):
            base = Path(folder).relative_to(root).as_posix()
            prefix = "" if base == "." else base + "/"
            if prune:
                dirs[:] = [d for d in dirs if not self.excluded(prefix + d)]
            files.extend(prefix + name for name in names if not self.excluded(prefix + name))
        return sorted(files)
