"""Lexical evidence: typos, the light-edit script against a naive reference, Jaccard, the screen."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import pytest

from theme_engine.engine.corpus import fold_text
from theme_engine.engine.lexical import WordIndex, char_jaccard, edit_distance, is_typo, light_edit, light_edits

# ----------------------------------------------------------------------------- naive reference


def osa_ref(x: str, y: str) -> int:
    """Optimal string alignment distance, full table."""
    D = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x) + 1):
        D[i][0] = i
    for j in range(len(y) + 1):
        D[0][j] = j
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            D[i][j] = min(D[i - 1][j] + 1, D[i][j - 1] + 1, D[i - 1][j - 1] + (x[i - 1] != y[j - 1]))
            if i > 1 and j > 1 and x[i - 1] == y[j - 2] and x[i - 2] == y[j - 1]:
                D[i][j] = min(D[i][j], D[i - 2][j - 2] + 1)
    return D[-1][-1]


def typo_ref(x: str, y: str) -> bool:
    if x == y or max(len(x), len(y)) < 3:
        return False
    if [c for c in x if c.isdecimal()] != [c for c in y if c.isdecimal()]:
        return False
    return osa_ref(x, y) <= (2 if min(len(x), len(y)) >= 8 else 1)


def script_ref(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[int, int] | None:
    """Lexicographically fewest (edits, drops + insertions) over every light-edit script, by
    memoised recursion over (words of a used, words of b used, last edit) — no band, no cut."""
    INF = (10**6, 10**6)

    def plus(c: tuple[int, int], e: int, d: int) -> tuple[int, int]:
        return INF if c == INF else (c[0] + e, c[1] + d)

    @lru_cache(maxsize=None)
    def f(i: int, j: int, last: str) -> tuple[int, int]:
        if i == 0 and j == 0:
            return (0, 0) if last == "o" else INF
        best = INF
        if last == "o":
            prev = lambda i2, j2: min(f(i2, j2, s) for s in "odi")  # noqa: E731
            if i and j and a[i - 1] == b[j - 1]:
                best = min(best, prev(i - 1, j - 1))
            if i and j and typo_ref(a[i - 1], b[j - 1]):
                best = min(best, plus(prev(i - 1, j - 1), 1, 0))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1] and a[i - 1] != b[j - 1]:
                best = min(best, plus(prev(i - 2, j - 2), 1, 0))
            if i > 1 and j and a[i - 2] + a[i - 1] == b[j - 1]:
                best = min(best, plus(prev(i - 2, j - 1), 1, 0))
            if i and j > 1 and a[i - 1] == b[j - 2] + b[j - 1]:
                best = min(best, plus(prev(i - 1, j - 2), 1, 0))
        elif last == "d" and i:  # a drop, not right after an insertion
            best = min(plus(f(i - 1, j, s), 1, 1) for s in "od")
        elif last == "i" and j:  # an insertion, not right after a drop
            best = min(plus(f(i, j - 1, s), 1, 1) for s in "oi")
        return best

    r = min(f(len(a), len(b), s) for s in "odi")
    return None if r == INF else r


def light_edit_ref(x: str, y: str, max_edits: int, min_words: int) -> int:
    wa, wb = tuple(fold_text(x).split()), tuple(fold_text(y).split())
    if not wa or not wb:
        return -1
    r = script_ref(wa, wb)
    if r is None or r[0] > max_edits or (r[1] > 0 and min(len(wa), len(wb)) < min_words):
        return -1
    return r[0]


VOCAB = ["a", "ab", "b", "abc", "abd", "abcd", "xyz", "xyzw", "xy", "zw", "tamil", "tajik", "tamli", "12ab", "13ab",
         "reallylong", "reallylnog", "realylong", "the", "th"]  # fmt: skip


def edited(rng: random.Random, words: list[str], edits: int) -> list[str]:
    b = list(words)
    for _ in range(edits):
        op = rng.random()
        if op < 0.2 and b:
            b.pop(rng.randrange(len(b)))
        elif op < 0.4:
            b.insert(rng.randint(0, len(b)), rng.choice(VOCAB))
        elif op < 0.6 and len(b) > 1:
            k = rng.randrange(len(b) - 1)
            b[k], b[k + 1] = b[k + 1], b[k]
        elif op < 0.8 and b:
            b[rng.randrange(len(b))] = rng.choice(VOCAB)
        elif len(b) > 1:
            k = rng.randrange(len(b) - 1)
            b[k : k + 2] = [b[k] + b[k + 1]]
    return b


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "x, y, expected",
    [
        ("receive", "recieve", True),  # transposition
        ("dreamer", "dreamre", True),
        ("the", "th", True),  # the longer word has 3 characters
        ("tamil", "tajik", False),  # two substitutions in a short word: another word
        ("bulgarian", "hungarian", True),  # two edits allowed from 8 characters on
        ("python2", "python3", False),  # digits differ
        ("he", "she", True),
        ("a", "i", False),
        ("ab", "abc", True),
        ("word", "word", False),  # equal words are a match, not a typo
    ],
)
def test_is_typo(x, y, expected):
    assert is_typo(x, y) is expected
    assert typo_ref(x, y) is expected


def test_edit_distance_equals_the_naive_reference():
    rng = random.Random(1)
    checked = found = 0
    for _ in range(4000):
        a = [rng.choice(VOCAB[: rng.randint(3, len(VOCAB))]) for _ in range(rng.randint(0, 9))]
        b = edited(rng, a, rng.randint(0, 4))
        ref = script_ref(tuple(a), tuple(b))
        for cap in (0, 1, 2, 3, 4):
            want = ref if ref is not None and ref[0] <= cap else None
            assert edit_distance(a, b, cap) == want, (a, b, cap)
            checked += 1
            found += want is not None
    assert found > checked // 4  # the cases are not all rejections


def test_light_edit_on_known_texts():
    verse = "And they said one to another, Behold, this dreamer cometh."
    assert light_edit(verse, "And they said one to anotehr, Behold, this dreamre cometh.") == 2  # typos
    assert light_edit(verse, "and they said one to another behold this dreamer cometh") == 0  # folding only
    assert light_edit(verse, "And they said to another, Behold, dreamer cometh.") == 2  # two drops (10 words)
    assert light_edit(verse, "And they said to one another, Behold, this dreamer cometh.") == 1  # a swap
    assert light_edit(verse, "And they said one to another, Behold, this dream-er cometh.") == 0  # "dream-er" folds back
    assert light_edit(verse, "And they said one to another, Behold, this dream er cometh.") == 1  # a split
    # a word replaced by another is what tells two documents of one template apart
    a = "Apertium translation data for the Icelandic-English pair"
    assert light_edit(a, "Apertium translation data for the Swedish-Danish pair") == -1
    assert light_edit("tesseract-ocr language files for Tamil", "tesseract-ocr language files for Tajik") == -1
    # word drops/insertions only from min_words words on: short titles are other packages
    assert light_edit("Inter font family", "Inter font family (VF)") == -1
    assert light_edit("Inter font family", "Inter font family (VF)", min_words=3) == 1
    # typos at any length; more edits than allowed
    assert light_edit("Inter font family", "Intre font famliy") == 2
    assert light_edit(verse, "And thye siad one to anotehr, Behold, this dreamre cometh.") == -1
    assert light_edit(verse, "And thye siad one to anotehr, Behold, this dreamre cometh.", max_edits=4) == 4
    assert light_edit("", "anything at all") == -1


def test_light_edit_equals_the_reference_on_random_texts():
    rng = random.Random(7)
    for _ in range(1500):
        a = [rng.choice(VOCAB) for _ in range(rng.randint(1, 12))]
        b = edited(rng, a, rng.randint(0, 4))
        x, y = " ".join(a), " ".join(b)
        for max_edits, min_words in ((3, 8), (2, 4), (4, 1)):
            assert light_edit(x, y, max_edits, min_words) == light_edit_ref(x, y, max_edits, min_words), (x, y)


def test_light_edits_is_light_edit_pair_by_pair():
    rng = random.Random(11)
    a = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 10))) for _ in range(200)]
    b = [" ".join(edited(rng, x.split(), rng.randint(0, 4))) for x in a]
    got = light_edits(a, b, 3, 4)
    assert got.dtype == np.int8 and got.tolist() == [light_edit(x, y, 3, 4) for x, y in zip(a, b)]
    assert (got >= 0).sum() > 50 and (got < 0).sum() > 20
    with pytest.raises(ValueError, match="disagree"):
        light_edits(a, b[:-1])


def test_char_jaccard_on_known_strings():
    def ref(x: str, y: str) -> float:
        def grams(t: str) -> set[str]:
            f = fold_text(t)
            return {f" {f} "[k : k + 3] for k in range(len(f))} if f else set()

        A, B = grams(x), grams(y)
        return len(A & B) / len(A | B) if A | B else 0.0

    pairs = [("Hello, World!", "hello world"), ("abc", "abd"), ("Straße", "STRASSE"), ("東京タワー", "東京タワ"),
             ("", ""), ("", "x y"), ("kitten sitting", "sitting kitten")]  # fmt: skip
    got = char_jaccard([p[0] for p in pairs], [p[1] for p in pairs])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [ref(*p) for p in pairs], atol=1e-6)
    assert got[0] == 1.0 and got[1] == pytest.approx(1 / 5) and got[4] == 0.0  # " ab" shared of 5


def test_word_index_screen_never_rejects_a_light_edit():
    rng = random.Random(3)
    texts = []
    for _ in range(300):
        a = [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]
        texts += [" ".join(a), " ".join(edited(rng, a, rng.randint(0, 5)))]
    rows = np.arange(len(texts)) * 3 + 5  # any sorted ids
    words = WordIndex.concat([WordIndex.from_texts(rows[:250], texts[:250]), WordIndex.from_texts(rows[250:], texts[250:])])
    a = np.repeat(np.arange(0, len(texts), 2), 2)
    b = np.concatenate([[k, (k + 7) % len(texts)] for k in range(1, len(texts), 2)])
    ok = words.screen(rows[a], rows[b], 3)
    truth = np.array([light_edit(texts[x], texts[y], 3, 1) >= 0 for x, y in zip(a, b)])
    assert truth.sum() > 50
    assert not (truth & ~ok).any()  # a necessary condition only
    assert (~ok).sum() > 100  # and it rules out a good share of the rest
    # where short texts may drop no word, their characters rule out more, still never a light edit
    strict = words.screen(rows[a], rows[b], 3, min_words=8)
    truth8 = np.array([light_edit(texts[x], texts[y], 3, 8) >= 0 for x, y in zip(a, b)])
    assert truth8.sum() > 50
    assert not (truth8 & ~strict).any()
    assert not (strict & ~ok).any() and (ok & ~strict).sum() > 20
    with pytest.raises(ValueError, match="no words held"):
        words.screen(np.array([4]), np.array([5]))
    # characters counted only where the test can use them (fewer than min_words + max_edits
    # words): the same screen; counted for fewer documents still, it passes more pairs, never fewer
    for bound, same in ((8 + 3, True), (6, False)):
        short = WordIndex.concat([WordIndex.from_texts(rows[:250], texts[:250], bound), WordIndex.from_texts(rows[250:], texts[250:], bound)])
        assert (short.chars[short.n_words >= bound] == 0).all()
        got = short.screen(rows[a], rows[b], 3, min_words=8)
        assert np.array_equal(got, strict) if same else (not (strict & ~got).any() and (got & ~strict).any())
    with pytest.raises(ValueError, match="different word counts"):
        WordIndex.concat([WordIndex.from_texts(rows[:2], texts[:2], 11), WordIndex.from_texts(rows[2:4], texts[2:4])])
