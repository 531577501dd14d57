"""The study harness: what notebook 04, notebook 05 and `make study` use to run many runs and judge them.

It imports the tutorial library (helpers.*) and is never imported by it (tests/test_architecture.py).

- arms: one registry entry per (policy, reference) pair; builds an arm's models.
- trainers: one registry entry per trainer (PPO, GRPO); `fit` trains an arm.
- run, execute, measure: one run as one value, executed and measured; results: many runs' tables.
- schedule, workers: a plan's runs in this process or on Ray workers, each landing atomically.
- verdicts: claims judged over paired seeds; compare: notebook 04's plan; figures: 04's and 05's plots.
- sizing, design, study, answers: the full study (`make study`), its verdicts and the thread's answers.
- grpo_study, grpo_report, frameworks: the GRPO study (`make study-grpo`, notebook 06) and the frameworks' table.
- publish, readme, benchfigures, site: executed notebooks and results into docs/, the README's and the
  Performance page's generated blocks, the docs site.
"""
