"""Tiny sentence-transformers models built in the test session (random weights, no downloads).

One builder for every architecture the tests cover, all 2 layers, 32 wide, 2 heads, FFN 64,
at most :data:`MAX_SEQ_LENGTH` tokens:

============  =============================================  ==========  ==================
architecture  tokenizer (built here)                          pad id      pooling
============  =============================================  ==========  ==================
bert          WordPiece (:func:`vocabulary`)                  0 [PAD]     mean + Normalize
distilbert    WordPiece; no token_type_ids in its graph       0 [PAD]     CLS, not normalised
mpnet         WordPiece; relative position bias               0 [PAD]     mean + Normalize
roberta       byte-level BPE (trained here on :data:`WORDS`)  1 <pad>     mean + Normalize
xlm-roberta   SentencePiece Unigram (:func:`unigram_pieces`)  1 <pad>     mean + Normalize
modernbert    byte-level BPE with [CLS]/[SEP]; rotary         3 [PAD]     mean + Normalize
              positions, GeGLU, a local attention window
              shorter than most inputs
============  =============================================  ==========  ==================

RoBERTa and XLM-RoBERTa compute positions from the pad id (after it), so their real
special-token layout matters; the Unigram tokenizer also maps characters it lacks to <unk>.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = (
    "the a an is was are i you he she it we they money bank river sat by deposited in on "
    "of and to cat dog man woman playing guitar piano music car road house tree water "
    "quick brown fox jumps over lazy hello world test text long short sentence word"
).split()
MAX_SEQ_LENGTH = 24
ARCHITECTURES = ("bert", "distilbert", "mpnet", "roberta", "xlm-roberta", "modernbert")
ENCODERS = ("mpnet", "roberta", "xlm-roberta")  # conftest's tiny_encoder_sources
SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MODERNBERT_WINDOW = 8  # local attention sees +-4 tokens: shorter than most test inputs
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()éèüöä")
_SEEDS = {"bert": 0, "distilbert": 1, "mpnet": 10, "roberta": 11, "xlm-roberta": 12, "modernbert": 13}


def vocabulary() -> list[str]:
    """WordPiece: special tokens, whole words, single characters and their ## continuations."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *_CHARS]
    tokens += [f"##{c}" for c in _CHARS]
    return list(dict.fromkeys(tokens))  # some words are also single characters


def unigram_pieces() -> list[tuple[str, float]]:
    """SentencePiece pieces and log-probabilities in XLM-R's id order (<s> <pad> </s> <unk>).

    Whole words, a few word parts (so Viterbi has a choice), single characters with and
    without the word-start mark; no upper case and few non-ASCII letters, which become <unk>.
    """
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -3.0 - len(w) / 10) for w in WORDS]
    pieces += [(p, -6.0) for p in ("▁play", "ing", "▁sen", "tence", "▁wor", "ld", "s", "▁de")]
    pieces += [("▁", -5.0)]
    pieces += [(c, -8.0) for c in _CHARS] + [(f"▁{c}", -8.5) for c in _CHARS]
    first_scores: dict[str, float] = {}  # a piece listed twice (a word that is also a character)
    for piece, score in pieces:  # keeps its first score, so ids stay dense
        first_scores.setdefault(piece, score)
    return [*first_scores.items(), ("<mask>", 0.0)]


def build(root: Path, architecture: str) -> Path:
    """Write a sentence-transformers folder for ``architecture`` (one of :data:`ARCHITECTURES`)."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(_SEEDS[architecture])
    hf_dir = root / f"hf-{architecture}"
    hf_dir.mkdir(parents=True)
    tokenizer, special = _tokenizer(hf_dir, architecture)
    model = _model(architecture, vocab_size=len(tokenizer), special=special)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    pooling, normalize = ("cls", False) if architecture == "distilbert" else ("mean", True)
    transformer = models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
    stages = [transformer, models.Pooling(SHAPE["hidden_size"], pooling_mode=pooling)]
    if normalize:
        stages.append(models.Normalize())
    st_dir = root / f"st-{architecture}"
    SentenceTransformer(modules=stages, device="cpu").save(str(st_dir))
    return st_dir


def _tokenizer(hf_dir: Path, architecture: str) -> tuple[Any, dict[str, int]]:
    """The architecture's fast tokenizer and the special ids its config must state."""
    import transformers

    if architecture == "roberta":
        tokenizer = _byte_level_bpe(hf_dir)
    elif architecture == "modernbert":  # BPE with BERT's special tokens, as ModernBERT's own
        tokenizer = _bert_style_bpe()
    elif architecture == "xlm-roberta":
        tokenizer = transformers.XLMRobertaTokenizerFast(
            tokenizer_object=_unigram(), model_max_length=64
        )
    else:
        vocab_file = hf_dir / "vocab.txt"
        vocab_file.write_text("\n".join(vocabulary()) + "\n")
        cls = (
            transformers.DistilBertTokenizerFast
            if architecture == "distilbert"
            else transformers.BertTokenizerFast
        )
        tokenizer = cls(vocab_file=str(vocab_file), model_max_length=64)
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    return tokenizer, special


def _trained_bpe(special_tokens: list[str]) -> Any:
    """Byte-level BPE merges learnt here from a few sentences; ``special_tokens`` first."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS[i : i + 7]) for i in range(len(WORDS))] * 3
    bpe.train_from_iterator(
        corpus, vocab_size=400, min_frequency=2, show_progress=False, special_tokens=special_tokens
    )
    return bpe


def _byte_level_bpe(hf_dir: Path) -> Any:
    """RoBERTa's tokenizer: byte-level BPE, from its vocab.json and merges.txt."""
    import transformers

    bpe = _trained_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    vocab_file, merges_file = bpe.save_model(str(hf_dir))
    return transformers.RobertaTokenizerFast(
        vocab_file=vocab_file, merges_file=merges_file, model_max_length=64
    )


def _bert_style_bpe() -> Any:
    """ModernBERT's kind of tokenizer: byte-level BPE, [CLS] text [SEP], no token_type_ids."""
    import transformers
    from tokenizers import Tokenizer, processors

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # pad id 3: not 0
    backend = Tokenizer.from_str(_trained_bpe(specials).to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=64, model_input_names=["input_ids", "attention_mask"],
        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
    )


def _unigram() -> Any:
    """XLM-R's tokenizer: a SentencePiece Unigram model with its normaliser and template."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    tokenizer = Tokenizer(Unigram(unigram_pieces(), unk_id=3))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


def _model(architecture: str, vocab_size: int, special: dict[str, int]) -> Any:
    import transformers

    if architecture == "distilbert":
        return transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, pad_token_id=special["pad_token_id"],
        ))
    if architecture == "bert":
        return transformers.BertModel(transformers.BertConfig(
            vocab_size=vocab_size, max_position_embeddings=64, **SHAPE
        ))
    if architecture == "modernbert":
        # Layer 0 attends globally, layer 1 within the local window (global every 2nd layer).
        return transformers.ModernBertModel(transformers.ModernBertConfig(
            vocab_size=vocab_size, max_position_embeddings=64, global_attn_every_n_layers=2,
            local_attention=MODERNBERT_WINDOW, cls_token_id=special["bos_token_id"],
            sep_token_id=special["eos_token_id"], **special, **SHAPE,
        ))
    # MPNet, RoBERTa and XLM-R count positions from after the pad id: 2 spare positions.
    config_cls, model_cls = {
        "mpnet": (transformers.MPNetConfig, transformers.MPNetModel),
        "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel),
    }[architecture]
    config = config_cls(vocab_size=vocab_size, max_position_embeddings=66, **special, **SHAPE)
    return model_cls(config, add_pooling_layer=False)


def add_stage(st_dir: Path, target: Path, kind: str) -> Path:
    """Copy ``st_dir`` to ``target`` with an extra stage (e.g. a Dense layer) in modules.json."""
    import shutil

    shutil.copytree(st_dir, target)
    modules = json.loads((target / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "9_Extra", "type": kind})
    (target / "modules.json").write_text(json.dumps(modules))
    return target
