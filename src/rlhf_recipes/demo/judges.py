"""Independent sentiment judges for the demo task, to check what neither the reward model nor the labeler says.

The reward model learned the simulated labeler (`rlhf_recipes.demo.labeler`), and PPO optimised the reward model,
so both are compromised as judges of the PPO policy. These two judges share nothing with them: each is a published,
lexicon-based sentiment analyser whose word list ships inside its PyPI package (offline, deterministic), written
years before this project and unaware of its word lists.

* ``vader``: VADER (Hutto & Gilbert 2014, package ``vaderSentiment``), the ``compound`` score in [-1, 1]. Rules for
  negation, intensifiers, ``but``, punctuation and capitals over a 7,500-entry lexicon rated by humans.
* ``afinn``: AFINN-165 (Nielsen 2011, package ``afinn``), the sum of the valences (-5..+5) of the words it knows.

A judge scores the response alone (the continuation the policy wrote, not the prompt it was given).

Win rate of a policy against a baseline (the first policy of an evaluation, SFT in the demo), per judge: both
policies answer the same prompts (one sample each, same seed); on each prompt the policy scores 1 if the judge
scores its response higher than the baseline's, 0.5 on a tie, 0 otherwise; the win rate is the mean over prompts
(`rlhf_recipes.evaluation_metrics.win_rate`). Sentiment judges reward repetition ("great great great"), which is
why the demo's generalisation goal also asks for distinct-2 and length at least 0.9x the baseline's.

Install: ``pip install "rlhf-recipes[judges]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

from ..evaluation_metrics import win_rate

JUDGES = ("vader", "afinn")


@cache
def _scorer(judge: str) -> Callable[[str], float]:
    if judge not in JUDGES:
        raise ValueError(f"Unknown judge {judge!r} in `judges`; choose from {list(JUDGES)}.")
    try:
        if judge == "vader":
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            analyzer = SentimentIntensityAnalyzer()
            return lambda text: float(analyzer.polarity_scores(text)["compound"])
        from afinn import Afinn

        afinn = Afinn(language="en")
        return lambda text: float(afinn.score(text))
    except ImportError as err:
        raise ImportError(f"The {judge!r} judge needs the `judges` extra: pip install \"rlhf-recipes[judges]\" "
                          f"({err}).") from err


def judge_scores(judge: str, responses: Sequence[str]) -> list[float]:
    """Score each response with `judge` (one of `JUDGES`); higher is more positive."""
    score = _scorer(judge)
    return [score(text) for text in responses]


def judge_win_rates(judges: Sequence[str], responses: Sequence[str], baseline: Sequence[str]) -> dict[str, float]:
    """Per judge, the share of prompts where `responses[i]` beats `baseline[i]` (a tie counts half)."""
    return {j: win_rate(judge_scores(j, responses), judge_scores(j, baseline)) for j in judges}
