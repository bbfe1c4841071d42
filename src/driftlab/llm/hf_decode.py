"""Decoding a Hugging Face GPT-2 with a preallocated key/value cache, in plain tensor ops.

Sampling calls the model once per new token. ``transformers``' forward pass is general (cache
classes, mask builders, output records, hooks), and on a small model that generality costs
more than the arithmetic: a 2-layer width-32 GPT-2 spends most of a decoding step outside its
matrix products. :class:`GPT2Decoder` runs the same computation as ``GPT2LMHeadModel``
(Radford et al. 2019: pre-norm blocks ``h + attn(ln_1(h))``, ``h + mlp(ln_2(h))``, learned
positions, the final norm, the tied output embedding) on the model's own parameters, layer
norms and activation, with keys and values written into one tensor per layer
(:class:`StaticKVCache`) instead of concatenated each step. Logits equal the model's to float
rounding (tested against ``transformers``); training still runs the model's own forward.

Only configurations whose computation this file reproduces are decoded here
(:func:`gpt2_decoder` says which); others keep ``transformers``' own cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional


class StaticKVCache:
    """Keys and values ``[rows, heads, max_length, head_dim]`` per layer, filled to
    ``length``; rows can be dropped (:meth:`select_rows`) as sequences finish."""

    def __init__(
        self,
        layers: int,
        rows: int,
        heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (rows, heads, max_length, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0
        self.max_length = max_length

    def get_seq_length(self) -> int:
        return self.length

    def select_rows(self, index: torch.Tensor) -> StaticKVCache:
        """Keep the batch rows ``index`` (in that order), up to the filled length."""
        n = self.length
        for cache in (self.keys, self.values):
            for i, tensor in enumerate(cache):
                kept = torch.empty_like(tensor[: index.numel()])
                kept[:, :, :n] = tensor[index, :, :n]
                cache[i] = kept
        return self


class GPT2Decoder:
    """``GPT2LMHeadModel``'s forward pass over a :class:`StaticKVCache`, without autograd."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.eps = config.layer_norm_epsilon
        self.scales = [
            self.head_dim**-0.5 / (i + 1 if config.scale_attn_by_inverse_layer_idx else 1)
            for i in range(config.num_hidden_layers)
        ]
        # The parameters, read once: a module attribute lookup costs about a microsecond,
        # and a step makes dozens. (Optimiser steps and state-dict loads change the tensors
        # in place; generation builds a decoder per call, so replaced tensors are seen.)
        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.out = model.get_output_embeddings().weight
        self.layers = [
            (
                (b.ln_1.weight, b.ln_1.bias),
                (b.attn.c_attn.bias, b.attn.c_attn.weight),
                (b.attn.c_proj.bias, b.attn.c_proj.weight),
                (b.ln_2.weight, b.ln_2.bias),
                (b.mlp.c_fc.bias, b.mlp.c_fc.weight),
                (b.mlp.c_proj.bias, b.mlp.c_proj.weight),
            )
            for b in t.h
        ]
        self.width = config.hidden_size
        self.act = _activation(config.activation_function, t.h[0].mlp.act)

    def new_cache(self, rows: int, max_length: int) -> StaticKVCache:
        return StaticKVCache(
            len(self.layers),
            rows,
            self.heads,
            max_length,
            self.head_dim,
            self.wte.dtype,
            self.wte.device,
        )

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: StaticKVCache,
    ) -> torch.Tensor:
        """Logits of the *last* position ``[rows, 1, vocab]`` (all that sampling reads) for
        ``input_ids`` ``[rows, T]`` at ``positions``, appending their keys and values to
        ``cache``; ``attention_mask`` ``[rows, cache.length + T]`` marks the real tokens."""
        rows, new = input_ids.shape
        start, end = cache.length, cache.length + new
        if end > cache.max_length:
            raise ValueError(f"the cache holds {cache.max_length} positions; {end} needed")
        width, heads, head_dim = self.width, self.heads, self.head_dim
        hidden = functional.embedding(input_ids, self.wte) + functional.embedding(
            positions, self.wpe
        )
        bias = self._attention_bias(attention_mask, start, end)
        for i, (ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj) in enumerate(self.layers):
            x = functional.layer_norm(hidden, (width,), *ln_1, self.eps)
            qkv = _conv1d(c_attn, x.view(-1, width)).view(rows, new, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            keys, values = cache.keys[i], cache.values[i]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            # softmax(q k^T * scale + bias) v, as GPT2Attention computes it (with its
            # scaling); written out, as for these sizes it is faster than the fused op.
            scores = torch.matmul(q, keys[:, :, :end].transpose(-1, -2))
            scores = scores.mul_(self.scales[i]).add_(bias).softmax(dim=-1)
            out = torch.matmul(scores, values[:, :, :end]).transpose(1, 2).reshape(-1, width)
            hidden = hidden + _conv1d(attn_proj, out).view_as(hidden)
            x = functional.layer_norm(hidden, (width,), *ln_2, self.eps)
            inner = self.act(_conv1d(c_fc, x.view(-1, width)))
            hidden = hidden + _conv1d(mlp_proj, inner).view_as(hidden)
        cache.length = end
        last = functional.layer_norm(hidden[:, -1:], (width,), *self.ln_f, self.eps)
        return functional.linear(last, self.out)

    @staticmethod
    def _attention_bias(mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """``[rows, 1, T, end]``: 0 where query ``start + i`` may see a key, ``-inf`` elsewhere.

        A query sees the real keys up to itself, and always itself: a left-padding query
        with no real key would otherwise get NaN, which its key and value would carry into
        the next layer (a zero weight times NaN is NaN)."""
        device = mask.device
        allowed = mask[:, None, None, :end].bool()
        key_pos = torch.arange(end, device=device)
        query_pos = torch.arange(start, end, device=device)[:, None]
        allowed = (allowed & (key_pos <= query_pos)) | (key_pos == query_pos)
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
        return bias.masked_fill_(~allowed, float("-inf"))


def _conv1d(params: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``transformers``' ``Conv1D`` (a linear layer with its weight stored ``[in, out]``)."""
    bias, weight = params
    return torch.addmm(bias, x, weight)


def _activation(name: str, module: nn.Module) -> Any:
    """GPT-2's MLP activation: tanh-approximated GELU (``gelu_new``, the original's) as
    PyTorch's one-kernel form, which equals ``transformers``' five-op formula to float
    rounding; any other name through the model's own module."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: functional.gelu(x, approximate="tanh")
    if name == "gelu":
        return functional.gelu
    return module


def gpt2_decoder(model: nn.Module) -> GPT2Decoder | None:
    """A :class:`GPT2Decoder` for ``model``, or ``None`` when ``model`` is not a
    ``GPT2LMHeadModel`` whose computation the decoder reproduces exactly: no cross-attention,
    no reordered/upcast attention, attention weights scaled by ``1/sqrt(head_dim)``, an
    output embedding without bias, and no dropout active (the model is in eval mode or its
    dropout probabilities are 0)."""
    config: Any = getattr(model, "config", None)
    if type(model).__name__ != "GPT2LMHeadModel" or getattr(config, "model_type", "") != "gpt2":
        return None
    if config.add_cross_attention or config.reorder_and_upcast_attn:
        return None
    if not config.scale_attn_weights:
        return None
    output = model.get_output_embeddings()
    if getattr(output, "bias", None) is not None:
        return None
    dropout = (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop)
    if model.training and any(p > 0 for p in dropout):
        return None
    return GPT2Decoder(model)
