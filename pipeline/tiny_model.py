"""The ``tiny`` preset's model: a random 2-layer GPT-NeoX built locally, for tests.

Its BPE tokenizer is trained on the synthetic corpus, so every pseudo-word is one token.  The token
embeddings of alphabetic tokens carry a planted direction for their first letter: without it a random
model holds no spelling information and SAE-Bench's first-letter probe (which the absorption eval
requires) could never pass.  Everything else is random; provenance files say so.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import synthetic_text

D_MODEL = 64
N_LAYERS = 2
VOCAB_SIZE = 4096
SEED = 0


def _train_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[special], min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    words = synthetic_text.vocabulary()
    # Every word in both casings and with/without a leading space, so each becomes a single token.
    seed_text = [" ".join(words), " ".join(w.capitalize() for w in words)] * 3
    tok.train_from_iterator(seed_text + synthetic_text.documents(400, seed=99), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special,
                                   unk_token=special, model_max_length=2048)
    fast.save_pretrained(out)
    return fast


def build_tiny_model(out: Path, name: str) -> None:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = _train_tokenizer(out)
    vocab = len(tokenizer)
    cfg = GPTNeoXConfig(
        vocab_size=vocab, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        intermediate_size=4 * D_MODEL, max_position_embeddings=2048, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    cfg._name_or_path = name
    torch.manual_seed(SEED)
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        emb_VD = model.gpt_neox.embed_in.weight
        gen = torch.Generator().manual_seed(SEED + 1)
        letters_LD = torch.linalg.qr(torch.randn(D_MODEL, 26, generator=gen))[0].T  # 26 orthonormal rows
        scale = 4.0 * emb_VD.norm(dim=1).mean()
        ids, first = [], []
        for tid in range(vocab):
            s = tokenizer.decode([tid]).strip()
            if s.isalpha() and s.isascii():
                ids.append(tid)
                first.append(ord(s[0].lower()) - ord("a"))
        emb_VD[torch.tensor(ids)] += scale * letters_LD[torch.tensor(first)]
    model.save_pretrained(out, safe_serialization=True)
