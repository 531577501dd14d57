"""Which arm is my framework? One registry, rendered by notebooks 04 and 06 and the README.

Each entry is read from the framework's source (the commit named in `source`; TRL's lines are the installed
1.16.0's), with what its reference is when RL continues an SFT LoRA, its default GRPO β, and the arms of this
package (PPO's, helpers.harness.arms; GRPO's, helpers.grpo) that do the same. `confirmed` says how sure the
reading is: "source" (the decisive lines read at that commit), or a caveat in words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


@dataclass(frozen=True)
class Framework:
    name: str  # the framework and the setting that decides
    reference: str  # what the KL reference is when RL continues an SFT LoRA
    beta: str  # its default GRPO KL coefficient ("-": no GRPO)
    ppo_arm: str
    grpo_arm: str  # helpers.grpo.GRPO_ARMS ("-": none)
    source: str  # file:line at a commit
    confirmed: str = "source"


FRAMEWORKS = [
    Framework("TRL 1.16 GRPOTrainer, a PeftModel with the SFT adapter", "a frozen copy of the adapter ('ref')",
              "0.0 (no reference)", "adapter+ref-adapter", "ref-copy",
              "trl/trainer/grpo_trainer.py:478-506 (copy), :2727 (use_adapter); grpo_config.py:681-682 (β)"),
    Framework("TRL 1.16 GRPOTrainer, merged model + peft_config", "adapters disabled = the SFT model",
              "0.0 (no reference)", "merged+disabled", "recipe",
              "trl/trainer/grpo_trainer.py:476 (get_peft_model), :444-449 (a PeftModel + peft_config: merge first)"),
    Framework("TRL 1.16 DPO, KTO and RLOO trainers, a PeftModel with the SFT adapter",
              "a frozen copy of the adapter ('ref'), as GRPO", "- (no GRPO; DPO and KTO β 0.1, RLOO 0.05)",
              "adapter+ref-adapter", "-", "trl/trainer/dpo_trainer.py:689, kto_trainer.py:740, rloo_trainer.py:421"),
    Framework("Unsloth (GRPO patch of TRL)", "meant to be the base: it comments out TRL's 'ref' copy", "0.001",
              "adapter+disabled", "pitfall", "unsloth/models/rl.py @0050c73e, patch_functions (add_adapter_block_pattern); "
              "β in _patch_trl_rl_trainers_impl",
              "the pattern read matches TRL's older `if is_peft_available() and ...` line, not 1.16's `elif`: with "
              "TRL 1.16 that commit may leave the copy (ref-copy); a later fix is reported, not read"),
    Framework("verl, LoRA on (lora_rank > 0, or lora_adapter_path)", "the actor with LoRA disabled = the base",
              "0.001 (kl_loss_coef; use_kl_loss off by default)", "adapter+disabled", "pitfall",
              "verl/trainer/ppo/ray_trainer.py @00401103 (ref_in_actor); verl/workers/fsdp_workers.py @004c8880 "
              "(compute_ref_log_prob: disable_adapter); verl/trainer/config/actor/actor.yaml @03d67c62:75,82",
              "lora_adapter_path seen only in newer copies, not at these commits"),
    Framework("LLaMA-Factory, create_new_adapter=False (default)", "the resumed adapter disabled = the base",
              "- (no GRPO; DPO/KTO pref_beta 0.1)", "adapter+disabled", "-",
              "src/llamafactory/model/adapter.py @01d87b82:166-191; train/trainer_utils.py @002f58ef:120-135; "
              "train/dpo/trainer.py @00052690:255-257"),
    Framework("LLaMA-Factory, create_new_adapter=True", "merges first: the SFT model", "-", "merged+disabled", "-",
              "src/llamafactory/model/adapter.py @01d87b82:166-182",
              "ignored (the adapter is resumed) on a quantized model, ZeRO-3 or use_unsloth"),
    Framework("LLaMA-Factory, ref_model + ref_model_adapters", "a separate model: base + SFT adapter", "-",
              "adapter+copy", "-", "src/llamafactory/train/trainer_utils.py @002f58ef:120-124"),
    Framework("ms-swift, --adapters sft (default ref_adapters=[])", "adapters disabled = the base", "0.04",
              "adapter+disabled", "pitfall", "swift/pipelines/train/rlhf.py @0319d04b:164-173 (ref_adapters)",
              "β and the GRPO trainer's disable_adapter read in copies whose path the index hides, and in the docs"),
    Framework("ms-swift, --adapters sft --ref_adapters sft (>= 3.8)", "a frozen SFT adapter", "0.04",
              "adapter+ref-adapter", "ref-copy", "swift/pipelines/train/rlhf.py @0319d04b:164-173"),
    Framework("OpenRLHF", "a separate model loaded from --pretrain (no adapter loading: merge first)",
              "0.01 (init_kl_coef)", "merged+copy", "-",
              "openrlhf/cli/train_ppo_ray.py @021d1b09; openrlhf/trainer/ray/launcher.py @01436999"),
]


def framework_table(grpo: bool = False) -> pd.DataFrame:
    """The registry as a table; `grpo=True` leaves out the frameworks without GRPO and names GRPO's arm."""
    rows = [asdict(f) for f in FRAMEWORKS if not (grpo and f.grpo_arm == "-")]
    table = pd.DataFrame(rows).set_index("name")
    return table.drop(columns=["ppo_arm" if grpo else "grpo_arm"])


def framework_markdown(step0: pd.DataFrame | None = None) -> str:
    """The README's table. `step0`: notebook 06's table (arm, "KL to its reference", ...) from a run of TRL's own
    GRPOTrainer; TRL's GRPO rows then say what that run measured, the others are cited from their sources."""
    measured = {} if step0 is None else dict(zip(step0["arm"], step0["KL to its reference"]))
    lines = ["| framework (setting) | reference when RL continues an SFT LoRA | default GRPO β | arm (PPO · GRPO) | "
             "evidence |", "| --- | --- | --- | --- | --- |"]
    for f in FRAMEWORKS:
        arms = f"`{f.ppo_arm}`" + (f" · `{f.grpo_arm}`" if f.grpo_arm != "-" else "")
        if f.name.startswith("TRL") and f.grpo_arm in measured:
            evidence = (f"measured in notebook 06 (TRL's own GRPOTrainer): step-0 KL to its reference "
                        f"{measured[f.grpo_arm]:.4f} nats/token; `{f.source}`")
        else:
            evidence = f"`{f.source}`" + ("" if f.confirmed == "source" else f"; caveat: {f.confirmed}")
            if f.grpo_arm in measured:
                evidence += (f"; its GRPO arm, run through TRL in notebook 06: step-0 KL to its reference "
                             f"{measured[f.grpo_arm]:.4f} nats/token")
        lines.append(f"| {f.name} | {f.reference} | {f.beta} | {arms} | {evidence} |")
    return "\n".join(lines)
