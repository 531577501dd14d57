"""The Hub reward path (a text classifier with its own tokenizer, scored by its POSITIVE logit), run
offline on a tiny DistilBERT classifier saved locally the way `lvwerra/distilbert-imdb` is."""

import pytest
import torch

from helpers.data import load_imdb
from helpers.models import new_lora
from helpers.ppo import ValueHead, config_from_profile, train
from helpers.reference import DisabledAdapters
from helpers.rewards import classifier_reward


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
