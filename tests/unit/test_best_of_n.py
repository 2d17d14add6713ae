"""The analytic KL of best-of-n on hand-computed numbers."""

import pytest
import yaml

from rlhf_recipes.best_of_n import best_of_n_kl


@pytest.mark.parametrize("n, expected", [
    (1, 0.0),                       # sampling once is the policy itself
    (2, 0.6931471805599453 - 0.5),  # ln 2 - 1/2
    (4, 1.3862943611198906 - 0.75),  # ln 4 - 3/4
    (64, 4.1588830833596715 - 63 / 64),
])
def test_best_of_n_kl_on_hand_numbers(n, expected):
    assert best_of_n_kl(n) == pytest.approx(expected, abs=1e-12)


def test_best_of_n_kl_grows_with_n_and_refuses_n_below_one():
    values = [best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64)]
    assert values == sorted(values) and len(set(values)) == len(values)
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


@pytest.mark.parametrize("recipe, configs", [
    ("grpo", ("demo", "gpt2")), ("rloo", ("demo", "gpt2")), ("best_of_n", ("demo",)),
])
def test_shipped_recipes_parse_and_are_given_at_least_the_demo_ppo_budget(recipe, configs):
    from conftest import REPO, load_recipe

    from rlhf_recipes.config import check_config_keys, parse_recipe_args

    module = load_recipe(recipe)
    for name in configs:
        assert check_config_keys(REPO / f"recipes/{name}/{recipe}.yaml", module.DATACLASSES)
    _, args, _ = parse_recipe_args(module.DATACLASSES, ["--config", str(REPO / f"recipes/demo/{recipe}.yaml")])
    if recipe == "best_of_n":  # selects by the reward PPO optimises
        ppo = yaml.safe_load((REPO / "recipes/demo/ppo.yaml").read_text())
        assert args.n == 16 and args.response_length == 24
        assert args.missing_eos_penalty == ppo["missing_eos_penalty"]
    else:  # at least PPO's episodes (PPO stops earlier to keep diversity), its response length and penalty
        ppo = yaml.safe_load((REPO / "recipes/demo/ppo.yaml").read_text())
        assert args.max_steps * args.per_device_train_batch_size == 2048 >= ppo["total_episodes"]
        assert args.max_completion_length == ppo["response_length"] == 24
        # PPO's recipe dropped the missing-EOS penalty; GRPO and RLOO keep theirs, with which they win more
        assert args.missing_eos_penalty == 1.0 and ppo["missing_eos_penalty"] == 0.0
