"""The scores a sample gets, by name, and the ones computed without a judge.

Retrieval is scored on the ranked list of *documents* (chunks mapped back to their document,
first occurrence kept), with binary relevance; answers against the reference as in SQuAD; the
LLM-judged (RAGAS) metrics are named here and computed by the judge stage.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from .words import ANSWER_WORD

RETRIEVAL_METRICS = ("recall_at_k", "mrr", "ndcg_at_k")  # known even when the answer failed
ANSWER_METRICS = ("exact_match", "token_f1")
JUDGE_METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")  # RAGAS, through the judge LLM
JUDGE_INPUTS = {  # what each RAGAS metric reads, by ragas's input names (a sweep's cells and a judge check's items alike)
    "faithfulness": {"user_input", "response", "retrieved_contexts"},
    "answer_relevancy": {"user_input", "response"},
    "context_precision": {"user_input", "reference", "retrieved_contexts"},
    "context_recall": {"user_input", "retrieved_contexts", "reference"},
}


def recall_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Share of the relevant documents found in the first k."""
    found = set(ranked[:k]) & set(relevant)
    return len(found) / len(set(relevant))


def mrr(ranked: Sequence[str], relevant: Sequence[str]) -> float:
    """1 / rank of the first relevant document; 0 when none was retrieved."""
    for rank, doc_id in enumerate(ranked, start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Normalised discounted cumulative gain with binary relevance."""
    gains = [1.0 / math.log2(rank + 1) for rank, doc_id in enumerate(ranked[:k], start=1) if doc_id in relevant]
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(set(relevant)), k) + 1))
    return sum(gains) / ideal


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation (lower case, no punctuation, no articles, single spaces), with any Unicode punctuation
    removed too ('“Paris”', '北京。') and each character of a script without spaces a word of its own (as MLQA does)."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(ANSWER_WORD.findall(text))


_SQUAD_PUNCTUATION = frozenset(string.punctuation)  # SQuAD removes its symbols ($, +, <) too, not only punctuation


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def dedupe(ids: Sequence[str]) -> list[str]:
    """Keep the first occurrence of each id, in order."""
    return list(dict.fromkeys(ids))
