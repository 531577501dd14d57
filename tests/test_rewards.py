"""Rewards: the TF-IDF reward model fitted on tiny's labelled reviews (accuracy, ordering, a cache that
scores exactly as the fitted sklearn pipeline and is refused when stale or tampered with), the registry, and
the Hub reward path (a text classifier with its own tokenizer, scored by its POSITIVE logit), run offline on
a tiny DistilBERT classifier saved locally the way `lvwerra/distilbert-imdb` is."""

import json

import numpy as np
import pytest
import torch

from helpers import rewards
from helpers.data import load_imdb
from helpers.models import new_lora
from helpers.ppo import ValueHead, config_from_profile, train
from helpers.reference import DisabledAdapters
from helpers.rewards import RewardCacheError, TfidfRewardModel, classifier_reward, fit_tfidf, load_reward

PHRASES = ["A wonderful, moving film with a great cast. One of the best I have seen.",
           "A dull, boring mess with awful acting. The worst film I have seen.", "The movie", "not good at all"]


@pytest.fixture(scope="module")
def reviews(tiny):
    return load_imdb(tiny)


@pytest.fixture(scope="module")
def fitted(reviews):
    """(model as arrays, the fitted sklearn pipeline), fitted once on tiny's train split (~20 s)."""
    return fit_tfidf(reviews["train"]["text"], reviews["train"]["label"])


def test_tfidf_accuracy_on_reviews_it_never_saw(fitted, reviews):
    model, _ = fitted
    train, n = reviews["train"], rewards.TFIDF_KEPT_OUT
    assert model.meta["fitted_reviews"] == len(train) - n  # the last n train reviews were kept out
    texts = list(train["text"][-n:]) + list(reviews["heldout"]["text"])
    labels = np.array(list(train["label"][-n:]) + list(reviews["heldout"]["label"]))
    accuracy = np.mean((model.scores(texts) > 0) == labels)
    assert accuracy >= 0.85
    assert model.meta["kept_out_accuracy"] == pytest.approx(np.mean((model.scores(texts[:n]) > 0) == labels[:n]))


def test_tfidf_scores_positive_above_negative(fitted):
    positive, negative, *_ = fitted[0].scores(PHRASES)
    assert positive > 0 > negative


def test_tfidf_cache_scores_exactly_as_the_fitted_pipeline(fitted, reviews, tmp_path):
    model, pipeline = fitted
    loaded = TfidfRewardModel.load(model.save(tmp_path / "cache"))
    texts = list(reviews["heldout"]["text"]) + PHRASES
    np.testing.assert_allclose(loaded.scores(texts), pipeline.decision_function(texts), rtol=1e-12, atol=1e-12)
    assert loaded.meta["data"] == model.meta["data"] and loaded.terms == model.terms


@pytest.mark.parametrize("file", ["vocabulary.json", "weights.safetensors"])
def test_tampered_cache_is_a_clear_error(fitted, tmp_path, file):
    folder = fitted[0].save(tmp_path / "cache")
    data = bytearray((folder / file).read_bytes())
    data[-3] = (data[-3] + 1) % 256  # one byte changed
    (folder / file).write_bytes(bytes(data))
    with pytest.raises(RewardCacheError, match="corrupt.*Delete that folder"):
        TfidfRewardModel.load(folder)


@pytest.mark.slow  # seconds of SmolLM2 or a subprocess: in `make test`, not `make test-fast`
def test_stale_cache_is_rebuilt_and_a_current_one_reused(fitted, tiny, tmp_path, monkeypatch):
    model, _ = fitted
    fits = []
    monkeypatch.setattr(rewards, "fit_tfidf", lambda texts, labels: fits.append(1) or fitted)
    monkeypatch.setenv("TUTORIAL_CACHE", str(tmp_path))
    folder = tmp_path / "imdb-reward-tfidf" / model.meta["data"][:16]
    model.save(folder)
    scores = load_reward(tiny)(PHRASES)  # the profile's default reward, from the cache
    assert fits == [] and scores.dtype == torch.float32
    assert torch.allclose(scores, torch.tensor(model.scores(PHRASES), dtype=torch.float32))
    meta = json.loads((folder / "meta.json").read_text())
    for key, stale in [("C", 99.0), ("data", "0" * 64), ("format", 0), ("sklearn", "0.1")]:
        (folder / "meta.json").write_text(json.dumps({**meta, key: stale}))
        rewards.tfidf_model(tiny)
        assert json.loads((folder / "meta.json").read_text())[key] == meta[key]  # rebuilt and rewritten
    assert len(fits) == 4


def test_reward_registry(tiny):
    assert tiny.reward == "imdb-tfidf"
    vader = load_reward(tiny.with_overrides(reward="vader"))(PHRASES[:2])
    assert vader[0] > 0 > vader[1]
    with pytest.raises(ValueError, match="Unknown reward 'sentiment'.*imdb-tfidf, vader"):
        load_reward(tiny.with_overrides(reward="sentiment"))


@pytest.fixture(scope="module")
def tiny_classifier(tiny, tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("distilbert-imdb")
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(load_imdb(tiny)["train"]["text"][:500], vocab_size=800)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, hidden_dim=64, n_layers=1, n_heads=2,
                              id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_positive_logit_per_text(tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["A wonderful film.", "Dreadful.", "It was fine, I suppose, for a Tuesday."]
    scores = classifier_reward(str(tiny_classifier))(texts)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    batch = AutoTokenizer.from_pretrained(tiny_classifier)(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits[:, 1]  # the raw POSITIVE logit, no softmax
    assert torch.allclose(scores, expected, atol=1e-5)


def test_unknown_label_is_a_clear_error(tiny_classifier):
    with pytest.raises(ValueError, match="NEGATIVE.*POSITIVE"):
        classifier_reward(str(tiny_classifier), label="JOYFUL")


def test_ppo_with_a_reward_model_of_another_tokenizer(tiny_classifier, tiny, tokenizer, tiny_base):
    policy = new_lora(tiny_base, tiny)
    queries = [tokenizer("The film", add_special_tokens=False).input_ids] * 16
    metrics = train(policy, ValueHead(tiny_base.config.hidden_size), DisabledAdapters(policy), tokenizer, queries,
                    classifier_reward(str(tiny_classifier)), config_from_profile(tiny, steps=2), progress=False)
    assert metrics.reward_mean.notna().all() and metrics.reward_std.gt(0).all()


def test_a_hub_reward_model_loads_from_safetensors_only(tiny_classifier, tmp_path):
    """The same classifier saved as a pickled pytorch_model.bin (no safetensors) is refused, not unpickled."""
    import shutil

    from transformers import AutoModelForSequenceClassification, pipeline

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_classifier, pickled)
    (pickled / "model.safetensors").unlink()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the pickle a safetensors-only load must refuse
    assert classifier_reward(str(tiny_classifier))(["fine"]).shape == (1,)
    assert pipeline("text-classification", model=str(pickled))  # without the keyword, the pickle would load
    with pytest.raises((OSError, ValueError), match="safetensors"):
        classifier_reward(str(pickled))
