from helpers.data import clean_review, load_imdb, ppo_queries


def test_offline_imdb_has_the_25000_train_reviews(tiny):
    data = load_imdb(tiny)
    assert len(data["train"]) + len(data["heldout"]) == 25000
    assert len(data["heldout"]) == tiny.heldout_size
    assert data["train"].column_names == ["text", "label"]
    assert set(data["train"]["label"][:2000]) == {0, 1}
    assert not any("<br" in t for t in data["train"]["text"][:5000])


def test_split_is_deterministic_and_disjoint(tiny):
    a, b = load_imdb(tiny), load_imdb(tiny)
    assert a["heldout"]["text"] == b["heldout"]["text"]
    assert a["train"]["text"][:50] == b["train"]["text"][:50]
    assert not set(a["heldout"]["text"]) & set(a["train"]["text"][:5000])


def test_clean_review():
    assert clean_review("Great.<br /><br />Really  <BR>good") == "Great. Really good"


def test_ppo_queries_are_2_to_8_tokens_of_long_reviews(tiny, tokenizer):
    texts = load_imdb(tiny)["train"]["text"][:500]
    queries = ppo_queries(texts, tokenizer, n=40, seed=3)
    assert len(queries) == 40
    assert all(2 <= len(q) <= 8 for q in queries)
    assert len({len(q) for q in queries}) > 2  # lengths are drawn, not fixed
    assert queries == ppo_queries(texts, tokenizer, n=40, seed=3)
    assert queries != ppo_queries(texts, tokenizer, n=40, seed=4)
