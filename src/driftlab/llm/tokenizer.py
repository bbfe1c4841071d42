"""A character-level tokenizer for the verifiable arithmetic tasks.

The vocabulary is fixed, so ids never depend on data: three special tokens (``<pad>``,
``<bos>``, ``<eos>``), the answer tags ``<answer>`` and ``</answer>`` as single tokens (a tag
costs one position and one sampling decision, not eight), then one token per character of
the tasks' alphabet: digits, ``+ - * / ( ) =``, space and newline.

The tokenizer protocol that generation, SFT and the trainers rely on (and that the Hugging
Face adapter in :mod:`driftlab.llm.hf` also implements): ``pad_id``, ``bos_id``, ``eos_id``,
``encode``, ``decode`` and ``batch_encode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from driftlab.core.config import check_choice

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
TAGS = (ANSWER_OPEN, ANSWER_CLOSE)
ALPHABET = tuple("0123456789+-*/()= \n")
PADDING_SIDES = ("left", "right")


class Tokenizer(Protocol):
    """What generation, SFT and the trainers need of a tokenizer."""

    pad_id: int
    bos_id: int | None
    eos_id: int

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str: ...

    def batch_encode(
        self,
        texts: Sequence[str],
        padding_side: str = "left",
        add_bos: bool = True,
        add_eos: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class CharTokenizer:
    """Character tokenizer with the fixed vocabulary ``SPECIAL_TOKENS + TAGS + ALPHABET``.

    ``encode`` reads the tags greedily as single tokens and rejects any character outside the
    alphabet with an error naming it; ``decode`` drops the special tokens unless asked not to.
    """

    def __init__(self) -> None:
        self.vocab: tuple[str, ...] = SPECIAL_TOKENS + TAGS + ALPHABET
        self.token_to_id = {token: i for i, token in enumerate(self.vocab)}
        self.pad_id = self.token_to_id[PAD]
        self.bos_id = self.token_to_id[BOS]
        self.eos_id = self.token_to_id[EOS]
        self.special_ids = frozenset((self.pad_id, self.bos_id, self.eos_id))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``<bos>``/``<eos>`` around it when asked."""
        ids = [self.bos_id] if add_bos else []
        i = 0
        while i < len(text):
            tag = next((t for t in TAGS if text.startswith(t, i)), None)
            if tag is not None:
                ids.append(self.token_to_id[tag])
                i += len(tag)
                continue
            char = text[i]
            if char not in self.token_to_id or char in SPECIAL_TOKENS:
                raise ValueError(
                    f"character {char!r} at position {i} is not in the tokenizer's alphabet "
                    f"{''.join(ALPHABET)!r} (plus the tags {', '.join(TAGS)})"
                )
            ids.append(self.token_to_id[char])
            i += 1
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``ids``; ``<pad>``, ``<bos>`` and ``<eos>`` are dropped by default."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[i] for i in ids if not (skip_special and i in self.special_ids))

    def batch_encode(
        self,
        texts: Sequence[str],
        padding_side: str = "left",
        add_bos: bool = True,
        add_eos: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``[batch, longest]`` int64, padded with
        ``<pad>`` on ``padding_side``: left for prompts (generation appends on the right),
        right for training sequences."""
        return pad_sequences(
            [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts],
            self.pad_id,
            padding_side,
        )


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into ``(ids, mask)`` padded with ``pad_id`` on ``padding_side``."""
    check_choice("padding_side", padding_side, PADDING_SIDES)
    if len(sequences) == 0:
        raise ValueError("cannot pad an empty batch of sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = width - len(seq) if padding_side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return ids, mask
