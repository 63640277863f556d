import math

import pytest

from ragsweep.metrics import dedupe, exact_match, mrr, ndcg_at_k, normalize_answer, recall_at_k, token_f1


def test_recall_at_k_counts_relevant_found_in_first_k():
    assert recall_at_k(["a", "b", "c"], ["b"], 3) == 1.0
    assert recall_at_k(["a", "b", "c"], ["c"], 2) == 0.0
    assert recall_at_k(["a", "b", "c"], ["a", "x"], 3) == 0.5


def test_mrr_is_inverse_rank_of_first_hit():
    assert mrr(["a", "b", "c"], ["a"]) == 1.0
    assert mrr(["a", "b", "c"], ["c"]) == pytest.approx(1 / 3)
    assert mrr(["a", "b"], ["z"]) == 0.0


def test_ndcg_hand_computed():
    # one relevant doc at rank 2: DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k(["a", "b", "c"], ["b"], 3) == pytest.approx(1 / math.log2(3))
    # two relevant at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3))
    assert ndcg_at_k(["a", "b", "c"], ["a", "c"], 3) == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b", "c"], ["z"], 3) == 0.0


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Seine.", "Seine") == 1.0
    assert exact_match("Seine river", "Seine") == 0.0


def test_token_f1_partial_overlap():
    # prediction "river seine" vs reference "seine": P = 1/2, R = 1 -> F1 = 2/3
    assert token_f1("the river Seine", "Seine") == pytest.approx(2 / 3)
    assert token_f1("", "Seine") == 0.0
    assert token_f1("Paris", "London") == 0.0


def test_answers_in_other_scripts_and_with_typographic_punctuation():
    """SQuAD's rules knew only ASCII: a Chinese answer was one 'word' (F1 0 or 1) and '“Paris”' did not match 'Paris'."""
    assert token_f1("北京市", "北京") == pytest.approx(0.8)  # characters: P = 2/3, R = 1
    assert (
        exact_match("北京。", "北京") == 1.0 and exact_match("“Paris”", "Paris") == 1.0 and exact_match("Paris — yes", "Paris yes") == 1.0
    )
    assert normalize_answer("東京タワー is 333 m") == "東 京 タ ワ ー is 333 m"
    assert normalize_answer("Don't stop, U.S.!") == "dont stop us"  # SQuAD deletes punctuation, it does not split on it


def test_dedupe_keeps_first_occurrence_order():
    assert dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
