#!/usr/bin/env python3
"""Print the PII detector's precision and recall per entity type over the labelled corpus
(tests/proxy/policy/guardrails/pii_corpus.jsonl), as the Markdown table the README quotes.

A finding counts as a true positive only when its type and its exact text match a label of
the same snippet; a label nothing matched is a false negative, a finding no label matched
a false positive. ``--errors`` also lists every miss, ``--bench`` the cost per KB.
tests/proxy/policy/guardrails/test_corpus.py asserts the same numbers (each at least 0.95).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servegate.policy.guardrails.entities import EntityType
from servegate.policy.guardrails.pii import PiiDetector
from servegate.policy.guardrails.stream import StreamMasker

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "proxy" / "policy" / "guardrails" / "pii_corpus.jsonl"


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


@dataclass
class Report:
    scores: dict[EntityType, Score] = field(
        default_factory=lambda: {t: Score() for t in EntityType}
    )
    errors: list[str] = field(default_factory=list)
    snippets: int = 0


def load(path: Path = CORPUS) -> list[tuple[str, Counter[tuple[str, str]]]]:
    corpus = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        labels = Counter((e["type"], e["value"]) for e in record["entities"])
        corpus.append((record["text"], labels))
    return corpus


def evaluate(detector: PiiDetector | None = None, path: Path = CORPUS) -> Report:
    detector = detector or PiiDetector()
    report = Report()
    for text, labels in load(path):
        report.snippets += 1
        found = Counter((f.type.value, text[f.start : f.end]) for f in detector.detect(text))
        for (kind, value), n in (found | labels).items():
            hit = min(found[kind, value], labels[kind, value])
            score = report.scores[EntityType(kind)]
            score.tp += hit
            score.fp += found[kind, value] - hit
            score.fn += labels[kind, value] - hit
            if hit < n:
                what = "false positive" if found[kind, value] > hit else "missed"
                report.errors.append(f"{kind} {what}: {value!r} in {text!r}")
    return report


def table(report: Report) -> str:
    lines = [
        "| entity | labelled | found | precision | recall |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, s in report.scores.items():
        lines.append(
            f"| `{kind.value}` | {s.tp + s.fn} | {s.tp + s.fp} | {s.precision:.3f} | {s.recall:.3f} |"
        )
    return "\n".join(lines)


def bench() -> str:
    """Milliseconds per KB: detect() on prose, on text dense with entities (each number
    new, so no cache helps), and the stream masker fed 4-character deltas."""
    detector = PiiDetector()
    prose = "The team shipped version 3.11 in 2023, fixing 42 bugs in streaming and limits. " * 14
    dense = [
        f"Mail user{i}@example.com or call +1 415-555-{1000 + i:04d}; card 4111 1111 1111 1111, "
        f"IBAN GB82 WEST 1234 5698 7654 32, ip 10.0.{i}.7, ssn 536-22-{1000 + i:04d}. "
        for i in range(180)
    ]
    dense_kb = ["".join(dense[i : i + 6])[:1024] for i in range(0, 180, 6)]  # no repeats
    rows = [
        ("detect, prose", _time(detector.detect, [prose[:1024]] * 50)),
        ("detect, dense (cold)", _time(detector.detect, dense_kb[:20])),
        ("stream, prose", _time(_stream, [prose[:1024]] * 10)),
        ("stream, dense (cold)", _time(_stream, dense_kb[20:])),
    ]
    return "\n".join(f"{name}: {ms:.2f} ms/KB" for name, ms in rows)


def _stream(text: str) -> None:
    masker = StreamMasker()
    for at in range(0, len(text), 4):
        masker.feed(text[at : at + 4])
    masker.flush()


def _time(run: Callable[[str], object], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        run(text)
    elapsed = time.perf_counter() - started
    return elapsed * 1000 / (sum(len(t) for t in texts) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--errors", action="store_true", help="list every miss")
    parser.add_argument("--bench", action="store_true", help="time detect() per KB")
    args = parser.parse_args()
    report = evaluate()
    print(f"{report.snippets} snippets in {CORPUS.relative_to(REPO)}\n")
    print(table(report))
    if args.errors:
        print("\n" + "\n".join(report.errors or ["no errors"]))
    if args.bench:
        print("\n" + bench())
    return 0


if __name__ == "__main__":
    sys.exit(main())
