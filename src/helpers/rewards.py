"""Reward functions: any `Callable[[list[str]], torch.Tensor]` (one score per text) works with the PPO loop.

- `vader_reward`: VADER's compound sentiment score in [-1, 1]; offline, the default.
- `classifier_reward`: a Hugging Face text-classification model scored by its POSITIVE logit, as the
  original example did with `lvwerra/distilbert-imdb`. It has its own tokenizer: it sees text only.
- `token_fraction_reward`: the fraction of response tokens equal to one token; a verifiable reward
  the tests use to check that the loop learns.
"""

from __future__ import annotations

from typing import Callable

import torch

from .profiles import Profile

Reward = Callable[[list[str]], torch.Tensor]


def vader_reward() -> Reward:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def reward(texts: list[str]) -> torch.Tensor:
        return torch.tensor([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=torch.float32)

    return reward


def classifier_reward(model_name_or_path: str, label: str = "POSITIVE", batch_size: int = 16,
                      device: int | str | None = None) -> Reward:
    """The raw logit of `label` from a text-classification pipeline (function_to_apply="none")."""
    from transformers import pipeline

    if device is None:
        device = 0 if torch.cuda.is_available() else -1
    classifier = pipeline("text-classification", model=model_name_or_path, device=device, use_safetensors=True)
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


def load_reward(profile: Profile) -> Reward:
    """The profile's reward: VADER offline, else the named text-classification model."""
    if profile.reward == "vader":
        return vader_reward()
    return classifier_reward(profile.reward)
