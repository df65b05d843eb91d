"""Tiny sentence-transformers models built in the test session (no downloads).

A 2-layer, 32-wide BERT (mean pooling + Normalize) and a 2-layer DistilBERT, whose graph
has no token_type_ids (CLS pooling, no Normalize), both on a tiny WordPiece vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "the a an is was are i you he she it we they money bank river sat by deposited in on "
    "of and to cat dog man woman playing guitar piano music car road house tree water "
    "quick brown fox jumps over lazy hello world test text long short sentence word"
).split()
MAX_SEQ_LENGTH = 24


def vocabulary() -> list[str]:
    """Special tokens, whole words, single characters and their ## continuations."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()éèüöä")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars]
    tokens += [f"##{c}" for c in chars]
    return list(dict.fromkeys(tokens))  # some words are also single characters


def build(root: Path, architecture: str) -> Path:
    """Write a sentence-transformers folder for ``architecture`` (bert or distilbert)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertModel,
        DistilBertTokenizerFast,
    )

    torch.manual_seed(0 if architecture == "bert" else 1)
    hf_dir = root / f"hf-{architecture}"
    hf_dir.mkdir(parents=True)
    vocab_file = hf_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary()) + "\n")
    size = len(vocabulary())
    if architecture == "bert":
        config = BertConfig(
            vocab_size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        )
        model, tokenizer_cls = BertModel(config), BertTokenizerFast
        pooling, normalize = "mean", True
    else:
        config = DistilBertConfig(
            vocab_size=size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64,
        )
        model, tokenizer_cls = DistilBertModel(config), DistilBertTokenizerFast
        pooling, normalize = "cls", False
    model.save_pretrained(hf_dir)
    tokenizer_cls(vocab_file=str(vocab_file), model_max_length=64).save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
    stages = [transformer, models.Pooling(32, pooling_mode=pooling)]
    if normalize:
        stages.append(models.Normalize())
    st_dir = root / f"st-{architecture}"
    SentenceTransformer(modules=stages, device="cpu").save(str(st_dir))
    return st_dir


def add_stage(st_dir: Path, target: Path, kind: str) -> Path:
    """Copy ``st_dir`` to ``target`` with an extra stage (e.g. a Dense layer) in modules.json."""
    import shutil

    shutil.copytree(st_dir, target)
    modules = json.loads((target / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "9_Extra", "type": kind})
    (target / "modules.json").write_text(json.dumps(modules))
    return target
