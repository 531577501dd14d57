import math

import pytest
import torch

from helpers.ppo_math import (
    AdaptiveKLController,
    entropy,
    gae,
    kl_exact,
    kl_sampled,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)


def test_gae_by_hand():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: 1 - 0.5 = 0.5; t=1: 0 + 0.95 * 0.5; t=0: 0.95 * 0.475
    assert adv.tolist()[0] == pytest.approx([0.45125, 0.475, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.95125, 0.975, 1.0])


def test_gae_stops_at_the_end_of_a_shorter_response():
    rewards, values = torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 9.0]])
    adv, ret = gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.475, 0.5, 0.0])  # padding contributes nothing
    assert ret.tolist()[0] == pytest.approx([0.975, 1.0, 0.0])


def test_gae_with_discount():
    adv, _ = gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([1.5, 1.0])


def test_whiten_is_trl_masked_whiten_with_the_unbiased_variance():
    """TRL 0.11's masked_whiten: (x - mean) * rsqrt(var + 1e-8), var with Bessel's n / (n - 1) over the
    unmasked entries; shift_mean=False adds the mean back."""
    x, mask = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    # mean 2; unbiased variance (1 + 0 + 1) / (3 - 1) = 1 (the population variance would be 2/3)
    assert whiten(x, mask).tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
    x, mask = torch.tensor([[1.0, 3.0, 0.0], [5.0, 7.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # mean 4; squares 9, 1, 1, 9 -> unbiased variance 20 / 3
    expected = [(v - 4) / math.sqrt(20 / 3 + 1e-8) for v in (1.0, 3.0, 5.0, 7.0)]
    out = whiten(x, mask)
    assert out[mask.bool()].tolist() == pytest.approx(expected, abs=1e-6) and out[~mask.bool()].abs().max() == 0
    with pytest.raises(ValueError, match="two"):
        whiten(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))


def test_per_token_rewards_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]]), torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = per_token_rewards(torch.tensor([10.0, 20.0]), logp, ref, mask, kl_coef=0.1)
    # -0.1 * (logp - ref) everywhere; the score on the last unmasked token; padding 0
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 10.0])
    assert rewards.tolist()[1] == pytest.approx([-0.1, 20.0, 0.0])


def test_clipped_policy_loss_by_hand():
    new, old = torch.tensor([[math.log(1.5), math.log(1.5)]]), torch.zeros(1, 2)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    loss, clipfrac, approx_kl = policy_loss(new, old, adv, mask, cliprange=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 - math.log(1.5))


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[0.3, -0.1, 2.0]])
    loss, clipfrac, approx_kl = policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), adv, torch.ones(1, 3), 0.2)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert clipfrac.item() == 0 and approx_kl.item() == 0


def test_clipped_value_loss_by_hand():
    mask = torch.ones(1, 1)
    # moved 1.0 from 0.0 towards a return of 2.0: clipped to 0.2, whose error (1.8^2) is the larger
    assert value_loss(torch.tensor([[1.0]]), torch.zeros(1, 1), torch.tensor([[2.0]]), mask, 0.2).item() == pytest.approx(1.62)
    # inside the clip range both terms agree
    assert value_loss(torch.tensor([[0.1]]), torch.zeros(1, 1), torch.zeros(1, 1), mask, 0.2).item() == pytest.approx(0.005)


def test_kl_estimators_by_hand():
    p_logits = torch.log(torch.tensor([[[0.25, 0.75], [0.25, 0.75]]]))
    q_logits = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    exact = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_exact(p_logits, q_logits, torch.ones(1, 2)).item() == pytest.approx(exact, rel=1e-5)
    assert kl_exact(p_logits, p_logits, torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-7)
    logp = torch.log(torch.tensor([[0.75, 0.25, 0.9]]))
    ref = torch.log(torch.tensor([[0.5, 0.5, 0.1]]))
    # the third token is padding: not counted
    assert kl_sampled(logp, ref, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(math.log(0.75))


def test_entropy_by_hand():
    logp = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]], [[1.0, 1e-30], [0.5, 0.5]]]))
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # the second row is padding
    expected = (math.log(2) - 0.25 * math.log(0.25) - 0.75 * math.log(0.75)) / 2
    assert entropy(logp, mask).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.2 * (1 - 0.2 * 100 / 10000))


def test_kl_and_entropy_row_by_row_equal_the_whole_batch_bit_for_bit():
    torch.manual_seed(0)
    logp, ref_logp = (torch.log_softmax(3 * torch.randn(4, 5, 3000), -1) for _ in range(2))
    mask = (torch.rand(4, 5) > 0.2).float()
    per_token_kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    assert torch.equal(kl_exact(logp, ref_logp, mask), (per_token_kl * mask).sum(-1) / mask.sum(-1))
    per_token_entropy = -(logp.exp() * logp).sum(-1)
    assert torch.equal(entropy(logp, mask), (per_token_entropy * mask).sum() / mask.sum())
