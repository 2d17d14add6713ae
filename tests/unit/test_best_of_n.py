"""The analytic KL of best-of-n on hand-computed numbers."""

import pytest

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
