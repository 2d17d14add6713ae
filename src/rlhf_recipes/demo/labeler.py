"""A deterministic *simulated labeler* for the offline movie-review demo task.

In Ziegler et al. (2019) human labelers compared continuations of movie reviews and preferred the
ones with positive sentiment. For the offline demo we replace the humans by this hand-written scoring
function. It is deliberately simple, fully deterministic and documented, so that you can see what
the reward model is supposed to learn and what PPO is optimising.

``labeler_score(prompt, response)`` returns a float in ``(-2, 2)``: higher is better. It is the sum of
the components below, squashed with ``2 * tanh(raw / 2)`` (monotonic, so rankings are unchanged):

1. **Sentiment** (``sentiment_score``, in ``[-1, 1]``): a small lexicon gives each sentiment word a
   weight (``"brilliant"`` +1.0, ``"good"`` +0.5, ``"dull"`` -0.7, ``"awful"`` -1.0, ...).

   * Negation: a negator (``not``, ``n't``, ``never``, ``no``, ``without``, ``neither``/``nor``,
     ``nothing``, ...) flips the sentiment words among the next 3 words (the scope stops at
     punctuation, ``and``, ``but``). A negated positive word counts ``-0.8 x`` its weight
     ("not good" is bad), a negated negative word only ``-0.5 x`` ("not bad" is mildly good).
   * Intensifiers (``very``, ``really``, ``truly``, ...) multiply the next word's weight by about
     1.3; diminishers (``a bit``, ``rather``, ``somewhat``, ...) by 0.6-0.8.
   * Contrast: within a sentence the clause after ``but``/``however`` weighs 1.3, the clause before
     it 0.7 ("good but boring" is on balance negative, like people read it).
   * Each (word, negated) pair counts once: repeating "great" does not add sentiment.
   * "love" in the film aspect "love story" is not a feeling and carries no sentiment (PPO on the demo learned to
     praise "the love story" in nearly every review while it did: `benchmarks/results/ppo-generalisation.md`).
   * The total ``s`` is squashed: ``tanh(s / 1.5)``.

2. **Fluency** (penalties, plus a small bonus for a finished sentence):
   * ``+0.15`` if the response ends with ``.``, ``!`` or ``?``; ``-0.35`` otherwise (truncated).
   * Length: 6-25 words is ideal; ``-0.15`` per missing word below 6 and ``-0.03`` per extra word
     beyond 25 (each at most ``-0.8``).
   * Vocabulary: ``-1.2 x`` the fraction of words that never occur in the demo corpus.
   * Word order: ``-1.2 x`` the fraction of adjacent word pairs (including the pair formed with the
     prompt's last word, and sentence boundaries) never seen in the demo corpus; adjectives, genres and
     person names are compared as classes, so "truly masterful" counts as seen when "truly <adjective>" is.
   * Function words: a real sentence is glued by ``the``, ``was``, ``and``, ``it``, ...; if they are
     under 20% of the words (a list of adjectives), ``-3 x`` the shortfall.

3. **Repetition**: ``-2.5 x max(0, 0.6 - distinct_words / words)`` (for 4+ words), and ``-0.25``
   per repeated word trigram (at most ``-0.75``). So ``"great great great great great"`` scores far
   below a plain neutral sentence.

4. **Topic**: ``+0.25`` if the response mentions the film (``film``, ``acting``, ``plot``, ``music``,
   a genre, ...); ``+0.05`` if it only refers back to it (``it``, ``this``) or uses review-like
   sentiment words; ``-0.4`` otherwise (off-topic). ``-0.15`` if it names a different genre than
   the prompt ("this comedy" after a prompt about a western).

An empty response scores ``-2.0``. ``labeler_prefers(prompt, a, b)`` is ``score(a) > score(b)``.
``labeler_breakdown`` returns the individual components, handy to debug reward hacking.

The corpus statistics used by the fluency rules (vocabulary and word pairs) are computed once, lazily,
from a fixed-seed sample of :mod:`rlhf_recipes.demo.corpus`, so scores are reproducible.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from rlhf_recipes.demo import corpus
from rlhf_recipes.demo.words import LEXICON, NEGATIVE_ADJECTIVES, OTHER_SENTIMENT_WORDS, POSITIVE_ADJECTIVES  # noqa: F401

__all__ = [
    "FILM_WORDS",
    "LEXICON",
    "NEGATIVE_ADJECTIVES",
    "POSITIVE_ADJECTIVES",
    "labeler_breakdown",
    "labeler_prefers",
    "labeler_score",
    "rank_responses",
    "ranked_comparisons",
    "sentiment_score",
]

NEGATORS = frozenset(
    {"not", "n't", "never", "no", "hardly", "barely", "neither", "nor", "nothing", "without", "lacks"}
)
INTENSIFIERS: dict[str, float] = {
    "very": 1.3, "really": 1.3, "so": 1.3, "truly": 1.3, "extremely": 1.4, "incredibly": 1.4,
    "deeply": 1.3, "genuinely": 1.2, "absolutely": 1.4, "utterly": 1.4, "thoroughly": 1.3, "most": 1.3,
    "surprisingly": 1.1, "more": 1.2, "completely": 1.3, "totally": 1.3, "real": 1.2,
    "bit": 0.6, "slightly": 0.6, "somewhat": 0.6, "rather": 0.8, "fairly": 0.7, "mildly": 0.6, "pretty": 0.8,
}  # fmt: skip
_GENERIC_GENRE_WORDS = frozenset({"film", "films", "movie", "movies", "story", "stories", "war", "action", "family"})
_CONTRAST = frozenset({"but", "however"})
_SCOPE_STOP = frozenset({"and", "but", "however", "while", "because"})
_NEGATION_SCOPE = 3

FILM_WORDS = frozenset(
    """film films movie movies story stories plot acting actor actors actress cast director directed direction
    script screenplay dialogue music score soundtrack ending scene scenes performance performances character
    characters cinema camera photography editing effects costumes villain hero humor jokes songs visuals
    watch watched watching saw seen screen plays played starring stars starred role directed sequel remake picture
    trailer minute minutes hour hours pacing
    western thriller comedy comedies drama dramas horror romance musical mystery documentary biopic epic
    adventure half act""".split()
)
_REFERENCE_WORDS = frozenset({"it", "its", "this", "one", "they", "them"})
FUNCTION_WORDS = frozenset(
    """the a an and but or of to in on at with for from by about as it its this that these those is was are
    were be been being has have had do does did i me my we our you your he she his her they them their who
    which what when than then so not no very too all every one there if would will can could because while
    up out how just even only also both""".split()
)

_TOKEN_RE = re.compile(r"[a-z]+(?=n't)|n't|[a-z]+|[.,!?;:]")
_END_PUNCT = ".!?"


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def _words(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t[0].isalpha() or t == "n't"]


def sentiment_score(text: str) -> float:
    """Lexicon sentiment of ``text`` in ``[-1, 1]`` (see the module docstring for the rules)."""
    tokens = _tokens(text)
    tokens = [t for t, after in zip(tokens, tokens[1:] + [""]) if not (t == "love" and after == "story")]
    # split into sentences, then into contrast segments ("... but ...")
    sentences: list[list[list[str]]] = [[[]]]
    for tok in tokens:
        if tok in _END_PUNCT:
            sentences.append([[]])
        elif tok in _CONTRAST:
            sentences[-1].append([tok])
        else:
            sentences[-1][-1].append(tok)
    seen: set[tuple[str, bool]] = set()
    total = 0.0
    for segments in sentences:
        m = len(segments)
        for i, seg in enumerate(segments):
            seg_weight = 1.0 if m == 1 else (1.3 if i == m - 1 else 0.7)
            neg_left = 0
            prev = ""
            for tok in seg:
                if tok in NEGATORS:
                    neg_left = _NEGATION_SCOPE
                    prev = tok
                    continue
                if tok in ",;:" or tok in _SCOPE_STOP:
                    neg_left = 0
                    prev = tok
                    continue
                negated = neg_left > 0
                if neg_left > 0:
                    neg_left -= 1
                w = LEXICON.get(tok)
                if w is not None and (tok, negated) not in seen:
                    seen.add((tok, negated))
                    w *= INTENSIFIERS.get(prev, 1.0)
                    if negated:
                        w = -0.8 * w if w > 0 else -0.5 * w
                    total += seg_weight * w
                prev = tok
    return math.tanh(total / 1.5)


@lru_cache(maxsize=1)
def _reference() -> tuple[frozenset[str], frozenset[tuple[str, str]], dict[str, str], tuple[tuple[str, ...], ...]]:
    """Vocabulary, (class-mapped) word bigrams and genre phrases of the demo corpus (fixed seed)."""
    word_class: dict[str, str] = {}
    for w in (*POSITIVE_ADJECTIVES, *NEGATIVE_ADJECTIVES, *corpus.NEUTRAL_ADJECTIVES):
        if " " not in w:
            word_class[w] = "<adj>"
    for w in (*corpus.FIRST_NAMES, *corpus.LAST_NAMES):
        word_class[w.lower()] = "<name>"

    for g in corpus.GENRES:
        for w in (*g.split(), *corpus.plural(g).split()):
            if w not in _GENERIC_GENRE_WORDS:
                word_class[w] = "<genre>"

    texts = corpus.pretraining_texts(4000, seed=20190918)
    texts += [r["prompt"] + r["completion"] for r in corpus.sft_demonstrations(4000, seed=20190918)]
    vocab: set[str] = set(corpus.corpus_words())
    bigrams: set[tuple[str, str]] = set()
    for text in texts:
        seq = _order_tokens(_tokens(text), word_class)
        vocab.update(w for w in _words(_tokens(text)))
        bigrams.update(zip(seq, seq[1:], strict=False))
    genres = tuple(
        sorted({tuple(g.split()) for g in (*corpus.GENRES, *(corpus.plural(g) for g in corpus.GENRES))}, key=len)[::-1]
    )
    return frozenset(vocab), frozenset(bigrams), word_class, genres


def _order_tokens(tokens: list[str], word_class: dict[str, str]) -> list[str]:
    """Words mapped to their class, with ``<s>`` marking sentence ends (for the word-order rule)."""
    out = []
    for t in tokens:
        if t in _END_PUNCT:
            if out and out[-1] != "<s>":
                out.append("<s>")
        elif t[0].isalpha() or t == "n't":
            out.append(word_class.get(t, t))
    return out


def _genres_in(words: list[str], genres: tuple[tuple[str, ...], ...]) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    i = 0
    while i < len(words):
        for g in genres:  # longest first
            if tuple(words[i : i + len(g)]) == g:
                found.add(g)
                i += len(g) - 1
                break
        i += 1
    return found


def labeler_breakdown(prompt: str, response: str) -> dict[str, float]:
    """The components of :func:`labeler_score` (and ``"total"``), for inspection and debugging."""
    tokens = _tokens(response)
    words = _words(tokens)
    if not words:
        return {"total": -2.0, "empty": 1.0}
    vocab, bigrams, word_class, genres = _reference()
    n = len(words)
    out: dict[str, float] = {"sentiment": sentiment_score(response)}

    # fluency
    out["end"] = 0.15 if response.rstrip()[-1] in _END_PUNCT else -0.35
    if n < 6:
        out["length"] = -min(0.8, 0.15 * (6 - n))
    else:
        out["length"] = -min(0.8, 0.03 * max(0, n - 25))
    out["vocab"] = -1.2 * sum(w not in vocab for w in words) / n
    prompt_words = _words(_tokens(prompt))
    seq = _order_tokens(_tokens(prompt), word_class)[-1:] + _order_tokens(tokens, word_class)
    if seq and seq[-1] == "<s>":
        seq.pop()  # the final period is judged by the "end" rule
    pairs = list(zip(seq, seq[1:], strict=False))
    out["word_order"] = -1.2 * sum(p not in bigrams for p in pairs) / len(pairs) if pairs else 0.0
    fw = sum(w in FUNCTION_WORDS for w in words) / n
    out["function_words"] = -4.0 * max(0.0, 0.15 - fw) if n >= 4 else 0.0

    # repetition
    rep = 0.0
    if n >= 4:
        rep -= 2.5 * max(0.0, 0.6 - len(set(words)) / n)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    rep -= min(0.75, 0.25 * (len(trigrams) - len(set(trigrams))))
    out["repetition"] = rep

    # topic
    word_set = set(words)
    if word_set & FILM_WORDS:
        topic = 0.25
    elif word_set & _REFERENCE_WORDS or any(w in LEXICON for w in words):
        topic = 0.05
    else:
        topic = -0.4
    prompt_text = " ".join(prompt_words)
    if any(" ".join(g) not in prompt_text for g in _genres_in(words, genres)):
        topic -= 0.15
    out["topic"] = topic

    raw = sum(out.values())
    out["total"] = 2.0 * math.tanh(raw / 2.0)
    return out


def labeler_score(prompt: str, response: str) -> float:
    """Simulated human preference score of ``response`` as a continuation of ``prompt``, in ``(-2, 2)``."""
    return labeler_breakdown(prompt, response)["total"]


def labeler_prefers(prompt: str, a: str, b: str) -> bool:
    """True iff the simulated labeler strictly prefers continuation ``a`` over ``b`` (ties: False)."""
    return labeler_score(prompt, a) > labeler_score(prompt, b)


def rank_responses(prompt: str, responses: list[str]) -> list[int]:
    """The simulated labeler's ranking: indices of ``responses`` best first (ties keep the given order).

    This is how it labels through the label store, like any other labeler (``feedback.simulated.label_all``).
    """
    scores = [labeler_score(prompt, r) for r in responses]
    return sorted(range(len(responses)), key=lambda i: (-scores[i], i))


def ranked_comparisons(n: int, k: int = 4, seed: int = 0, min_gap: float = 0.05) -> list[dict]:
    """``n`` rows ``{"prompt", "responses"}`` with ``k`` distinct responses sorted best to worst.

    Candidates come from :func:`rlhf_recipes.demo.corpus.sample_continuations` and are ranked by
    :func:`labeler_score`; the ``k`` kept candidates have labeler scores at least ``min_gap`` apart, so the
    ranking is never a coin flip. Prompts come from the train split.
    """
    import random

    if k < 2:
        raise ValueError("k must be >= 2")
    rng = random.Random(f"ranked:{seed}")
    rows = []
    while len(rows) < n:
        prompt = corpus._sample_prompt(rng, "train")
        pool = corpus.sample_continuations(prompt, max(3 * k, 12), rng)
        rng.shuffle(pool)
        picked: list[tuple[float, str]] = []
        for cand in pool:
            s = labeler_score(prompt, cand)
            if all(abs(s - t) >= min_gap for t, _ in picked):
                picked.append((s, cand))
                if len(picked) == k:
                    break
        if len(picked) < k:
            continue
        picked.sort(key=lambda x: -x[0])
        rows.append({"prompt": prompt, "responses": [c for _, c in picked]})
    return rows
