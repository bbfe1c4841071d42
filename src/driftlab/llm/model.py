"""A small decoder-only transformer, sized to train on a CPU in seconds.

GPT-2's pre-norm block (Radford et al. 2019: ``x + attn(norm(x))``, ``x + mlp(norm(x))``)
with a choice of RMSNorm (Zhang & Sennrich 2019) or LayerNorm, rotary position embeddings
(RoPE, Su et al. 2021, the rotate-half form of GPT-NeoX and LLaMA) or learned absolute ones,
causal self-attention with a key/value cache, and optionally tied input/output embeddings
(Press & Wolf 2017).

The policy interface that generation and log-prob computation use (also implemented by the
Hugging Face adapter, :class:`driftlab.llm.hf.HFPolicy`):

    policy(input_ids, attention_mask=None, past=None) -> (logits, new_past)

``input_ids`` are the new tokens ``[batch, T]``; ``attention_mask`` (1 = real token) covers
the cached tokens and the new ones, ``[batch, past + T]``; ``past`` is what the previous call
returned. Positions count real tokens only (``cumsum(mask) - 1``), so a left-padded prompt
gets the same positions, and the same logits, as the unpadded one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
)

NORMS = ("rms", "layer")
POSITIONS = ("rotary", "learned")

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per layer, each ``[batch, heads, past, head_dim]``; the keys
are stored after the rotary rotation, so cached tokens are never rotated again."""


@dataclass
class TransformerConfig:
    """Sizes and switches of :class:`TransformerLM`, validated on creation."""

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    max_seq_len: int = 256
    norm: str = "rms"
    positions: str = "rotary"
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("d_model", self.d_model, minimum=1)
        check_int("n_layers", self.n_layers, minimum=1)
        check_int("n_heads", self.n_heads, minimum=1)
        check_positive("mlp_ratio", self.mlp_ratio)
        check_int("max_seq_len", self.max_seq_len, minimum=1)
        check_choice("norm", self.norm, NORMS)
        check_choice("positions", self.positions, POSITIONS)
        check_in_range("dropout", self.dropout, 0.0, 1.0)
        check_positive("rope_base", self.rope_base)
        check_positive("norm_eps", self.norm_eps)
        if self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"d_model must be divisible by n_heads={self.n_heads}, got {self.d_model}"
            )
        if self.positions == "rotary" and self.head_dim % 2 != 0:
            raise ConfigError(
                f"rotary positions need an even head_dim (d_model / n_heads), got {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(config: TransformerConfig) -> nn.Module:
    if config.norm == "rms":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half form: the pairs ``(x_i, x_{i + d/2})`` turn by ``pos theta_i``.

    ``x`` is ``[batch, heads, T, head_dim]``; ``cos``/``sin`` are ``[batch, 1, T, head_dim/2]``.
    """
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class Attention(nn.Module):
    """Causal multi-head self-attention with a key/value cache."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, _ = x.shape
        q, k, v = (
            self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        y = functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, length, -1)), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        hidden = max(1, round(config.mlp_ratio * config.d_model))
        self.attn_norm, self.mlp_norm = _norm(config), _norm(config)
        self.attn = Attention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, config.d_model, bias=False),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.attn(self.attn_norm(x), allowed, rotary, past)
        x = x + self.drop(attended)
        return x + self.drop(self.mlp(self.mlp_norm(x))), present


class TransformerLM(nn.Module):
    """Decoder-only language model: ``forward(input_ids, attention_mask, past) -> (logits,
    new_past)``, logits ``[batch, T, vocab]`` for the ``T`` new tokens."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embed = (
            nn.Embedding(config.max_seq_len, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = _norm(config)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        if config.positions == "rotary":
            half = config.head_dim // 2
            inv_freq = config.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
            angles = torch.arange(config.max_seq_len, dtype=torch.float64)[:, None] * inv_freq
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 n_layers) so the residual stream's
        # variance does not grow with depth.
        for block in self.blocks:
            for layer in (block.attn.out, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        hidden, new_past = self._backbone(input_ids, attention_mask, past)
        return self.logits_from_hidden(hidden), new_past

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final hidden states ``[batch, T, d_model]`` (after the final norm), the
        features the output projection turns into logits; what a value head reads (PPO)."""
        return self._backbone(input_ids, attention_mask, None)[0]

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output projection: ``forward``'s logits from :meth:`hidden_states`, so one
        backbone pass can feed both the language-model head and a value head."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return functional.linear(hidden, weight)

    @staticmethod
    def select_cache_rows(past: KVCache, index: torch.Tensor) -> KVCache:
        """The cache of the batch rows ``index`` only (``[n]``, long): how
        :func:`~driftlab.llm.generation.generate` drops finished rows while decoding."""
        return [
            (keys.index_select(0, index), values.index_select(0, index)) for keys, values in past
        ]

    def _backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past: KVCache | None,
    ) -> tuple[torch.Tensor, KVCache]:
        batch, length = input_ids.shape
        past_length = 0 if past is None else past[0][0].shape[2]
        total = past_length + length
        if attention_mask is None:
            attention_mask = torch.ones(batch, total, dtype=torch.long, device=input_ids.device)
        if tuple(attention_mask.shape) != (batch, total):
            raise ValueError(
                f"attention_mask must be [batch, past + new] = {(batch, total)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        keep = attention_mask.bool()
        positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)[:, past_length:]
        if int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(
                f"sequence of {int(positions.max()) + 1} tokens exceeds "
                f"max_seq_len={self.config.max_seq_len}"
            )
        allowed = self._allowed(keep, past_length, length)

        x = self.embed(input_ids)
        rotary = None
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        else:
            rotary = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        x = self.drop(x)
        new_past: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, allowed, rotary, None if past is None else past[i])
            new_past.append(present)
        return self.final_norm(x), new_past

    @staticmethod
    def _allowed(keep: torch.Tensor, past_length: int, length: int) -> torch.Tensor:
        """``[batch, 1, T, past + T]`` boolean mask: query ``i`` sees real keys up to itself.

        A query always sees itself, so a padding position's softmax has one term instead of
        none (which would be NaN); its output is never read.
        """
        total = past_length + length
        query = torch.arange(past_length, total, device=keep.device)[:, None]
        key = torch.arange(total, device=keep.device)[None, :]
        allowed = (key <= query)[None] & keep[:, None, :]
        return (allowed | (key == query)[None])[:, None]


def save_model(path: str | Path, model: TransformerLM) -> None:
    """Save the config and weights with :func:`driftlab.core.save_checkpoint` (safetensors +
    JSON, nothing pickled)."""
    save_checkpoint(path, {"config": model.config.to_dict(), "model": model.state_dict()})


def load_model(path: str | Path) -> TransformerLM:
    """Rebuild a model saved by :func:`save_model`, in eval mode."""
    state = load_checkpoint(path)
    model = TransformerLM(TransformerConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()
