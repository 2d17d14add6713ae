"""Embedded offline corpus for the demo task: continue the opening of a movie review.

This mirrors the sentiment task of Ziegler et al. (2019), "Fine-Tuning Language Models from Human
Preferences": the policy sees the first words of a movie review and writes a short continuation; the
(here: simulated, see :mod:`rlhf_recipes.demo.labeler`) labeler prefers positive, fluent, on-topic
continuations.

Nothing is downloaded: every text is produced by a small template grammar over hand-written word lists
(genres, film aspects, sentiment adjectives, characters, plots, ...). The vocabulary is a few hundred
words, so a tiny GPT-2 can learn the language in a minute or two on a CPU. All functions are
deterministic given their ``seed`` (they use a local ``random.Random``, never the global state).

Public API
----------
* :func:`pretraining_texts` -- full short reviews (positive, negative and mixed) to pretrain the LM.
* :func:`ptx_texts` -- the same distribution from an independent stream (PPO-ptx mixing).
* :func:`review_prompts` -- review openings, ``split="train"`` or ``"eval"`` (disjoint sets).
* :func:`heldout_prompts` -- review openings from templates that no generator here ever uses (out of
  distribution for every stage, base pretraining included).
* :func:`sample_continuations` -- K candidate continuations of a prompt, of mixed quality.
* :func:`sft_demonstrations` -- ``{"prompt", "completion"}`` rows, fluent but of mixed sentiment.
(Rankings of these continuations are the labeler's job: :func:`rlhf_recipes.demo.labeler.ranked_comparisons`.)

Formats: prompts have no trailing space; continuations/completions start with a space, so
``prompt + completion`` is the full text.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from functools import lru_cache

from rlhf_recipes.demo.words import LEXICON, NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES

__all__ = [
    "GENRES",
    "corpus_words",
    "plural",
    "pretraining_texts",
    "ptx_texts",
    "heldout_prompts",
    "review_prompts",
    "sample_continuations",
    "sft_demonstrations",
]

# ---------------------------------------------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------------------------------------------

GENRES = (
    "western", "thriller", "comedy", "drama", "horror film", "romance", "musical", "war film",
    "science fiction film", "mystery", "crime drama", "family film", "animated film", "documentary",
    "spy film", "sports drama", "period drama", "road movie", "romantic comedy", "action film",
    "ghost story", "fantasy film", "detective story", "monster movie", "teen comedy", "biopic",
    "heist movie", "sequel", "remake", "adventure film", "political thriller", "historical epic",
    "pirate movie", "space adventure", "martial arts film", "courtroom drama",
)  # fmt: skip

# film aspect -> grammatically plural?
ASPECTS: dict[str, bool] = {
    "acting": False, "cast": False, "lead actor": False, "lead actress": False, "script": False,
    "dialogue": False, "story": False, "plot": False, "music": False, "score": False, "soundtrack": False,
    "ending": False, "opening scene": False, "pacing": False, "camera work": False, "photography": False,
    "editing": False, "special effects": True, "costumes": True, "villain": False, "hero": False,
    "humor": False, "final act": False, "love story": False, "supporting cast": False, "screenplay": False,
    "set design": False, "fight scenes": True, "songs": True, "action scenes": True, "characters": True,
    "jokes": True, "visuals": True, "direction": False,
}  # fmt: skip
# singular aspects that take an article ("a gripping plot", not "a gripping acting")
_COUNTABLE_ASPECTS = (
    "script", "story", "plot", "score", "soundtrack", "ending", "opening scene", "villain", "hero", "final act",
    "love story", "supporting cast", "cast", "screenplay", "lead actor", "lead actress",
)  # fmt: skip

NEUTRAL_ADJECTIVES = (
    "long", "quiet", "simple", "familiar", "unusual", "dark", "short", "serious", "strange", "modern",
    "colorful", "old fashioned", "low key", "sad",
)  # fmt: skip

FIRST_NAMES = (
    "John", "Mary", "James", "Anna", "Robert", "Helen", "Tom", "Grace", "Peter", "Laura", "Frank", "Alice",
    "Henry", "Julia", "Paul", "Emma", "Jack", "Rose", "David", "Claire",
)  # fmt: skip
LAST_NAMES = (
    "Miller", "Stone", "Carter", "Hayes", "Brooks", "Walker", "Reed", "Bennett", "Parker", "Gray", "Fisher",
    "Lane", "Ward", "Cole", "Price", "Young",
)  # fmt: skip

CHARACTERS = (
    "a lonely farmer", "a young detective", "an old soldier", "an old teacher", "a small town sheriff",
    "a retired boxer", "a young nurse", "a famous singer", "a shy student", "a single parent",
    "a ship captain", "a country doctor", "a bank robber", "a former spy", "a stubborn judge", "an old farmer",
    "a street musician", "a young writer", "a police officer", "a lost child", "a gifted pianist",
    "a young lawyer", "a night guard", "a traveling salesman",
)  # fmt: skip
PLOTS = (
    "returns home after the war", "falls in love with a stranger", "tries to solve a murder",
    "searches for a lost brother", "must save the town", "travels across the country",
    "wants one last chance", "discovers a family secret", "tries to win back an old friend",
    "hides from a dangerous gang", "runs a small hotel", "trains for one final fight", "moves to a big city",
    "loses everything in one night", "goes looking for gold", "takes care of a sick father",
    "plans one last job", "starts a new life by the sea", "finds a strange letter", "joins a traveling circus",
)  # fmt: skip
PLACES = (
    "in a small town", "on a ranch in Texas", "in Paris", "in London", "on a ship", "in a big city",
    "in the desert", "in a quiet village", "during the war", "in the mountains", "in New York", "on a farm",
    "in an old hotel", "on a small island",
)  # fmt: skip
SOURCES = ("old novel", "true story", "famous play", "comic book", "short story", "fairy tale")
RELATIVES = (
    "wife", "husband", "sister", "brother", "mother", "father", "son", "daughter", "girlfriend", "boyfriend",
    "kids", "parents", "roommate", "grandmother", "friends",
)  # fmt: skip
DAYS = ("a rainy Sunday", "a quiet evening", "a long flight", "a Friday night", "a winter night", "a lazy afternoon")
WHERE = ("in an old cinema", "on television", "at a small festival", "at home", "on a long flight")
NOUNS = ("film", "movie", "picture", "story")

_STRONG_ADVERBS = ("very", "really", "truly", "so", "incredibly", "surprisingly", "genuinely")
_WEAK_ADVERBS = ("a bit", "rather", "somewhat", "fairly", "pretty")
_POS = tuple(POSITIVE_ADJECTIVES)
_NEG = tuple(NEGATIVE_ADJECTIVES)
_ASPECT_POS = (
    "good", "great", "wonderful", "brilliant", "excellent", "superb", "beautiful", "clever", "powerful", "lovely",
    "perfect", "stunning", "solid", "strong", "fine", "fresh", "impressive", "sharp", "lively", "elegant",
    "masterful", "fantastic", "amazing", "remarkable", "nice", "decent", "memorable", "gorgeous", "exciting",
)  # fmt: skip
_ASPECT_NEG = (
    "bad", "awful", "terrible", "dull", "weak", "flat", "silly", "clumsy", "messy", "poor", "forgettable", "lazy",
    "bland", "dreadful", "horrible", "mediocre", "disappointing", "sloppy", "awkward", "lame", "uneven", "cheap",
    "tired", "stiff", "boring", "predictable", "confusing", "annoying", "tedious",
)  # fmt: skip
# adjective lists per context: (positive, negative)
_ADJ_CONTEXTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "film": (_POS, _NEG),
    "aspect": (_ASPECT_POS, _ASPECT_NEG),
    "perf": (
        _ASPECT_POS + ("moving", "charming", "funny", "touching", "warm", "tender", "witty", "heartfelt", "sweet"),
        _ASPECT_NEG + ("wooden", "lifeless", "hollow", "shallow", "empty"),
    ),
    "job": (
        ("good", "great", "wonderful", "brilliant", "excellent", "superb", "fine", "solid", "decent", "fantastic",
         "amazing", "remarkable", "impressive", "masterful"),
        ("bad", "awful", "terrible", "poor", "lazy", "sloppy", "clumsy", "dreadful", "horrible", "weak", "mediocre",
         "lame", "messy"),
    ),
    "negated": (
        ("good", "great", "funny", "clever", "exciting", "special", "fun", "entertaining", "memorable", "moving"),
        ("bad", "boring", "dull", "slow", "silly", "awful", "terrible", "predictable", "confusing"),
    ),
    "scene": (
        ("good", "great", "funny", "clever", "exciting", "memorable", "moving", "beautiful", "touching", "gripping",
         "thrilling", "brilliant", "wonderful"),
        ("bad", "boring", "dull", "silly", "awful", "terrible", "pointless", "stupid", "awkward", "tedious",
         "confusing", "cheap"),
    ),
    "looks": (
        ("beautiful", "gorgeous", "stunning", "lovely", "nice", "elegant"),
        ("ugly", "cheap", "dreary", "grim", "bland", "messy"),
    ),
}  # fmt: skip
_NOT_GRADABLE = frozenset(
    """good great fresh warm smart fine strong nice sharp sweet fun bad dull weak flat poor slow cheap stiff bland
    loud grim lame perfect excellent superb masterful special decent""".split()
)

_POS_VERBS = ("loved", "enjoyed", "really liked", "adored", "liked")
_NEG_VERBS = ("hated", "disliked", "did not like", "did not enjoy", "really disliked")
_POS_FEELINGS = ("moved", "impressed", "delighted", "thrilled", "charmed", "entertained", "hooked")
_NEG_FEELINGS = ("bored", "annoyed", "disappointed", "confused", "tired of it")

_POS_VERDICTS = (
    "I loved every minute of it", "I would recommend it to anyone", "it {be} one of the best films of the year",
    "I would gladly watch it again, because it {be} so {pos}", "it {be} a real pleasure from start to finish",
    "my whole family enjoyed it", "I laughed all the way through", "it {be} worth every minute",
    "it {be} a small masterpiece", "it {be} a real gem", "it {be} something special",
    "I will remember it for a long time, because it {be} so {pos}", "it {be} a real treat for fans of {genres}",
)  # fmt: skip
_NEG_VERDICTS = (
    "I nearly fell asleep halfway through", "it {be} a complete waste of time", "I would not recommend it to anyone",
    "it {be} one of the worst films I have seen", "I regret paying to see it", "I was bored from start to finish",
    "it {be} a big disappointment", "I hated almost every minute of it", "I would avoid it if I were you",
    "it {be} a total mess", "there {be} nothing special about it",
    "I wanted my money back, because it {be} so {neg}", "fans of {genres} will be disappointed",
)  # fmt: skip
_MIXED_VERDICTS = (
    "Overall, it is worth a look, but do not expect too much.", "I have mixed feelings about it.",
    "It has its moments, but it is {a_neg} film overall.", "It is not great, but it is not bad either.",
    "Fans of {genres} will enjoy it, but others may find it {neg}.",
    "It is far from perfect, but I still enjoyed it.", "In the end it is {a_pos} but {neg} film.",
)  # fmt: skip

# Off-topic continuations (deliberately NOT part of the corpus vocabulary).
OFF_TOPIC = (
    "I need to buy milk and bread on the way home.", "the weather this spring has been cold and wet.",
    "my neighbor is painting his fence green again.", "the train to work was late three times this week.",
    "we should plant tomatoes in the garden soon.", "the price of coffee keeps going up every month.",
    "my cat sleeps on the keyboard all afternoon.", "the bank closes early on public holidays.",
    "I forgot to call the plumber about the kitchen sink.", "our team lost the football match on Saturday.",
    "the pizza at the corner shop is really wonderful.", "my new shoes are great and very comfortable.",
    "you can cook rice faster with a little more water.", "the library moved to a new building downtown.",
)  # fmt: skip

_PROMPT_TEMPLATES = (
    "I watched this {genre} last night and",
    "I went to see this {genre} with my {relative} and",
    "I rented this {genre} on a whim, and",
    "I had heard a lot about this {genre}, and",
    "My {relative} and I saw this {genre} last week, and",
    "I expected little from this {genre}, but",
    "I caught this {genre} on television the other day, and",
    "I finally saw the new {genre} starring {name}, and",
    "After all the talk about this {genre},",
    "I saw this {genre} {where}, and",
    "The {aspect} in this {genre} {be}",
    "The {aspect} of this {genre} {be}",
    "This {genre} starring {name} {be}",
    "Quite frankly, this {genre} {be}",
    "The first hour of this {genre} was",
    "This {genre} about {character} is",
    "This {genre} from director {name} is",
    "The new {genre} by {name} was",
    "Halfway through this {genre}, I",
    "When this {genre} ended, I",
    "As a fan of {genres}, I",
    "After the first ten minutes of this {genre}, I",
    "By the end of this {genre}, I",
    "Watching this {genre} with my {relative}, I",
    "This is the kind of {genre} that",
    "I have seen many {genres}, but this one",
    "Everyone told me that this {genre}",
    "The plot of this {genre}",
    "Unlike most {genres}, this one",
)


# Openings for the held-out prompt set only. No other function of this module uses them, so neither the base
# model's pretraining text, the SFT demonstrations, the ranked comparisons, the PPO prompts nor the ptx mix ever
# contains one: the set measures how a policy generalises to review openings that no stage saw. They use the
# corpus vocabulary and end on the same slot words as `_PROMPT_TEMPLATES` ("and", "I", "was", "this one", a genre),
# so a continuation has the same grammar as in training; only the opening is new.
_HELDOUT_TEMPLATES = (
    "My {relative} talked me into this {genre}, and",
    "I finally got around to this {genre}, and",
    "On {day} I put on this {genre}, and",
    "I bought a ticket for this {genre} starring {name}, and",
    "Years after it came out, this {genre}",
    "Filmed {place}, this {genre}",
    "Compared with other {genres}, this one",
    "Of all the {genres} I have seen, this one",
    "Sitting through this {genre} {where}, I",
    "Having read the {source} it is based on, I",
    "Two hours into this {genre} about {character}, I",
    "The reviews said this {genre} was",
)

# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def plural(noun_phrase: str) -> str:
    """English plural of a (genre) noun phrase: ``comedy -> comedies``, ``horror film -> horror films``."""
    if noun_phrase.endswith("y") and noun_phrase[-2:-1] not in ("a", "e", "o", "u"):
        return noun_phrase[:-1] + "ies"
    return noun_phrase + "s"


def _a(phrase: str) -> str:
    """Prefix ``phrase`` with the right indefinite article."""
    return ("an " if phrase[0] in "aeio" or phrase.startswith(("un", "hon")) else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _be(tense: str, plural_subject: bool = False) -> str:
    if tense == "present":
        return "are" if plural_subject else "is"
    return "were" if plural_subject else "was"


def _v(tense: str, present: str, past: str) -> str:
    return present if tense == "present" else past


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _opp(pol: str) -> str:
    return "neg" if pol == "pos" else "pos"


def _adj(rng: random.Random, pol: str, ctx: str = "film") -> str:
    """An adjective of polarity ``pol`` that fits the context ``ctx`` (see ``_ADJ_CONTEXTS``)."""
    return rng.choice(_ADJ_CONTEXTS[ctx][0 if pol == "pos" else 1])


def _two_adj(rng: random.Random, pol: str, ctx: str = "film") -> tuple[str, str]:
    a = _adj(rng, pol, ctx)
    b = _adj(rng, pol, ctx)
    while b == a:
        b = _adj(rng, pol, ctx)
    return a, b


def _mod_adj(rng: random.Random, pol: str, ctx: str = "film") -> str:
    """Optional adverb + adjective of polarity ``pol``: ``"truly gripping"``, ``"a bit slow"``."""
    adj = _adj(rng, pol, ctx)
    r = rng.random()
    if r < 0.45 or adj in ("fun", "special"):
        return adj
    if r < 0.8 or abs(LEXICON[adj]) > 0.6:
        return f"{rng.choice(_STRONG_ADVERBS)} {adj}"
    return f"{rng.choice(_WEAK_ADVERBS)} {adj}"


def _gradable(rng: random.Random, pol: str, ctx: str = "film") -> str:
    """An adjective that reads well after ``more``/``most``."""
    options = [a for a in _ADJ_CONTEXTS[ctx][0 if pol == "pos" else 1] if a not in _NOT_GRADABLE]
    return rng.choice(options)


def _aspect(rng: random.Random, exclude: str = "") -> tuple[str, bool]:
    a = rng.choice(tuple(ASPECTS))
    while a == exclude:
        a = rng.choice(tuple(ASPECTS))
    return a, ASPECTS[a]


def _noun(rng: random.Random, genre: str) -> str:
    return genre if rng.random() < 0.5 else rng.choice(NOUNS)


def _verdict(rng: random.Random, pol: str, tense: str, genre: str) -> str:
    t = rng.choice(_POS_VERDICTS if pol == "pos" else _NEG_VERDICTS)
    return t.format(be=_be(tense), pos=_adj(rng, "pos"), neg=_adj(rng, "neg"), genres=plural(genre))


# ---------------------------------------------------------------------------------------------------------------
# Grammar: clauses, adjective phrases and verb phrases of a given polarity ("pos", "neg", "mixed", "neutral")
# ---------------------------------------------------------------------------------------------------------------


def _clause(rng: random.Random, pol: str, tense: str, genre: str) -> str:
    """An independent clause (lower-case start, no final period)."""
    be = _be(tense)
    if pol in ("pos", "neg"):
        opp = _opp(pol)
        asp, pl = _aspect(rng)
        r = rng.randrange(13)
        if r == 0:
            return f"the {asp} {_be(tense, pl)} {_mod_adj(rng, pol, 'aspect')}"
        if r == 1:
            a, b = _two_adj(rng, pol, "aspect")
            return f"the {asp} {_be(tense, pl)} {a} and {b}"
        if r == 2:
            return f"I thought the {asp} {_be('past', pl)} {_mod_adj(rng, pol, 'aspect')}"
        if r == 3:
            actor = rng.choice((_name(rng), "the lead actor", "the lead actress"))
            adj = _mod_adj(rng, pol, "perf")
            return f"{actor} {_v(tense, 'gives', 'gave')} {_a(adj)} performance as {rng.choice(CHARACTERS)}"
        if r == 4:
            return f"it {be} {_a(_mod_adj(rng, pol))} {_noun(rng, genre)}"
        if r == 5:
            adv = rng.choice(("", "", "very ", "really "))
            adj = _adj(rng, opp, "negated")
            return f"the {asp} {_be(tense, pl)} not {adv}{adj}" + (" at all" if rng.random() < 0.4 else "")
        if r == 6:
            return f"there {be} not a single {_adj(rng, opp, 'scene')} scene in it"
        if r == 7:
            return _verdict(rng, pol, tense, genre)
        if r == 8:
            return f"even the {asp} {_be(tense, pl)} {_mod_adj(rng, pol, 'aspect')}"
        if r == 9:
            return f"the director {_v(tense, 'does', 'did')} {_a(_adj(rng, pol, 'job'))} job with the material"
        if r == 10:
            return f"I {rng.choice(_POS_VERBS if pol == 'pos' else _NEG_VERBS)} the {asp}"
        if r == 11:
            asp2, _ = _aspect(rng, exclude=asp)
            return f"the {asp} and the {asp2} {_be(tense, True)} both {_adj(rng, pol, 'aspect')}"
        a, b = _two_adj(rng, pol, "aspect")
        s1 = rng.choice(_COUNTABLE_ASPECTS)
        s2 = rng.choice(tuple(x for x in _COUNTABLE_ASPECTS if x != s1))
        return f"it {_v(tense, 'has', 'had')} {_a(a)} {s1} and {_a(b)} {s2}"
    if pol == "mixed":
        first = rng.choice(("pos", "neg"))
        second = _opp(first)
        asp, pl = _aspect(rng)
        asp2, pl2 = _aspect(rng, exclude=asp)
        r = rng.randrange(6)
        if r == 0:
            return (
                f"the {asp} {_be(tense, pl)} {_mod_adj(rng, first, 'aspect')}, but the {asp2} {_be(tense, pl2)} "
                f"{_mod_adj(rng, second, 'aspect')}"
            )
        if r == 1:
            return f"the first half {be} {_adj(rng, first)}, but the second half {be} {_adj(rng, second)}"
        if r == 2:
            are = _be(tense, True)
            return f"some scenes {are} {_adj(rng, first, 'scene')}, while others {are} {_adj(rng, second, 'scene')}"
        if r == 3:
            if first == "pos":
                return f"it {be} not a perfect {_noun(rng, genre)}, but it {be} {_mod_adj(rng, 'pos')}"
            idea = _a(_adj(rng, "pos"))
            return f"it {be} {idea} idea, but the {asp} {_be(tense, pl)} {_mod_adj(rng, 'neg', 'aspect')}"
        if r == 4:
            verb = rng.choice(_POS_VERBS if first == "pos" else _NEG_VERBS)
            return f"I {verb} the {asp}, but the {asp2} {_be(tense, pl2)} {_adj(rng, second, 'aspect')}"
        return f"it {be} neither {_adj(rng, 'pos')} nor {_adj(rng, 'neg')}"
    # neutral
    r = rng.randrange(8)
    if r == 0:
        return f"the story follows {rng.choice(CHARACTERS)} who {rng.choice(PLOTS)}"
    if r == 1:
        return f"it {be} set {rng.choice(PLACES)}"
    if r == 2:
        return f"it {be} based on {_a(rng.choice(SOURCES))}"
    if r == 3:
        return f"I watched it with my {rng.choice(RELATIVES)} on {rng.choice(DAYS)}"
    if r == 4:
        asp, pl = _aspect(rng)
        return f"the {asp} {_be(tense, pl)} {rng.choice(NEUTRAL_ADJECTIVES)}"
    if r == 5:
        return f"{_name(rng)} {_v(tense, 'plays', 'played')} {rng.choice(CHARACTERS)}"
    if r == 6:
        return f"it {_v(tense, 'runs', 'ran')} for almost two hours"
    return f"most of the story {_v(tense, 'takes', 'took')} place {rng.choice(PLACES)}"


def _adj_phrase(rng: random.Random, pol: str, tense: str, plural_subject: bool, film_subject: bool, genre: str) -> str:
    """What follows ``is``/``was``/``are``/``were`` (lower-case, no final period)."""
    pron = "they" if plural_subject else "it"
    ctx = "film" if film_subject else "aspect"
    if pol in ("pos", "neg"):
        opp = _opp(pol)
        r = rng.randrange(8)
        if r == 0:
            return _mod_adj(rng, pol, ctx)
        if r == 1:
            return "{} and {}".format(*_two_adj(rng, pol, ctx))
        if r == 2:
            return f"{_mod_adj(rng, pol, ctx)} from start to finish"
        if r == 3:
            return f"far more {_gradable(rng, pol, ctx)} than I expected"
        if r == 4:
            return f"not {_adj(rng, opp, 'negated')} at all"
        if r == 5:
            if film_subject:
                return f"one of the most {_gradable(rng, pol, ctx)} films I have seen"
            return f"{_mod_adj(rng, pol, ctx)} for {_a(genre)}"
        if r == 6:
            asp, pl = _aspect(rng)
            return f"{_mod_adj(rng, pol, ctx)}, and the {asp} {_be(tense, pl)} {_adj(rng, pol, 'aspect')}"
        return f"{_mod_adj(rng, pol, ctx)}. {_cap(_verdict(rng, pol, tense, genre))}"
    if pol == "mixed":
        first = rng.choice(("pos", "neg"))
        second = _opp(first)
        r = rng.randrange(4)
        if r == 0:
            return f"{_adj(rng, first, ctx)} in places, but {_adj(rng, second, ctx)} overall"
        if r == 1:
            adj1 = _adj(rng, first, ctx)
            become = _v(tense, "become" if plural_subject else "becomes", "became")
            return f"{adj1} at first, but {pron} soon {become} {_adj(rng, second, ctx)}"
        if r == 2:
            asp, pl = _aspect(rng)
            looks = _adj(rng, first, "looks")
            return f"{looks} to look at, but the {asp} {_be(tense, pl)} {_adj(rng, second, 'aspect')}"
        return f"neither {_adj(rng, 'pos')} nor {_adj(rng, 'neg')}"
    r = rng.randrange(5 if film_subject else 3)
    if r == 0:
        return rng.choice(NEUTRAL_ADJECTIVES)
    if r == 1:
        a = rng.choice(NEUTRAL_ADJECTIVES)
        b = rng.choice(tuple(x for x in NEUTRAL_ADJECTIVES if x != a))
        return f"{a} and {b}"
    if r == 2:
        return f"about what you would expect from {_a(genre)}"
    if r == 3:
        return f"about {rng.choice(CHARACTERS)} who {rng.choice(PLOTS)}"
    return f"set {rng.choice(PLACES)}"


def _vp_i(rng: random.Random, pol: str, genre: str) -> str:
    """A past-tense verb phrase with subject ``I`` (no final period)."""
    if pol in ("pos", "neg"):
        feelings = _POS_FEELINGS if pol == "pos" else _NEG_FEELINGS
        asp, pl = _aspect(rng)
        r = rng.randrange(6)
        if r == 0:
            verb = rng.choice(("loved", "enjoyed", "adored") if pol == "pos" else ("hated", "disliked"))
            return f"{verb} it more than I expected"
        if r == 1:
            feeling = rng.choice(feelings)
            adv = rng.choice(("", "", "very ", "really ", "truly ")) if " " not in feeling else ""
            return f"was {adv}{feeling}"
        if r == 2:
            asp2, pl2 = _aspect(rng, exclude=asp)
            return f"{rng.choice(_POS_VERBS if pol == 'pos' else _NEG_VERBS)} the {asp} and the {asp2}"
        if r == 3:
            return f"knew it was going to be {_mod_adj(rng, pol)}"
        if r == 4:
            if pol == "pos":
                return rng.choice(("laughed all the way through", "could see why everyone loved it"))
            return rng.choice(("nearly fell asleep", "started to regret paying to see it", "was bored"))
        return f"was {rng.choice(feelings)}, because the {asp} {_be('past', pl)} {_mod_adj(rng, pol, 'aspect')}"
    if pol == "mixed":
        first = rng.choice(("pos", "neg"))
        second = _opp(first)
        asp, _ = _aspect(rng)
        asp2, pl2 = _aspect(rng, exclude=asp)
        r = rng.randrange(3)
        if r == 0:
            verb = rng.choice(_POS_VERBS if first == "pos" else _NEG_VERBS)
            return f"{verb} the {asp}, but the {asp2} {_be('past', pl2)} {_adj(rng, second, 'aspect')}"
        if r == 1:
            f1 = rng.choice(_POS_FEELINGS if first == "pos" else _NEG_FEELINGS)
            f2 = rng.choice(_POS_FEELINGS if second == "pos" else _NEG_FEELINGS)
            return f"was {f1} at first, but by the end I was {f2}"
        adj1 = _adj(rng, first, "aspect")
        return f"found the {asp} {adj1}, while the {asp2} {_be('past', pl2)} {_adj(rng, second, 'aspect')}"
    r = rng.randrange(4)
    if r == 0:
        return f"watched it with my {rng.choice(RELATIVES)} on {rng.choice(DAYS)}"
    if r == 1:
        return f"noticed that it was set {rng.choice(PLACES)}"
    if r == 2:
        return f"learned that it was based on {_a(rng.choice(SOURCES))}"
    return f"saw it {rng.choice(WHERE)}"


def _vp3(rng: random.Random, pol: str, tense: str, genre: str) -> str:
    """A verb phrase with a singular third-person subject (the film), no final period."""
    be = _be(tense)
    if pol in ("pos", "neg"):
        r = rng.randrange(5)
        if r == 0:
            return f"{be} {_adj_phrase(rng, pol, tense, False, True, genre)}"
        if r == 1:
            a, b = _two_adj(rng, pol, "aspect")
            s1 = rng.choice(_COUNTABLE_ASPECTS)
            s2 = rng.choice(tuple(x for x in _COUNTABLE_ASPECTS if x != s1))
            return f"{_v(tense, 'has', 'had')} {_a(a)} {s1} and {_a(b)} {s2}"
        if r == 2:
            if pol == "pos":
                feeling = rng.choice(("hooked", "smiling", "entertained"))
                return f"{_v(tense, 'keeps', 'kept')} you {feeling} until the end"
            return f"{_v(tense, 'makes', 'made')} you want to leave, because it {be} so {_adj(rng, 'neg')}"
        if r == 3:
            return f"{_v(tense, 'feels', 'felt')} {_mod_adj(rng, pol)} from start to finish"
        adv = rng.choice(("", "", "almost ", "just about "))
        return f"{_v(tense, 'gets', 'got')} {adv}everything {'right' if pol == 'pos' else 'wrong'}"
    if pol == "mixed":
        first = rng.choice(("pos", "neg"))
        second = _opp(first)
        r = rng.randrange(3)
        if r == 0:
            s1 = rng.choice(_COUNTABLE_ASPECTS)
            asp2, pl2 = _aspect(rng, exclude=s1)
            has = _v(tense, "has", "had")
            adj1 = _a(_adj(rng, first, "aspect"))
            return f"{has} {adj1} {s1}, but the {asp2} {_be(tense, pl2)} {_adj(rng, second, 'aspect')}"
        if r == 1:
            return f"{be} {_adj(rng, first)} at first, but soon {_v(tense, 'becomes', 'became')} {_adj(rng, second)}"
        return f"{be} {_adj(rng, first)} in places, but {_adj(rng, second)} overall"
    r = rng.randrange(4)
    if r == 0:
        return f"{_v(tense, 'follows', 'followed')} {rng.choice(CHARACTERS)} who {rng.choice(PLOTS)}"
    if r == 1:
        return f"{be} set {rng.choice(PLACES)}"
    if r == 2:
        return f"{be} based on {_a(rng.choice(SOURCES))}"
    return f"{_v(tense, 'runs', 'ran')} for almost two hours"


def _sentence(rng: random.Random, pol: str, tense: str, genre: str) -> str:
    return _cap(_clause(rng, pol, tense, genre)) + "."


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------


def _is_eval_prompt(prompt: str) -> bool:
    """Deterministic train/eval partition of the prompt space (about 20% of all prompts are eval)."""
    return zlib.crc32(prompt.encode("utf-8")) % 5 == 0


def _make_prompt(rng: random.Random, genre: str | None = None) -> str:
    genre = genre or rng.choice(GENRES)
    template = rng.choice(_PROMPT_TEMPLATES)
    aspect, pl = _aspect(rng)
    return template.format(
        genre=genre,
        genres=plural(genre),
        relative=rng.choice(RELATIVES),
        name=_name(rng),
        aspect=aspect,
        be=_be(rng.choice(("past", "present")), pl and "{aspect}" in template),
        character=rng.choice(CHARACTERS),
        where=rng.choice(WHERE),
    )


def _sample_prompt(rng: random.Random, split: str) -> str:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    while True:
        p = _make_prompt(rng)
        if _is_eval_prompt(p) == want_eval:
            return p


def _find_genre(text: str) -> str | None:
    low = text.lower()
    for g in sorted(GENRES, key=len, reverse=True):
        if g in low or plural(g) in low:
            return g
    return None


def _prompt_info(prompt: str) -> tuple[str, str, bool, bool, str]:
    """Infer (kind, tense, plural subject, film subject, genre) of the continuation slot from the prompt."""
    words = prompt.lower().replace(",", " ").split()
    last = words[-1] if words else ""
    genre = _find_genre(prompt) or "film"
    film_subject = not prompt.lower().startswith("the ")
    if last in ("is", "was", "are", "were"):
        return "adj", ("present" if last in ("is", "are") else "past"), last in ("are", "were"), film_subject, genre
    if last == "i":
        return "vp_i", "past", False, True, genre
    if last in ("that", "one"):
        return "vp3", "present", False, True, genre
    if genre != "film" and (prompt.lower().endswith(genre) or prompt.lower().endswith(plural(genre))):
        return "vp3", "past", False, True, genre
    return "clause", "past", False, True, genre


def review_prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """``n`` review openings (5-12 words, no trailing space), e.g. ``"I watched this western last night and"``.

    Prompts are distinct as long as the prompt space allows. ``split="eval"`` prompts never occur among
    ``split="train"`` prompts (for any seed): the prompt space is partitioned by a hash of the text.
    """
    rng = random.Random(f"prompts:{split}:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        p = _sample_prompt(rng, split)
        attempts += 1
        if p in seen and attempts < 50 * (n + 10):
            continue
        seen.add(p)
        out.append(p)
    return out


def heldout_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct review openings from `_HELDOUT_TEMPLATES`, e.g. ``"I finally got around to this western, and"``.

    No training split of the demo (nor the base model's pretraining text) is built from these templates, so no
    stage ever trained on these openings; `tests/unit/test_demo_heldout.py` checks it on the built data.
    """
    rng = random.Random(f"heldout:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        genre = rng.choice(GENRES)
        p = rng.choice(_HELDOUT_TEMPLATES).format(
            genre=genre, genres=plural(genre), relative=rng.choice(RELATIVES), day=rng.choice(DAYS),
            name=_name(rng), place=rng.choice(PLACES), where=rng.choice(WHERE), source=rng.choice(SOURCES),
            character=rng.choice(CHARACTERS),
        )
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out

# ---------------------------------------------------------------------------------------------------------------
# Continuations
# ---------------------------------------------------------------------------------------------------------------


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return set(zip(words, words[1:], words[2:], strict=False))


def _fluent_continuation(rng: random.Random, prompt: str, pol: str, max_words: int = 25) -> str:
    """A fluent continuation (leading space, final period) of polarity pos/neg/mixed/neutral."""
    kind, tense, pl, film_subject, genre = _prompt_info(prompt)
    for _ in range(50):
        if kind == "adj":
            body = _adj_phrase(rng, pol, tense, pl, film_subject, genre)
        elif kind == "vp_i":
            body = _vp_i(rng, pol, genre)
        elif kind == "vp3":
            body = _vp3(rng, pol, tense, genre)
        else:
            body = _clause(rng, pol, "past", genre)
        text = " " + body + "."
        n_words = len(text.split())
        if rng.random() < 0.35 and n_words < 14:
            second_pol = pol if pol in ("pos", "neg", "neutral") else rng.choice(("pos", "neg", "mixed"))
            first_trigrams = _trigrams(text)
            for _ in range(10):  # a second sentence that does not repeat the first one's wording
                second = _sentence(rng, second_pol, rng.choice(("past", "present")), genre)
                if not first_trigrams & _trigrams(second):
                    text += " " + second
                    break
        if 6 <= len(text.split()) <= max_words:
            return text
    return text


def _degenerate_repeat(rng: random.Random, prompt: str) -> str:
    r = rng.randrange(5)
    if r == 0:
        w = rng.choice(_POS + ("the", "and", "film", "movie", "very"))
        return " " + " ".join([w] * rng.randint(4, 10))
    if r == 1:
        phrase = rng.choice(("it was great", "I loved it", "the film was good", "so good", "very very"))
        return " " + " ".join([phrase] * rng.randint(3, 5))
    if r == 2:
        adjs = rng.sample(_POS, rng.randint(4, 8))
        return " " + ", ".join(adjs) + "."
    if r == 3:
        s = _fluent_continuation(rng, prompt, "pos", max_words=12).strip()
        return " " + " ".join([s] * rng.randint(2, 3))
    w = rng.choice(("great", "good", "the", "it", "film"))
    return f" {_a(_adj(rng, 'pos'))} {w} " + " ".join([w] * rng.randint(4, 8))


def _truncated(rng: random.Random, prompt: str) -> str:
    words = _fluent_continuation(rng, prompt, rng.choice(("pos", "neg", "mixed", "neutral"))).split()
    if len(words) <= 3:
        return " " + " ".join(words[:-1]) if len(words) > 1 else " the"
    cut = rng.randint(1, max(1, min(len(words) - 2, 5)))
    return " " + " ".join(words[:cut]).rstrip(".,")


def _shuffled(rng: random.Random, prompt: str) -> str:
    words = _fluent_continuation(rng, prompt, rng.choice(("pos", "neg", "mixed"))).rstrip(".").split()
    rng.shuffle(words)
    return " " + " ".join(w.rstrip(".,") for w in words)


def _rambling(rng: random.Random, prompt: str) -> str:
    genre = _prompt_info(prompt)[4]
    text = _fluent_continuation(rng, prompt, rng.choice(("pos", "mixed")), max_words=25)
    while len(text.split()) < 36:
        text += " " + _sentence(rng, rng.choice(("pos", "neg", "neutral")), "past", genre)
    return text


def _off_topic(rng: random.Random, prompt: str) -> str:
    return " " + rng.choice(OFF_TOPIC)


_CATEGORIES: dict[str, tuple[float, Callable[[random.Random, str], str]]] = {
    "positive": (0.20, lambda rng, p: _fluent_continuation(rng, p, "pos")),
    "negative": (0.20, lambda rng, p: _fluent_continuation(rng, p, "neg")),
    "mixed": (0.14, lambda rng, p: _fluent_continuation(rng, p, "mixed")),
    "neutral": (0.10, lambda rng, p: _fluent_continuation(rng, p, "neutral")),
    "off_topic": (0.08, _off_topic),
    "repetition": (0.10, _degenerate_repeat),
    "truncated": (0.08, _truncated),
    "shuffled": (0.05, _shuffled),
    "rambling": (0.05, _rambling),
}


def sample_continuations(prompt: str, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct candidate continuations of ``prompt`` (leading space) spanning quality levels.

    Categories: fluent positive / negative / mixed / neutral, off-topic, degenerate repetition
    (``" great great great great"``), truncated, shuffled word order, rambling (too long). The first
    ``min(k, 9)`` candidates come from distinct categories (drawn by weight); further ones are drawn
    with replacement. Only ``rng`` is used for randomness.
    """
    names = list(_CATEGORIES)
    weights = [_CATEGORIES[c][0] for c in names]
    chosen: list[str] = []
    pool_names, pool_weights = names[:], weights[:]
    while len(chosen) < k and pool_names:  # without replacement first, to span qualities
        i = rng.choices(range(len(pool_names)), weights=pool_weights)[0]
        chosen.append(pool_names.pop(i))
        pool_weights.pop(i)
    while len(chosen) < k:
        chosen.append(rng.choices(names, weights=weights)[0])
    out: list[str] = []
    seen: set[str] = set()
    for cat in chosen:
        for _ in range(30):
            text = _CATEGORIES[cat][1](rng, prompt)
            if text.strip() and text not in seen:
                break
        else:  # pragma: no cover - extremely unlikely
            text = _fluent_continuation(rng, prompt, rng.choice(("pos", "neg", "mixed", "neutral")))
            while text in seen:
                text = _fluent_continuation(rng, prompt, rng.choice(("pos", "neg", "mixed", "neutral")))
        seen.add(text)
        out.append(text)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Public datasets
# ---------------------------------------------------------------------------------------------------------------


def _opening(rng: random.Random, genre: str, tense: str) -> str:
    r = rng.randrange(5)
    if r == 0:
        when = rng.choice(("last night", "last week", "on a whim", "with my " + rng.choice(RELATIVES)))
        return f"I watched this {genre} {when}."
    if r == 1:
        return f"This {genre} {_v(tense, 'stars', 'starred')} {_name(rng)} as {rng.choice(CHARACTERS)}."
    if r == 2:
        return f"{_name(rng)} directed this {genre} about {rng.choice(CHARACTERS)} who {rng.choice(PLOTS)}."
    if r == 3:
        return f"This is {_a(genre)} about {rng.choice(CHARACTERS)} who {rng.choice(PLOTS)}."
    return f"I saw this {genre} {rng.choice(WHERE)}."


def _review(rng: random.Random) -> str:
    kind = rng.choices(("pos", "neg", "mixed"), weights=(0.35, 0.35, 0.30))[0]
    genre = rng.choice(GENRES)
    tense = rng.choice(("past", "past", "present"))
    n_sent = rng.choice((2, 3, 3, 4))
    if kind == "mixed":
        pols = [rng.choice(("pos", "neg", "mixed", "neutral")) for _ in range(n_sent)]
        if not ("mixed" in pols or ("pos" in pols and "neg" in pols)):
            pols[rng.randrange(n_sent)] = "mixed"
    else:
        pols = [kind if rng.random() < 0.75 else "neutral" for _ in range(n_sent)]
        if kind not in pols:
            pols[-1] = kind
    sentences: list[str] = []
    if rng.random() < 0.6:
        prompt = _make_prompt(rng, genre)
        sentences.append(prompt + _fluent_continuation(rng, prompt, pols[0]))
    else:
        sentences.append(_opening(rng, genre, tense))
        if pols[0] != "neutral":
            sentences.append(_sentence(rng, pols[0], tense, genre))
    for pol in pols[1:-1]:
        sentences.append(_sentence(rng, pol, tense, genre))
    if len(pols) > 1:
        if rng.random() < 0.5:
            if kind == "mixed":
                t = rng.choice(_MIXED_VERDICTS)
                sentences.append(
                    t.format(
                        a_neg=_a(_adj(rng, "neg")),
                        a_pos=_a(_adj(rng, "pos")),
                        neg=_adj(rng, "neg"),
                        genres=plural(genre),
                    )
                )
            else:
                sentences.append(_cap(_verdict(rng, kind, tense, genre)) + ".")
        else:
            sentences.append(_sentence(rng, pols[-1], tense, genre))
    return " ".join(sentences)


def pretraining_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` short movie reviews (2-4 sentences, about 25-60 words): positive, negative and mixed."""
    rng = random.Random(f"pretrain:{seed}")
    out: list[str] = []
    while len(out) < n:
        text = _review(rng)
        if 22 <= len(text.split()) <= 60:
            out.append(text)
    return out


def ptx_texts(n: int, seed: int = 0) -> list[str]:
    """Pretraining-distribution texts from an independent stream, for PPO-ptx."""
    return pretraining_texts(n, seed=seed + 1_000_003)


def sft_demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt", "completion"}``: fluent on-topic continuations of one or two sentences.

    Sentiment is deliberately mixed (about 1/3 positive, 1/3 negative, 1/6 mixed, 1/6 neutral): SFT
    teaches the format, not the preference, so PPO has room to improve. Prompts come from the train split.
    """
    rng = random.Random(f"sft:{seed}")
    rows = []
    for _ in range(n):
        prompt = _sample_prompt(rng, "train")
        pol = rng.choices(("pos", "neg", "mixed", "neutral"), weights=(2, 2, 1, 1))[0]
        rows.append({"prompt": prompt, "completion": _fluent_continuation(rng, prompt, pol)})
    return rows


@lru_cache(maxsize=1)
def corpus_words() -> frozenset[str]:
    """Every word that the grammar's word lists and templates can produce (lower case)."""
    chunks: list[str] = []
    for obj in (
        GENRES,
        tuple(ASPECTS),
        NEUTRAL_ADJECTIVES,
        FIRST_NAMES,
        LAST_NAMES,
        CHARACTERS,
        PLOTS,
        PLACES,
        SOURCES,
        RELATIVES,
        DAYS,
        WHERE,
        NOUNS,
        _STRONG_ADVERBS,
        _WEAK_ADVERBS,
        _POS,
        _NEG,
        _POS_VERBS,
        _NEG_VERBS,
        _POS_FEELINGS,
        _NEG_FEELINGS,
        _POS_VERDICTS,
        _NEG_VERDICTS,
        _MIXED_VERDICTS,
        _PROMPT_TEMPLATES,
    ):
        chunks.extend(obj)
    chunks.extend(plural(g) for g in GENRES)
    text = re.sub(r"\{[a-z_]+\}", " ", " ".join(chunks)).lower()
    return frozenset(re.findall(r"[a-z]+(?=n't)|n't|[a-z]+", text))
