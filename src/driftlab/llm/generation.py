"""Batched sampling of groups of completions, and per-token log-probs by teacher forcing.

A policy is any callable ``policy(input_ids, attention_mask=None, past=None) -> (logits,
new_past)`` (see :mod:`driftlab.llm.model`): the built-in :class:`TransformerLM` or a Hugging
Face model wrapped by :class:`driftlab.llm.hf.HFPolicy`.

Conventions, shared with the trainers:

- Prompts are left-padded; each is repeated ``group_size`` times consecutively, so rows
  ``g * G ... g * G + G - 1`` are the group of prompt ``g`` (the order
  :func:`driftlab.rl.losses.group_advantages` expects).
- Completions are right-padded. ``completion_mask`` is 1 on every sampled token up to and
  including the first ``<eos>``; a row that has finished receives ``pad_id`` tokens with
  mask 0 and log-prob 0 until the whole batch has finished or ``max_new_tokens`` is reached
  (a truncated row has no ``<eos>``).
- Log-probs are those of the **tempered** distribution ``softmax(logits / temperature)``
  that the token was sampled from, before top-p truncation: the same quantity
  :func:`sequence_log_probs` recomputes with the same temperature, as TRL and verl do in
  training (top-p only restricts which tokens can be drawn). Greedy decoding
  (``temperature=0``) records the log-probs at temperature 1.
- Sampling that does not depend on how a batch is split: given ``uniforms`` (one number in
  ``[0, 1)`` per row and step, drawn for the whole global batch), each token is drawn by
  inverse-CDF sampling, the first token whose cumulative probability exceeds the row's
  uniform. A row's completion then depends only on its prompt, its uniforms and the
  weights, not on which other rows share its batch or its process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress

import torch
from torch.nn import functional

from driftlab.core.config import check_in_range, check_int, check_nonnegative, check_positive
from driftlab.llm.tokenizer import Tokenizer

Policy = Callable[..., tuple[torch.Tensor, object]]


@dataclass
class Rollout:
    """Completions sampled for a batch of prompts, ``group_size`` rows per prompt.

    All tensors have ``batch * group_size`` rows; ``prompt_*`` are ``[rows, prompt_len]``
    and ``completion_*``/``log_probs`` are ``[rows, completion_len]``.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    log_probs: torch.Tensor
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens in each completion (the ``<eos>`` included)."""
        return self.completion_mask.sum(dim=1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probability reaches ``top_p``; the others get ``-inf``. The most likely token is
    always kept, so a tiny ``top_p`` is greedy decoding."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is kept when the probability of the tokens ranked above it is below top_p.
    remove_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token of each row of ``probs`` ``[rows, vocab]`` whose cumulative-probability
    interval contains ``uniforms[row]`` (in ``[0, 1)``, scaled by the row's total so that
    rounding in the sum never points past the last token). A zero-probability token has an
    empty interval, so it is never drawn."""
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    return tokens.clamp(max=probs.shape[-1] - 1)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` ``[rows, vocab]`` and its log-prob under the tempered
    (untruncated) distribution; ``temperature=0`` takes the argmax. With ``uniforms``
    (``[rows]`` in ``[0, 1)``) the draw is :func:`inverse_cdf_sample` of them, else
    ``torch.multinomial`` with ``generator``."""
    logits = logits.float()
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        log_probs = logits.log_softmax(dim=-1)
    else:
        log_probs = (logits / temperature).log_softmax(dim=-1)
        probs = top_p_filter(log_probs, top_p).softmax(dim=-1)
        if uniforms is None:
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            tokens = inverse_cdf_sample(probs, uniforms)
    return tokens, log_probs.gather(1, tokens[:, None]).squeeze(1)


@torch.no_grad()
def generate(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    group_size: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    uniforms: torch.Tensor | None = None,
) -> Rollout:
    """Sample ``group_size`` completions per prompt, recording per-token log-probs.

    With ``use_cache`` each step feeds only the new token and the policy's key/value cache,
    and rows that have finished leave the batch (their cache rows are dropped with the
    policy's ``select_cache_rows``, see :func:`select_cache_rows`), so a step costs what the
    unfinished rows need; the samples and log-probs are bit for bit those of decoding every
    row (on CPU, tested; a GPU library that picks its matmul kernel by batch size may differ
    in rounding). Without ``use_cache`` the whole sequence of every row is recomputed each
    step (slow; a reference for tests).
    A seeded ``generator`` makes sampling deterministic. ``uniforms``
    ``[batch * group_size, max_new_tokens]`` in ``[0, 1)`` replace the generator: token ``t``
    of row ``i`` is the inverse-CDF draw of ``uniforms[i, t]``, so slicing the uniforms of a
    global batch with its rows gives every row the completion it has in the whole batch.
    """
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("group_size", group_size, minimum=1)
    check_nonnegative("temperature", temperature)
    check_in_range("top_p", top_p, 0.0, 1.0)
    check_positive("top_p", top_p)
    if prompt_ids.shape != prompt_mask.shape or prompt_ids.ndim != 2:
        raise ValueError(
            f"prompt_ids and prompt_mask must both be [batch, length], got "
            f"{tuple(prompt_ids.shape)} and {tuple(prompt_mask.shape)}"
        )
    ids = prompt_ids.repeat_interleave(group_size, dim=0)
    mask = prompt_mask.repeat_interleave(group_size, dim=0).long()
    prompt_ids, prompt_mask = ids, mask
    rows = ids.shape[0]
    if uniforms is not None and tuple(uniforms.shape) != (rows, max_new_tokens):
        raise ValueError(
            f"uniforms must be [batch * group_size, max_new_tokens] = {(rows, max_new_tokens)}, "
            f"got {tuple(uniforms.shape)}"
        )
    device = ids.device
    # Outputs are preallocated and written at the original rows, so rows can leave the batch.
    completion_ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros((rows, max_new_tokens), dtype=torch.long, device=device)
    log_probs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    # ``alive[b]``: the original row of batch row ``b``. With a cache the policy can cut to
    # its surviving rows (:func:`select_cache_rows`), finished rows leave the batch: decoding
    # costs what the unfinished rows need, not the longest row times the whole batch. Each
    # row's tokens and log-probs are those of the full batch (its own uniforms, its own cache).
    alive = torch.arange(rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    past = new_cache(policy, rows, ids.shape[1] + max_new_tokens) if use_cache else None
    compact, inputs, length = use_cache, ids, 0
    for step in range(max_new_tokens):
        if use_cache:
            logits, past = policy(inputs, attention_mask=mask, past=past)
        else:
            logits, _ = policy(ids, attention_mask=mask)
        token, log_prob = _sample_rows(
            logits[:, -1],
            alive,
            rows,
            temperature,
            top_p,
            generator,
            None if uniforms is None else uniforms[alive, step],
        )
        running = ~finished
        token = torch.where(running, token, torch.full_like(token, pad_id))
        completion_ids[alive, step] = token
        log_probs[alive, step] = torch.where(running, log_prob, torch.zeros_like(log_prob))
        completion_mask[alive, step] = running.long()
        finished = finished | (running & (token == eos_id))
        length = step + 1
        if bool(finished.all()):
            break
        if not use_cache:
            ids = torch.cat((ids, token[:, None]), dim=1)
        mask = torch.cat((mask, running.long()[:, None]), dim=1)
        inputs = token[:, None]
        keep = _rows_to_keep(finished) if compact else None
        if keep is not None:
            selected = select_cache_rows(policy, past, keep)
            if selected is None:
                compact = False  # this policy's cache cannot drop rows: decode them all
            else:
                past, alive, mask, inputs = selected, alive[keep], mask[keep], inputs[keep]
                finished = finished[keep]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids[:, :length].contiguous(),
        completion_mask=completion_mask[:, :length].contiguous(),
        log_probs=log_probs[:, :length].contiguous(),
        group_size=group_size,
    )


def new_cache(policy: Policy, rows: int, max_length: int) -> object | None:
    """The policy's own empty cache for ``rows`` sequences of up to ``max_length`` tokens
    (``policy.new_cache``, e.g. :class:`~driftlab.llm.hf.HFPolicy`'s preallocated one for
    GPT-2), or ``None``: the policy then starts its cache on the first call."""
    make = getattr(policy, "new_cache", None)
    return None if make is None else make(rows, max_length)


def select_cache_rows(policy: Policy, past: object, index: torch.Tensor) -> object | None:
    """``past`` cut to the batch rows ``index`` (``[n]``, long) by the policy's own
    ``select_cache_rows(past, index)`` (:class:`~driftlab.llm.model.TransformerLM` and
    :class:`~driftlab.llm.hf.HFPolicy` have one). ``None`` when the policy has none or says
    its cache cannot drop rows: :func:`generate` then keeps decoding every row (same
    samples, more arithmetic)."""
    select = getattr(policy, "select_cache_rows", None)
    return None if select is None else select(past, index)


MIN_DECODE_ROWS = 4
"""The fewest rows :func:`generate` cuts a batch to. CPU matrix products switch to another
kernel, with another summation order, below 4 rows; finished rows ride along up to this size,
so every row's logits stay bit-identical to those it gets in the full batch."""


CUT_FRACTION = 0.125
""":func:`generate` cuts the batch once at least this fraction of its rows has finished. A cut
copies the whole cache; cutting at every finished row cost more than it saved on a 2-layer
width-32 GPT-2 (64 rows, +3% generation time), waiting for an eighth of the batch did not."""


def _rows_to_keep(finished: torch.Tensor) -> torch.Tensor | None:
    """The batch rows to keep decoding (in batch order): the unfinished ones, topped up with
    finished ones to :data:`MIN_DECODE_ROWS`; ``None`` when fewer than :data:`CUT_FRACTION`
    of the rows have finished, or when no row would be dropped."""
    batch = finished.numel()
    if int(finished.sum()) < CUT_FRACTION * batch:
        return None
    unfinished = torch.nonzero(~finished).squeeze(1)
    target = max(unfinished.numel(), min(batch, MIN_DECODE_ROWS))
    if target >= batch:
        return None
    riders = torch.nonzero(finished).squeeze(1)[: target - unfinished.numel()]
    return torch.cat((unfinished, riders)).sort().values


def _sample_rows(
    logits: torch.Tensor,
    alive: torch.Tensor,
    rows: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_tokens` for the batch rows ``alive`` (of ``rows``) of :func:`generate`.

    ``torch.multinomial`` draws from ``generator`` for every row of its input, so when rows
    have left the batch, zero logits stand in for them: the generator then advances as for
    the full batch and every row gets the token it gets there. Uniforms and greedy decoding
    need no such care: each row's draw is its own."""
    if uniforms is not None or temperature == 0.0 or logits.shape[0] == rows:
        return sample_tokens(logits, temperature, top_p, generator, uniforms=uniforms)
    full = logits.new_zeros(rows, logits.shape[1])
    full[alive] = logits
    token, log_prob = sample_tokens(full, temperature, top_p, generator)
    return token[alive], log_prob[alive]


def decode_completions(
    tokenizer: Tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> list[str]:
    """The text of each completion's masked-in tokens (special tokens dropped), for scoring.

    The batch crosses to Python lists once, not row by row, and a tokenizer with
    ``batch_decode`` (:class:`~driftlab.llm.hf.HFTokenizer`) decodes all rows in one call."""
    rows = [
        list(compress(ids, mask))
        for ids, mask in zip(completion_ids.tolist(), completion_mask.tolist(), strict=True)
    ]
    batch_decode = getattr(tokenizer, "batch_decode", None)
    if batch_decode is not None:
        return batch_decode(rows)
    return [tokenizer.decode(row) for row in rows]


def sequence_log_probs(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunks: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log pi(y_t | x, y_<t)`` of the completions, ``[rows, completion_len]``, from
    one teacher-forced forward pass; 0 where ``completion_mask`` is 0.

    The distribution is ``softmax(logits / temperature)``, the one :func:`generate` samples
    from, so with the same weights the result equals the recorded ``Rollout.log_probs``.
    Gradients flow (this is the policy term of the trainers' losses). With
    ``return_entropy`` also the entropy of that distribution at every completion position
    (detached, 0 where masked): the trainers log its mean.

    With ``chunks > 1`` the rows are sorted by completion length and run in that many passes,
    each cut to the prompt and completion columns its own rows use (:func:`_length_chunks`):
    a short completion no longer carries the longest one's padding through the network. The
    result has the same shape and values (up to float rounding), and a backward pass through
    it runs chunk by chunk too.
    """
    check_positive("temperature", temperature)
    check_int("chunks", chunks, minimum=1)
    if chunks > 1 and completion_ids.shape[0] > 1:
        return _length_chunks(
            policy,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            temperature,
            return_entropy,
            chunks,
        )
    ids = torch.cat((prompt_ids, completion_ids), dim=1)
    mask = torch.cat((prompt_mask, completion_mask), dim=1).long()
    logits, _ = policy(ids, attention_mask=mask)
    start = prompt_ids.shape[1]
    # Position t predicts token t + 1: the prompt's last position predicts the first answer token.
    predicting = logits[:, start - 1 : -1].float() / temperature
    all_log_probs = predicting.log_softmax(dim=-1)
    log_probs = all_log_probs.gather(2, completion_ids[:, :, None]).squeeze(2)
    weights = completion_mask.to(log_probs.dtype)
    if not return_entropy:
        return log_probs * weights
    with torch.no_grad():
        entropy = -(all_log_probs.exp() * all_log_probs).sum(dim=-1) * weights
    return log_probs * weights, entropy


def _length_chunks(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    return_entropy: bool,
    chunks: int,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_log_probs` over ``chunks`` groups of rows of similar completion length,
    each trimmed to the columns it uses (left of the prompts, right of the completions), the
    results padded back with 0 (masked positions) and put back in row order."""
    width = completion_ids.shape[1]
    order = torch.argsort(completion_mask.sum(dim=1), stable=True)
    parts: list[tuple[torch.Tensor, ...]] = []
    for rows in order.chunk(chunks):
        prompt_used = torch.nonzero(prompt_mask[rows].any(dim=0))
        start = int(prompt_used.min()) if prompt_used.numel() else prompt_ids.shape[1] - 1
        completion_used = torch.nonzero(completion_mask[rows].any(dim=0))
        end = int(completion_used.max()) + 1 if completion_used.numel() else 1
        out = sequence_log_probs(
            policy,
            prompt_ids[rows, start:],
            prompt_mask[rows, start:],
            completion_ids[rows, :end],
            completion_mask[rows, :end],
            temperature,
            return_entropy,
        )
        out = out if return_entropy else (out,)
        parts.append(tuple(functional.pad(x, (0, width - end)) for x in out))
    inverse = torch.argsort(order)
    results = tuple(torch.cat(columns)[inverse] for columns in zip(*parts, strict=True))
    return results if return_entropy else results[0]
