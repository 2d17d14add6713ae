"""The human-feedback loop of InstructGPT (steps 2-3, repeated): sample K answers, rank them, retrain.

    policy --recipes/sample.py--> samples.jsonl --recipes/label.py (or a script)--> comparisons.jsonl
    comparisons.jsonl --recipes/reward.py--> reward model --recipes/ppo.py--> next policy

`sampling` (prompt hygiene, stable ids, K distinct answers), `store` (the append-only label store every labeler
writes through: people in the app, scripts through its API, the demo's simulated labeler), `stats` (progress and
agreement), `users` (labeler accounts). Imported by the recipes, never by the trainers.
"""
