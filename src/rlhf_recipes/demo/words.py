"""Sentiment word lists shared by the demo corpus (which writes with them) and the simulated labeler (which
judges with them); neither of those two modules imports the other's logic through here."""

from __future__ import annotations

POSITIVE_ADJECTIVES: dict[str, float] = {
    "good": 0.5, "great": 0.8, "wonderful": 0.9, "brilliant": 1.0, "excellent": 1.0, "superb": 1.0,
    "beautiful": 0.8, "moving": 0.7, "charming": 0.7, "funny": 0.6, "clever": 0.6, "powerful": 0.8,
    "touching": 0.7, "delightful": 0.8, "memorable": 0.7, "gripping": 0.8, "fresh": 0.5, "warm": 0.5,
    "smart": 0.6, "lovely": 0.7, "perfect": 1.0, "enjoyable": 0.6, "stunning": 0.9, "solid": 0.4,
    "strong": 0.5, "fine": 0.3, "exciting": 0.7, "tender": 0.5, "witty": 0.6, "thrilling": 0.8,
    "gorgeous": 0.8, "nice": 0.4, "decent": 0.3, "pleasant": 0.4, "entertaining": 0.6, "impressive": 0.7,
    "sharp": 0.5, "lively": 0.5, "elegant": 0.6, "heartfelt": 0.7, "masterful": 1.0, "magical": 0.8,
    "sweet": 0.5, "fantastic": 0.9, "amazing": 0.9, "remarkable": 0.8, "haunting": 0.5, "gentle": 0.4,
    "special": 0.5, "fun": 0.6,
}  # fmt: skip

NEGATIVE_ADJECTIVES: dict[str, float] = {
    "bad": -0.6, "awful": -1.0, "terrible": -1.0, "boring": -0.8, "dull": -0.7, "weak": -0.5,
    "flat": -0.5, "silly": -0.4, "clumsy": -0.6, "tedious": -0.8, "messy": -0.5, "poor": -0.6,
    "forgettable": -0.6, "painful": -0.8, "slow": -0.4, "predictable": -0.5, "lifeless": -0.8,
    "cheap": -0.5, "confusing": -0.5, "lazy": -0.7, "stiff": -0.5, "bland": -0.6, "empty": -0.6,
    "hollow": -0.6, "annoying": -0.7, "dreadful": -1.0, "horrible": -1.0, "pointless": -0.8,
    "wooden": -0.6, "stupid": -0.8, "ugly": -0.6, "overlong": -0.5, "uneven": -0.4, "tired": -0.5,
    "shallow": -0.6, "loud": -0.3, "dreary": -0.7, "mediocre": -0.6, "disappointing": -0.8,
    "sloppy": -0.6, "awkward": -0.5, "grim": -0.3, "lame": -0.7,
}  # fmt: skip

OTHER_SENTIMENT_WORDS: dict[str, float] = {
    # positive
    "loved": 1.0, "love": 0.8, "enjoyed": 0.8, "enjoy": 0.7, "liked": 0.6, "like": 0.5, "adored": 1.0,
    "recommend": 0.8, "recommended": 0.8, "masterpiece": 1.0, "gem": 0.8, "best": 0.9, "laughed": 0.5,
    "smiling": 0.6, "beautifully": 0.8, "perfectly": 0.8, "wonderfully": 0.8, "worth": 0.6,
    "favorite": 0.8, "pleasure": 0.7, "joy": 0.8, "treat": 0.6, "moved": 0.6, "impressed": 0.7,
    "delighted": 0.8, "thrilled": 0.8, "charmed": 0.7, "entertained": 0.6, "hooked": 0.6, "right": 0.4,
    # negative
    "hated": -1.0, "hate": -0.9, "disliked": -0.6, "worst": -1.0, "waste": -0.9, "wasted": -0.9,
    "mess": -0.7, "asleep": -0.7, "bored": -0.7, "annoyed": -0.6, "disappointed": -0.7,
    "disappointment": -0.8, "mistake": -0.6, "fails": -0.6, "failed": -0.6, "nonsense": -0.7,
    "regret": -0.7, "avoid": -0.8, "badly": -0.6, "poorly": -0.6, "worse": -0.7, "sadly": -0.3,
    "unfortunately": -0.4, "confused": -0.5, "wrong": -0.6,
}  # fmt: skip

LEXICON: dict[str, float] = {**POSITIVE_ADJECTIVES, **NEGATIVE_ADJECTIVES, **OTHER_SENTIMENT_WORDS}
