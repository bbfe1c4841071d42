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

import torch

from driftlab.core.config import check_in_range, check_int, check_nonnegative, check_positive

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

    With ``use_cache`` each step feeds only the new token and the policy's key/value cache;
    without, the whole sequence is recomputed every step (slow; a reference for tests).
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
    finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    tokens, log_probs, active = [], [], []
    inputs, past = ids, None
    for step in range(max_new_tokens):
        if use_cache:
            logits, past = policy(inputs, attention_mask=mask, past=past)
        else:
            logits, _ = policy(ids, attention_mask=mask)
        row_uniforms = None if uniforms is None else uniforms[:, step]
        token, log_prob = sample_tokens(
            logits[:, -1], temperature, top_p, generator, uniforms=row_uniforms
        )
        running = ~finished
        token = torch.where(running, token, torch.full_like(token, pad_id))
        tokens.append(token)
        log_probs.append(torch.where(running, log_prob, torch.zeros_like(log_prob)))
        active.append(running.long())
        finished = finished | (running & (token == eos_id))
        ids = torch.cat((ids, token[:, None]), dim=1)
        mask = torch.cat((mask, running.long()[:, None]), dim=1)
        inputs = token[:, None]
        if bool(finished.all()):
            break
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=torch.stack(tokens, dim=1),
        completion_mask=torch.stack(active, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        group_size=group_size,
    )


def sequence_log_probs(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log pi(y_t | x, y_<t)`` of the completions, ``[rows, completion_len]``, from
    one teacher-forced forward pass; 0 where ``completion_mask`` is 0.

    The distribution is ``softmax(logits / temperature)``, the one :func:`generate` samples
    from, so with the same weights the result equals the recorded ``Rollout.log_probs``.
    Gradients flow (this is the policy term of the trainers' losses). With
    ``return_entropy`` also the entropy of that distribution at every completion position
    (detached, 0 where masked): the trainers log its mean.
    """
    check_positive("temperature", temperature)
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
