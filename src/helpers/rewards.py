"""Reward functions: any `Callable[[list[str]], torch.Tensor]` (one score per text) works with the PPO loop.

A profile names its reward (`Profile.reward`); `load_reward` looks the name up in `REWARDS`.

- `tfidf_reward` ("imdb-tfidf", the offline default): RLHF's second ingredient, a reward model trained
  from human labels. TF-IDF + logistic regression fitted on the labelled IMDB reviews of the train split;
  the reward is its logit for "positive". Built once (about 20 s) and cached without pickle.
- `vader_reward` ("vader"): VADER's compound sentiment score in [-1, 1], a hand-made lexicon. It scores
  most short continuations 0 and is a weak judge of movie reviews (see notebook 03).
- `classifier_reward`: a Hugging Face text-classification model scored by its POSITIVE logit, as the
  original example did with `lvwerra/distilbert-imdb`. It has its own tokenizer: it sees text only.
- `token_fraction_reward`: the fraction of response tokens equal to one token; a verifiable reward
  the tests use to check that the loop learns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import sklearn
import torch
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from transformers import pipeline
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from .artifacts import atomic_dir, read_json, write_json
from .checkpoints import cache_dir
from .data import load_imdb
from .profiles import Profile

Reward = Callable[[list[str]], torch.Tensor]


def vader_reward() -> Reward:
    analyzer = SentimentIntensityAnalyzer()

    def reward(texts: list[str]) -> torch.Tensor:
        return torch.tensor([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=torch.float32)

    return reward


def classifier_reward(model_name_or_path: str, label: str = "POSITIVE", batch_size: int = 16,
                      device: int | str | None = None) -> Reward:
    """The raw logit of `label` from a text-classification pipeline (function_to_apply="none")."""
    if device is None:
        device = 0 if torch.cuda.is_available() else -1
    # safetensors only: `use_safetensors` goes to the model loader through model_kwargs (given to pipeline()
    # itself, transformers 5.24 hands it to the tokenizer and would still load a pickled pytorch_model.bin)
    classifier = pipeline("text-classification", model=model_name_or_path, device=device,
                          model_kwargs={"use_safetensors": True})
    names = classifier.model.config.id2label.values()
    if label not in names:
        raise ValueError(f"{model_name_or_path} has no label {label!r}; its labels are {sorted(names)}")

    def reward(texts: list[str]) -> torch.Tensor:
        outputs = classifier(texts, top_k=None, function_to_apply="none", batch_size=batch_size, truncation=True)
        return torch.tensor([next(o["score"] for o in out if o["label"] == label) for out in outputs],
                            dtype=torch.float32)

    return reward


def token_fraction_reward(tokenizer, token: str) -> Reward:
    """Fraction of tokens of each text equal to `token` (which must be one token); in [0, 1]."""
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{token!r} is {len(ids)} tokens; token_fraction_reward needs exactly one.")
    target = ids[0]

    def reward(texts: list[str]) -> torch.Tensor:
        scores = []
        for text in texts:
            t = tokenizer(text, add_special_tokens=False).input_ids
            scores.append(sum(i == target for i in t) / max(1, len(t)))
        return torch.tensor(scores, dtype=torch.float32)

    return reward


# --- a reward model trained from human labels: TF-IDF + logistic regression -------------------------

# Word unigrams and bigrams ("not good" is not "good"), log-scaled counts; the 50k most frequent terms
# seen in at least 5 reviews. About 90% held-out accuracy, the usual IMDB baseline, in ~20 s on one core.
TFIDF_SETTINGS = dict(ngram_range=(1, 2), min_df=5, max_df=0.9, max_features=50_000, sublinear_tf=True)
TFIDF_C = 2.0  # inverse L2 strength of the logistic regression
TFIDF_KEPT_OUT = 2_500  # the last reviews of the train split: never fitted, they measure accuracy
TFIDF_FORMAT = 1  # bump when the stored files change


class RewardCacheError(RuntimeError):
    """A cached reward model whose files are unreadable or do not match their recorded checksums."""


@dataclass
class TfidfRewardModel:
    """The fitted model as plain arrays: `terms[i]` is column i, score = tfidf(text) . coef + intercept."""

    terms: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    meta: dict

    def __post_init__(self):
        if not (len(self.terms) == len(self.idf) == len(self.coef)):
            raise RewardCacheError(f"{len(self.terms)} terms, {len(self.idf)} idf weights and "
                                   f"{len(self.coef)} coefficients: the reward model is inconsistent.")
        # sklearn's own tokenizer and tf-idf transform, given the stored vocabulary and idf: no fitted
        # object is loaded, yet texts are tokenized exactly as they were when the model was fitted.
        settings = {k: v for k, v in self.meta["settings"].items() if k not in ("min_df", "max_df", "max_features")}
        self._vectorizer = TfidfVectorizer(**{**settings, "ngram_range": tuple(settings["ngram_range"])},
                                           vocabulary=self.terms, dtype=np.float64)
        self._vectorizer.idf_ = self.idf

    def scores(self, texts: list[str]) -> np.ndarray:
        """The logit of "positive" for each text."""
        return self._vectorizer.transform(texts) @ self.coef + self.intercept

    def accuracy(self, texts: list[str], labels) -> float:
        return float(np.mean((self.scores(texts) > 0) == np.asarray(labels).astype(bool)))

    def save(self, folder: str | Path) -> Path:
        """vocabulary.json + weights.safetensors + meta.json (with the two files' checksums), atomically."""
        with atomic_dir(folder) as tmp:
            (tmp / "vocabulary.json").write_text(json.dumps(self.terms))
            save_file({"idf": self.idf, "coef": self.coef, "intercept": np.array([self.intercept])},
                      str(tmp / "weights.safetensors"))
            checksums = {name: _sha256_file(tmp / name) for name in ("vocabulary.json", "weights.safetensors")}
            write_json(tmp / "meta.json", {**self.meta, "sha256": checksums})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TfidfRewardModel":
        folder = Path(folder)
        try:
            meta = read_json(folder / "meta.json")
            for name, digest in meta["sha256"].items():
                if _sha256_file(folder / name) != digest:
                    raise RewardCacheError(f"{folder / name} does not match the checksum in meta.json.")
            weights = load_file(str(folder / "weights.safetensors"))
            terms = json.loads((folder / "vocabulary.json").read_text())
            return cls(terms, weights["idf"], weights["coef"], float(weights["intercept"][0]), meta)
        except (OSError, ValueError, KeyError, RewardCacheError) as err:
            raise RewardCacheError(f"The cached reward model in {folder} is corrupt ({err}). Delete that folder "
                                   f"and run again: it is rebuilt from the IMDB reviews in about 20 s.") from err


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(texts: list[str], labels) -> str:
    """A hash of the labelled reviews: a cached model fitted on other data is never reused."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels):
        digest.update(f"{int(label)}\t{text}\n".encode())
    return digest.hexdigest()


def fit_tfidf(texts: list[str], labels, kept_out: int = TFIDF_KEPT_OUT):
    """Fit TF-IDF + logistic regression on all but the last `kept_out` reviews; accuracy on those.

    Returns the model as arrays and the fitted sklearn pipeline (tests check that they agree).
    """
    labels = np.asarray(labels)
    if len(texts) <= 2 * kept_out or set(np.unique(labels)) != {0, 1}:
        raise ValueError(f"Need more than {2 * kept_out} reviews labelled 0 and 1; got {len(texts)} with labels "
                         f"{sorted(set(labels.tolist()))}.")
    fit_x, fit_y = list(texts[:-kept_out]), labels[:-kept_out]
    pipeline = make_pipeline(TfidfVectorizer(**TFIDF_SETTINGS, dtype=np.float64),
                             LogisticRegression(C=TFIDF_C, solver="liblinear"))
    pipeline.fit(fit_x, fit_y)
    vectorizer, classifier = pipeline[0], pipeline[1]
    terms = [""] * len(vectorizer.vocabulary_)
    for term, column in vectorizer.vocabulary_.items():
        terms[column] = term
    meta = dict(_cache_key(fingerprint(texts, labels)), fitted_reviews=len(fit_x), kept_out_reviews=kept_out)
    model = TfidfRewardModel(terms, vectorizer.idf_.astype(np.float64), classifier.coef_[0].astype(np.float64),
                             float(classifier.intercept_[0]), meta)
    model.meta["kept_out_accuracy"] = model.accuracy(list(texts[-kept_out:]), labels[-kept_out:])
    return model, pipeline


def _cache_key(data_fingerprint: str) -> dict:
    """What a cached model must match to be reused. sklearn's version is part of it: the vocabulary is only
    valid with the tokenizer that built it."""
    settings = json.loads(json.dumps(TFIDF_SETTINGS))  # tuples become lists, as they read back from meta.json
    return dict(format=TFIDF_FORMAT, settings=settings, C=TFIDF_C, sklearn=sklearn.__version__, data=data_fingerprint)


def tfidf_model(profile: Profile, folder: str | Path | None = None) -> TfidfRewardModel:
    """The profile's TF-IDF reward model: loaded from the cache, or fitted on its train split and cached.

    A cache fitted with other settings, another format or other data is rebuilt; a corrupt one is an error.
    """
    train = load_imdb(profile)["train"]
    texts, labels = list(train["text"]), list(train["label"])
    data = fingerprint(texts, labels)
    folder = Path(folder or cache_dir() / "imdb-reward-tfidf" / data[:16])
    if (folder / "meta.json").exists():
        model = TfidfRewardModel.load(folder)
        if all(model.meta.get(k) == v for k, v in _cache_key(data).items()):
            return model
        print(f"The reward model cached in {folder} was fitted with other settings or data; rebuilding it.")
    print(f"Fitting the TF-IDF reward model on {len(texts) - TFIDF_KEPT_OUT} labelled reviews (once, about 20 s)...")
    model, _ = fit_tfidf(texts, labels)
    model.save(folder)
    return model


def tfidf_reward(profile: Profile) -> Reward:
    model = tfidf_model(profile)

    def reward(texts: list[str]) -> torch.Tensor:
        return torch.tensor(model.scores(texts), dtype=torch.float32)

    return reward


# --- the registry ------------------------------------------------------------------------------------

# reward name -> what builds it for a profile. Any other name containing "/" is a Hub id or a local folder
# of a text-classification model, scored by its POSITIVE logit (the original example's reward).
REWARDS: dict[str, Callable[[Profile], Reward]] = {
    "imdb-tfidf": tfidf_reward,
    "vader": lambda profile: vader_reward(),
    "lvwerra/distilbert-imdb": lambda profile: classifier_reward("lvwerra/distilbert-imdb"),
}


def load_reward(profile: Profile) -> Reward:
    """The reward the profile names (`Profile.reward`)."""
    if profile.reward in REWARDS:
        return REWARDS[profile.reward](profile)
    if "/" in profile.reward:
        return classifier_reward(profile.reward)
    raise ValueError(f"Unknown reward {profile.reward!r}. Valid rewards: {', '.join(REWARDS)}, or a Hub id or "
                     f"local folder of a text-classification model (a name containing '/').")
