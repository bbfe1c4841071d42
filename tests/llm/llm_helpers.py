"""What the trainer tests share: a tiny model, a small setting and a reward that varies."""

import torch

from driftlab.llm.model import TransformerConfig, TransformerLM
from driftlab.llm.tokenizer import CharTokenizer

TOK = CharTokenizer()
SMALL = {
    "task_options": {"digits": 1},
    "prompts_per_step": 4,
    "group_size": 4,
    "max_new_tokens": 12,
    "train_size": 40,
    "eval_size": 8,
}


def tiny_model(seed: int = 0) -> TransformerLM:
    """One layer of width 16, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=TOK.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=32
    )
    return TransformerLM(config)


def length_reward(prompts, completions, **fields):
    """A reward an untrained model already varies on (its answers are never correct)."""
    return [len(c) % 3 / 2 for c in completions]
