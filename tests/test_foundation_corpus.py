"""Corpus sources and packing: deterministic, all three source kinds, clear errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import corpus
from pipeline.config import CorpusConfig
from tests.conftest import TINY


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from pipeline.models import load_tokenizer

    return load_tokenizer(TINY, source="tiny-random")


def _batches(cfg, tok, n=3, **kw):
    return list(corpus.iter_token_batches(cfg, tok, 4, max_windows=4 * n, **kw))


def test_packing_is_deterministic_and_seeded(tok):
    cfg = CorpusConfig(source="tiny-synthetic", context_length=16, seed=0)
    a, b = _batches(cfg, tok), _batches(cfg, tok)
    assert all(torch.equal(x.token_ids_BT, y.token_ids_BT) for x, y in zip(a, b))
    other = _batches(CorpusConfig(source="tiny-synthetic", context_length=16, seed=1), tok)
    assert not torch.equal(a[0].token_ids_BT, other[0].token_ids_BT)
    # Skipping windows yields exactly the later windows (what resumed and parallel harvests rely on).
    late = list(corpus.iter_token_batches(cfg, tok, 4, start_window=4, max_windows=4))
    assert late[0].first_window == 4 and torch.equal(late[0].token_ids_BT, a[1].token_ids_BT)


def test_windows_start_with_bos_and_track_documents(tok):
    b = _batches(CorpusConfig(source="tiny-synthetic", context_length=16), tok, n=1)[0]
    assert b.token_ids_BT.shape == (4, 16)
    assert (b.token_ids_BT[:, 0] == tok.bos_token_id).all()
    assert (b.doc_ids_BT[:, 0] == -1).all() and (b.positions_BT[:, 0] == -1).all()
    body_docs, body_pos = b.doc_ids_BT[:, 1:].flatten(), b.positions_BT[:, 1:].flatten()
    same_doc = body_docs[1:] == body_docs[:-1]
    # Within a document positions count up by one; a new document starts at position 0.
    assert ((body_pos[1:] - body_pos[:-1])[same_doc] == 1).all()
    assert (body_pos[1:][~same_doc] == 0).all()


def test_local_text_jsonl_and_parquet_sources(tok, tmp_path):
    texts = [("alpha bik cab duvut " * 5).strip(), ("eaha fuv gazo hud " * 5).strip(), ("iucizam jilejo " * 6).strip()]
    (tmp_path / "a.txt").write_text("\n\n".join(texts))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    for source, field in [(str(tmp_path / "a.txt"), "text"), (str(tmp_path / "b.jsonl"), "body"),
                          (str(tmp_path / "c.parquet"), "body")]:
        docs = list(corpus.iter_documents(CorpusConfig(source=source, text_field=field, seed=3)))
        assert sorted(docs) == sorted(texts)
        assert _batches(CorpusConfig(source=source, text_field=field, context_length=8), tok, n=1)
    both = CorpusConfig(source=f"{tmp_path / 'a.txt'},{tmp_path / 'c.parquet'}", text_field="body")
    with pytest.raises(corpus.CorpusError, match=r"has no column 'text' \(columns: body\)"):
        list(corpus.iter_documents(CorpusConfig(source=str(tmp_path / "c.parquet"), text_field="text")))
    assert len(list(corpus.iter_documents(both))) == 6


def test_wiki_offline_wheel(tok):
    docs = list(corpus.iter_documents(CorpusConfig(source="wiki-offline")))
    assert len(docs) > 10_000 - 100 and all(isinstance(d, str) and d for d in docs[:50])
    b = _batches(CorpusConfig(source="wiki-offline", context_length=64), tok, n=1)[0]
    assert b.token_ids_BT.shape == (4, 64)


def test_missing_corpus_file_is_one_clear_error(tmp_path):
    with pytest.raises(corpus.CorpusError, match="corpus file not found"):
        corpus.check_source(CorpusConfig(source=str(tmp_path / "missing.txt")))


def test_hub_dataset_offline_and_unreachable(monkeypatch):
    cfg = CorpusConfig(source="monology/pile-uncopyrighted")
    with pytest.raises(corpus.CorpusError, match="Hub access is off"):
        corpus.check_source(cfg)
    monkeypatch.setenv("FC_SAE_ONLINE", "1")
    import pipeline.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(corpus.CorpusError, match="unreachable"):
        corpus.check_source(cfg)


def test_hub_dataset_streams_through_datasets(monkeypatch, tok):
    """The Hub path with only the network boundary replaced: datasets.load_dataset returns a real
    streaming IterableDataset built locally."""
    import datasets

    import pipeline.models as models

    rows = [{"text": f"bik cab doc {i} " * 4} for i in range(50)]
    calls = {}

    def fake_load_dataset(name, split, streaming, revision):
        calls.update(name=name, split=split, streaming=streaming, revision=revision)
        return datasets.IterableDataset.from_generator(lambda: iter(rows))

    monkeypatch.setenv("FC_SAE_ONLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = CorpusConfig(source="someone/some-corpus", split="train", revision="abc", seed=5, context_length=8)
    docs = list(corpus.iter_documents(cfg))
    assert calls == {"name": "someone/some-corpus", "split": "train", "streaming": True, "revision": "abc"}
    assert sorted(docs) == sorted(r["text"] for r in rows) and docs != [r["text"] for r in rows]
    assert docs == list(corpus.iter_documents(cfg))  # seeded shuffle buffer: deterministic
    assert _batches(cfg, tok, n=1)


def test_write_text_dataset_for_core_eval(tmp_path):
    out = corpus.write_text_dataset(CorpusConfig(source="tiny-synthetic"), tmp_path / "ds", 20)
    table = pq.read_table(out / "train.parquet")
    assert table.column_names == ["text"] and table.num_rows == 20
