"""What people said: labelled judgements that check a judge, and labels of a run's samples that correct its scores.

Both are JSON Lines (CSV, Parquet and JSON arrays read the same way as a test set), validated line by line with the
test set's one-line errors (file, line, field), before a single judge call is made.

- A judge-check item: {"id", "metric", "question", "contexts": [...], "answer", "reference", "label"}, where label is
  1 when a faithful judge should score the item high and 0 when it should score it low.
- A sample label: {"embedding_model", "llm", "question_id", "metric", "label"}, label in [0, 1]: what a person scores
  that sample's metric.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .fmt import shown
from .metrics import JUDGE_INPUTS, JUDGE_METRICS
from .testset import check_fields, read_rows

ITEM_FIELDS = {
    "user_input": "question",
    "response": "answer",
    "retrieved_contexts": "contexts",
    "reference": "reference",
}  # ragas's -> ours
# what an item of each metric must carry: the metric's judge inputs (metrics.JUDGE_INPUTS), under the item's field names
METRIC_FIELDS = {metric: tuple(ours for ragas, ours in ITEM_FIELDS.items() if ragas in names) for metric, names in JUDGE_INPUTS.items()}


@dataclass(frozen=True)
class LabelledItem:
    id: str
    metric: str
    question: str
    contexts: tuple[str, ...]
    answer: str
    reference: str
    label: int  # 1: a faithful judge scores it high; 0: low

    def judge_inputs(self) -> dict[str, Any]:
        """The item as the judge stage's inputs for its metric (the same names a sweep's cells use)."""
        every = {
            "user_input": self.question,
            "response": self.answer,
            "retrieved_contexts": list(self.contexts),
            "reference": self.reference,
        }
        return {name: every[name] for name in JUDGE_INPUTS[self.metric]}


@dataclass(frozen=True)
class SampleLabel:
    embedding_model: str
    llm: str
    question_id: str
    metric: str
    label: float  # in [0, 1]


def load_judge_check_items(path: Path, limit: int | None = None) -> list[LabelledItem]:
    """Every item validated, then the first `limit` items of each metric (a limited check stays balanced across metrics)."""
    items: list[LabelledItem] = []
    seen: set[str] = set()
    for where, row in read_rows(path):
        check_fields(row, {"id": str, "metric": str, "question": str, "label": object}, where)
        metric = _metric(row, where)
        for name in METRIC_FIELDS[metric]:
            check_fields(row, {name: list if name == "contexts" else str}, where)
        if "contexts" in METRIC_FIELDS[metric] and (
            not row["contexts"] or not all(isinstance(c, str) and c.strip() for c in row["contexts"])
        ):
            raise InputError(f"{where}: field 'contexts' must be a non-empty list of passages (text) for {metric}")
        if row["id"] in seen:
            raise InputError(f"{where}: duplicate id {shown(row['id'])}")
        seen.add(row["id"])
        label = row["label"]
        if isinstance(label, bool) or label not in (0, 1):
            raise InputError(f"{where}: field 'label' must be 1 (a faithful judge scores it high) or 0 (low), got {shown(label)}")
        contexts = tuple(row.get("contexts") or ())
        items.append(
            LabelledItem(row["id"], metric, row["question"], contexts, row.get("answer") or "", row.get("reference") or "", int(label))
        )
    if not items:
        raise InputError(f"{path}: no labelled items")
    if not limit:
        return items
    taken: Counter[str] = Counter()
    limited = []
    for item in items:
        taken[item.metric] += 1
        if taken[item.metric] <= limit:
            limited.append(item)
    return limited


def load_sample_labels(path: Path, samples: set[tuple[str, str, str]]) -> list[SampleLabel]:
    """A person's labels of a run's samples; `samples` holds the run's answered (embedding model, LLM, question id)."""
    labels: list[SampleLabel] = []
    for where, row in read_rows(path):
        check_fields(row, {"embedding_model": str, "llm": str, "question_id": str, "metric": str, "label": object}, where)
        metric = _metric(row, where)
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(label) or not 0 <= label <= 1:
            raise InputError(f"{where}: field 'label' must be a number from 0 to 1, got {shown(label)}")
        sample = (row["embedding_model"], row["llm"], row["question_id"])
        if sample not in samples:
            raise InputError(
                f"{where}: no answered sample {shown(sample[0])} + {shown(sample[1])}, question {shown(sample[2])} in this run "
                "— label only samples of the run you report"
            )
        labels.append(SampleLabel(*sample, metric, float(label)))
    if not labels:
        raise InputError(f"{path}: no labels")
    return labels


def _metric(row: dict[str, Any], where: str) -> str:
    if row["metric"] not in JUDGE_METRICS:
        raise InputError(f"{where}: field 'metric' is {shown(row['metric'])}, not one of {', '.join(JUDGE_METRICS)}")
    return row["metric"]
