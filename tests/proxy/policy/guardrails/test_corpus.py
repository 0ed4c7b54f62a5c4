"""Precision and recall per entity type over the labelled corpus (pii_corpus.jsonl), each
at least 0.95, and the corpus is what scripts/gen-pii-corpus.py writes."""

from __future__ import annotations

import pytest

from servegate.policy.guardrails.entities import EntityType
from tests.proxy.policy.guardrails.corpus import CORPUS, load_corpus, script


def test_corpus_is_current() -> None:
    generator = script("gen-pii-corpus.py")
    assert CORPUS.read_text(encoding="utf-8") == generator.render(), "run scripts/gen-pii-corpus.py"


def test_corpus_covers_every_type_and_hard_negatives() -> None:
    corpus = load_corpus()
    assert len(corpus) >= 300
    counts = {t: sum(k == t.value for _, labels in corpus for k, _ in labels) for t in EntityType}
    assert min(counts.values()) >= 30, counts
    assert sum(not labels for _, labels in corpus) >= 100


REPORT = script("pii-report.py").evaluate()


@pytest.mark.parametrize("entity", list(EntityType))
def test_precision_and_recall(entity: EntityType) -> None:
    score = REPORT.scores[entity]
    assert score.precision >= 0.95, REPORT.errors
    assert score.recall >= 0.95, REPORT.errors


def test_report_table_lists_every_type() -> None:
    table = script("pii-report.py").table(REPORT)
    assert all(f"`{t.value}`" in table for t in EntityType)
