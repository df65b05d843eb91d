"""Tiny MPNet, RoBERTa and XLM-RoBERTa sentence-transformers models built in the test session.

Same size as :mod:`_tiny_models`' BERT (2 layers, 32 wide, 2 heads, mean pooling,
Normalize) and the same WordPiece vocabulary: what these tests check is the exported graph
of each architecture (MPNet's relative position bias, RoBERTa's padding-offset positions),
which does not depend on the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

ARCHITECTURES = ("mpnet", "roberta", "xlm-roberta")


def build(root: Path, architecture: str, tiny_models: ModuleType) -> Path:
    """Write a sentence-transformers folder for ``architecture`` (one of :data:`ARCHITECTURES`)."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(ARCHITECTURES.index(architecture) + 10)
    hf_dir = root / f"hf-{architecture}"
    hf_dir.mkdir(parents=True)
    vocab_file = hf_dir / "vocab.txt"
    vocabulary = tiny_models.vocabulary()
    vocab_file.write_text("\n".join(vocabulary) + "\n")
    shape = {
        "vocab_size": len(vocabulary),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 66,  # positions start after the padding id in RoBERTa
        "pad_token_id": 0,  # [PAD]
    }
    model: transformers.PreTrainedModel
    if architecture == "mpnet":
        model = transformers.MPNetModel(transformers.MPNetConfig(**shape), add_pooling_layer=False)
    elif architecture == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(**shape), add_pooling_layer=False)
    else:
        model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(**shape), add_pooling_layer=False)
    model.save_pretrained(hf_dir)
    transformers.BertTokenizerFast(vocab_file=str(vocab_file), model_max_length=64).save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=tiny_models.MAX_SEQ_LENGTH)
    stages = [transformer, models.Pooling(32, pooling_mode="mean"), models.Normalize()]
    st_dir = root / f"st-{architecture}"
    SentenceTransformer(modules=stages, device="cpu").save(str(st_dir))
    return st_dir
