#!/usr/bin/env python
"""Rebuild halueval-qa-labels.jsonl, the default labelled set of `benchmark.py judge-check`, from halueval-qa-300.jsonl.

    python data/judge-check/build_labels.py [SOURCE] [OUT]

Each HaluEval QA item (knowledge, question, right answer, hallucinated answer) gives 8 labelled items, 2 per metric:
- faithfulness: the right answer (1) and the hallucinated answer (0), over the item's knowledge;
- context_recall and context_precision: the item's knowledge (1) and the next item's knowledge (0), the right answer
  as the reference;
- answer_relevancy: the right answer (1) and the next item's right answer (0).
Items are written item by item, good before bad, so the first N of each metric (--limit N) stay balanced for even N.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def labelled(source: list[dict]) -> list[dict]:
    items = []
    for index, item in enumerate(source):
        other = source[(index + 1) % len(source)]  # "another item": the next one (HotpotQA items are unrelated)
        name = f"halueval-{index + 1:03d}"
        question, right, knowledge = item["question"].strip(), item["right_answer"].strip(), item["knowledge"].strip()

        def row(metric: str, kind: str, label: int, answer: str = right, contexts: str = knowledge) -> dict:
            return {
                "id": f"{name}-{metric}-{kind}",
                "metric": metric,
                "question": question,
                "contexts": [contexts],
                "answer": answer,
                "reference": right,
                "label": label,
            }

        items += [
            row("faithfulness", "right", 1),
            row("faithfulness", "hallucinated", 0, answer=item["hallucinated_answer"].strip()),
            row("context_recall", "own-knowledge", 1),
            row("context_recall", "other-knowledge", 0, contexts=other["knowledge"].strip()),
            row("context_precision", "own-knowledge", 1),
            row("context_precision", "other-knowledge", 0, contexts=other["knowledge"].strip()),
            row("answer_relevancy", "right", 1),
            row("answer_relevancy", "other-answer", 0, answer=other["right_answer"].strip()),
        ]
    return items


def main(source: Path = HERE / "halueval-qa-300.jsonl", out: Path = HERE / "halueval-qa-labels.jsonl") -> None:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in labelled(rows)), encoding="utf-8")


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:3]))
