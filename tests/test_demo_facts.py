"""The demo set's key-fact annotations agree with its reference answers and knowledge base.

* every knowledge / multi-doc / updated question in test and validation has ``must_include``;
* every required fact (some alternative of it) is in the reference answer and in a cited document,
  the ``kb_updates/`` version for ``updated`` questions;
* every ``updated`` question that replaces a ``kb/`` document has ``must_not_include``: each stale fact
  is in the original ``kb/`` document and in some train answer (what fine-tuning teaches), and not in
  the reference answer or the updated document.
"""

from __future__ import annotations

import pytest

from harness.data import load_eval_set
from harness.scoring.facts import fact_found

from .conftest import REPO

ANNOTATED_TAGS = {"knowledge", "multi-doc", "updated"}


@pytest.fixture(scope="module")
def demo():
    return load_eval_set(REPO / "eval_sets" / "nimbus_support")


def _rows(demo, split):
    return [row for row in demo.split(split) if ANNOTATED_TAGS & set(row["tags"])]


@pytest.mark.parametrize("split", ["test", "validation"])
def test_required_facts_in_answer_and_cited_doc(demo, split):
    base = {d.id: d.text for d in demo.documents}
    current = {d.id: d.text for d in demo.current_documents()}
    problems = []
    rows = _rows(demo, split)
    assert rows
    for row in rows:
        facts = row.get("must_include")
        if not facts:
            problems.append(f"{row['id']}: no must_include")
            continue
        if not 1 <= len(facts) <= 3:
            problems.append(f"{row['id']}: {len(facts)} facts (want 1-3)")
        docs = current if "updated" in row["tags"] else base
        for fact in facts:
            if not fact_found(row["answer"], fact):
                problems.append(f"{row['id']}: {fact} not in the reference answer")
            if not any(fact_found(docs[c], fact) for c in row["context_ids"]):
                problems.append(f"{row['id']}: {fact} not in cited docs {row['context_ids']}")
    assert not problems, "\n".join(problems)


def test_stale_facts_of_updated_questions(demo):
    base = {d.id: d.text for d in demo.documents}
    updated = {d.id: d.text for d in demo.kb_updates}
    train_answers = [row["answer"] for row in demo.split("train")]
    problems, checked = [], 0
    for row in _rows(demo, "test"):
        stale = row.get("must_not_include")
        replaces = [c for c in row["context_ids"] if c in base and c in updated]
        if "updated" not in row["tags"]:
            if stale:
                problems.append(f"{row['id']}: must_not_include on a question that is not 'updated'")
            continue
        if not replaces:  # a brand-new document (zephyr-z1, trade-up-program): nothing went stale
            continue
        if not stale:
            problems.append(f"{row['id']}: updated question without must_not_include")
            continue
        checked += 1
        for fact in stale:
            if not any(fact_found(base[c], fact) for c in replaces):
                problems.append(f"{row['id']}: stale {fact!r} not in the original kb/ document")
            if any(fact_found(updated[c], fact) for c in replaces):
                problems.append(f"{row['id']}: stale {fact!r} still in the updated document")
            if fact_found(row["answer"], fact):
                problems.append(f"{row['id']}: stale {fact!r} in the reference answer")
            if not any(fact_found(a, fact) for a in train_answers):
                problems.append(f"{row['id']}: stale {fact!r} is not taught by any train answer")
    assert not problems, "\n".join(problems)
    assert checked == 8


def test_reference_answers_score_full_marks(demo):
    from harness.scoring.facts import fact_accuracy, fact_hits

    for split in ("test", "validation"):
        for row in demo.split(split):
            result = fact_hits(row["answer"], row.get("must_include"), row.get("must_not_include"))
            assert fact_accuracy(result) in (None, 1.0), row["id"]
