"""The held-out perplexity curve `train_sft` records for notebook 01's figure."""

import pytest

from helpers.data import load_imdb
from helpers.models import perplexity
from helpers.sft import train_sft


def test_sft_curve_starts_at_the_base_and_ends_at_the_trained_adapter(tiny, tokenizer, tiny_base):
    data = load_imdb(tiny)
    heldout = list(data["heldout"]["text"][:8])
    base_ppl = perplexity(tiny_base, tokenizer, heldout, tiny.sft.seq_len)
    model, losses, curve = train_sft(tiny.with_overrides(sft_steps=10), tiny_base, tokenizer, data["train"]["text"], heldout)
    assert list(curve.step) == [0, 2, 4, 6, 8, 10]  # step 0, then every ceil(10 / 5) optimizer steps
    assert curve.perplexity.iloc[0] == pytest.approx(base_ppl, rel=1e-5)  # B = 0: the base itself
    assert curve.perplexity.iloc[-1] == pytest.approx(perplexity(model, tokenizer, heldout, tiny.sft.seq_len), rel=1e-5)
    assert curve.perplexity.iloc[-1] != pytest.approx(base_ppl, rel=1e-3) and losses
