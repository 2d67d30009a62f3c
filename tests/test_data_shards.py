"""Shard format and nanogpt_mini preparation: header validation, clear refusals, determinism, caching."""

from __future__ import annotations

import json
import os
import random
import time
from array import array

import pytest
import torch

from speedrunner.data import nanogpt_mini
from speedrunner.data.shards import HEADER_BYTES, MAGIC, ShardError, read_header, read_shard, write_shard


def test_roundtrip_list_and_tensor(tmp_path):
    toks = [0, 1, 2, 65535, 1234, 7]
    p = write_shard(tmp_path / "a.bin", toks)
    assert p.stat().st_size == HEADER_BYTES + 2 * len(toks)
    out = read_shard(p)
    assert out.dtype == torch.uint16
    assert out.to(torch.int64).tolist() == toks
    p2 = write_shard(tmp_path / "b.bin", torch.tensor(toks, dtype=torch.int64))
    assert p2.read_bytes() == p.read_bytes()
    header = array("i")
    header.frombytes(p.read_bytes()[:HEADER_BYTES])
    assert list(header[:3]) == [MAGIC, 1, len(toks)] and not any(header[3:])
    assert read_header(p) == len(toks)


def test_empty_shard(tmp_path):
    p = write_shard(tmp_path / "e.bin", [])
    assert read_shard(p).numel() == 0


def test_out_of_range_tokens_refused(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", [65536])
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", torch.tensor([-1]))


def test_bad_magic_refused_with_clear_message(tmp_path):
    p = write_shard(tmp_path / "m.bin", [1, 2, 3])
    data = bytearray(p.read_bytes())
    data[0:4] = (12345).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError) as e:
        read_shard(p)
    msg = str(e.value)
    assert str(p) in msg and "bad magic" in msg and "speedrunner data prepare nanogpt_mini --force" in msg
    assert isinstance(e.value, ValueError)


def test_bad_version_refused(tmp_path):
    p = write_shard(tmp_path / "v.bin", [1, 2, 3])
    data = bytearray(p.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="version"):
        read_shard(p)


def test_truncated_refused_with_sizes(tmp_path):
    p = write_shard(tmp_path / "t.bin", list(range(100)))
    full = p.read_bytes()
    p.write_bytes(full[:-10])
    with pytest.raises(ShardError) as e:
        read_shard(p)
    msg = str(e.value)
    assert "truncated" in msg and f"expected {len(full)} bytes" in msg and f"found {len(full) - 10}" in msg
    assert str(p) in msg and "--force" in msg
    p.write_bytes(full[:100])  # not even a header
    with pytest.raises(ShardError, match="truncated"):
        read_shard(p)


def test_trailing_data_and_missing_file_refused(tmp_path):
    p = write_shard(tmp_path / "x.bin", [1, 2])
    p.write_bytes(p.read_bytes() + b"\0\0")
    with pytest.raises(ShardError, match="trailing data"):
        read_shard(p)
    with pytest.raises(ShardError, match="not found"):
        read_shard(tmp_path / "nope.bin")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("nm") / "data"
    t0 = time.time()
    d = nanogpt_mini.prepare(out_dir=out)
    return d, time.time() - t0


def test_prepare_outputs(prepared):
    d, seconds = prepared
    assert seconds <= 30
    for name in ("train.bin", "val.bin", "test.bin", "tokenizer.json", "meta.json"):
        assert (d / name).is_file()
    meta = json.loads((d / "meta.json").read_text())
    assert meta["corpus_sha256"] == nanogpt_mini.CORPUS_SHA256
    assert meta["vocab_size"] == nanogpt_mini.DEFAULT_VOCAB_SIZE
    assert sum(meta["documents"].values()) == 1189  # every KJV chapter, each in exactly one split
    assert meta["tokens"]["val"] > 50_000 and meta["tokens"]["train"] > 1_000_000
    for split in ("train", "val", "test"):
        toks = read_shard(d / f"{split}.bin")
        assert toks.numel() == meta["tokens"][split]
        assert int(toks.to(torch.int32).max()) < meta["vocab_size"]
        assert int(toks[0]) == meta["eot_id"]  # every document starts with <|endoftext|>
    assert nanogpt_mini.check(d)["tokens"] == meta["tokens"]


def test_tokenizer_roundtrips(prepared):
    from tokenizers import Tokenizer

    d, _ = prepared
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = "In the beginning God created the heaven and the earth. 2. And the earth was without form"
    assert tok.decode(tok.encode(text).ids) == text


def test_prepare_is_deterministic(prepared, tmp_path):
    d, _ = prepared
    d2 = nanogpt_mini.prepare(out_dir=tmp_path / "again")
    for name in ("train.bin", "val.bin", "test.bin", "tokenizer.json"):
        assert (d / name).read_bytes() == (d2 / name).read_bytes(), name


def test_prepare_is_cached_and_force_rebuilds(prepared):
    d, _ = prepared
    before = (d / "train.bin").stat().st_mtime_ns
    t0 = time.time()
    assert nanogpt_mini.prepare(out_dir=d) == d
    assert time.time() - t0 < 3
    assert (d / "train.bin").stat().st_mtime_ns == before
    nanogpt_mini.prepare(out_dir=d, force=True)
    assert (d / "train.bin").stat().st_mtime_ns != before
    nanogpt_mini.check(d)


def test_corrupt_shard_detected_and_rebuilt(prepared, tmp_path):
    d, _ = prepared
    work = tmp_path / "copy"
    work.mkdir()
    for f in d.iterdir():
        (work / f.name).write_bytes(f.read_bytes())
    val = work / "val.bin"
    val.write_bytes(val.read_bytes()[:-2])
    with pytest.raises(ShardError, match="truncated"):
        nanogpt_mini.check(work)
    nanogpt_mini.prepare(out_dir=work)  # not forced: the bad shard makes the cache miss
    assert val.read_bytes() == (d / "val.bin").read_bytes()
    data = bytearray(val.read_bytes())
    data[HEADER_BYTES] ^= 1  # same size, header fine, content changed
    val.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        nanogpt_mini.check(work)


def test_checksum_mismatch_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(nanogpt_mini, "CORPUS_SHA256", "0" * 64)
    with pytest.raises(nanogpt_mini.CorpusError, match="sha256"):
        nanogpt_mini.prepare(out_dir=tmp_path / "x")


def test_user_text_file(tmp_path):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "sea", "and", "the", "of"]
    paras = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 90))) + "." for _ in range(900)]
    text_file = tmp_path / "mine.txt"
    text_file.write_text("\n\n".join(paras))
    d = nanogpt_mini.prepare(out_dir=tmp_path / "mine", text_file=text_file, vocab_size=300)
    meta = nanogpt_mini.check(d)
    import hashlib

    assert meta["corpus_sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert meta["vocab_size"] == 300 and meta["tokens"]["val"] > 0 and meta["tokens"]["test"] > 0
    assert meta["corpus"].startswith("file:")


def test_default_dir_honours_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path))
    assert nanogpt_mini.default_dir() == tmp_path / "data" / "nanogpt_mini"
    monkeypatch.delenv("SPEEDRUNNER_CACHE")
    expected = os.path.expanduser("~/.cache/speedrunner/data/nanogpt_mini")
    assert str(nanogpt_mini.default_dir()) == expected
