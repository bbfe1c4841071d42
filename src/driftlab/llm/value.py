"""The value function of PPO for language models: ``V(x, y_<t)`` for every completion token.

A scalar linear head reads the causal LM's final hidden state at the position that predicts
token ``y_t``, the state ``s_t = (x, y_<t)`` in which the policy picks ``y_t``. Two ways to
own the backbone under it (Ouyang et al. 2022 sec. 3.5 initialise a separate value model from
the reward model; Stiennon et al. 2020 and TRL's ``AutoModelForCausalLMWithValueHead`` put the
head on the policy itself):

- ``ValueModel(policy, shared=True)``: the head sits on the policy's own backbone ("head");
  the value loss also trains the policy's weights, and one backbone pass can give both the
  log-probs and the values (:meth:`ValueModel.log_probs_and_values`).
- ``ValueModel(copy.deepcopy(policy), shared=False)``: a separate copy of the backbone,
  initialised from the policy's weights ("separate"); the policy and the critic do not
  interfere, at the price of a second model.

The backbone is any policy with ``hidden_states(input_ids, attention_mask) -> [batch, T,
hidden]`` (and ``logits_from_hidden`` for the one-pass form): the built-in
:class:`~driftlab.llm.model.TransformerLM` and :class:`~driftlab.llm.hf.HFPolicy`.
"""

from __future__ import annotations

import torch
from torch import nn

from driftlab.llm.generation import sequence_log_probs


def hidden_size(policy: nn.Module) -> int:
    """Width of the policy's final hidden states (``d_model``, or a HF config's
    ``hidden_size``)."""
    config = getattr(policy, "config", None)
    if config is not None and hasattr(config, "d_model"):
        return int(config.d_model)
    inner = getattr(policy, "model", None)
    if inner is not None and hasattr(inner, "config"):
        return int(inner.config.hidden_size)
    raise TypeError(
        f"cannot tell the hidden size of {type(policy).__name__}: expected a TransformerLM "
        "(config.d_model) or an HFPolicy (model.config.hidden_size)"
    )


class ValueModel(nn.Module):
    """A scalar head on a causal LM's final hidden states; ``shared`` says whether the
    backbone is the policy itself (a value head) or a separate copy (a value model).

    The head starts at zero (weight and bias), so every value is 0 before training and the
    first advantages are the plain reward-to-go.
    """

    def __init__(self, backbone: nn.Module, *, shared: bool) -> None:
        super().__init__()
        if not hasattr(backbone, "hidden_states"):
            raise TypeError(
                f"{type(backbone).__name__} has no hidden_states(input_ids, attention_mask); "
                "a value head needs the final hidden states"
            )
        self.shared = shared
        # A shared backbone belongs to the policy: keep it out of this module's parameters
        # and state dict, so that it is neither optimised nor saved twice.
        if shared:
            self.__dict__["_shared_backbone"] = backbone
        else:
            self.backbone = backbone
        self.head = nn.Linear(hidden_size(backbone), 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def body(self) -> nn.Module:
        """The backbone whose hidden states the head reads."""
        return self.__dict__["_shared_backbone"] if self.shared else self.backbone

    def values_from_hidden(self, hidden: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """``[rows, T]`` values of the completion tokens from the hidden states of the whole
        sequence ``[rows, prompt_length + T, hidden]``; position ``t`` predicts token ``t+1``,
        so the value of the state before completion token ``t`` is read at
        ``prompt_length - 1 + t``, where the policy's logits for that token are."""
        hidden = hidden[:, prompt_length - 1 : -1]
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``V(x, y_<t)`` of every completion token ``[rows, T]``, 0 where the mask is 0."""
        ids = torch.cat((prompt_ids, completion_ids), dim=1)
        mask = torch.cat((prompt_mask, completion_mask), dim=1).long()
        values = self.values_from_hidden(self.body.hidden_states(ids, mask), prompt_ids.shape[1])
        return values * completion_mask.to(values.dtype)

    def log_probs_and_values(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_probs, entropy, values)`` ``[rows, T]`` from one pass of a shared backbone:
        the log-probs and entropies of
        :func:`~driftlab.llm.generation.sequence_log_probs` and the values of
        :meth:`forward`."""
        if not self.shared:
            raise ValueError("log_probs_and_values needs a shared backbone (a value head)")
        seen: list[torch.Tensor] = []

        def policy(ids: torch.Tensor, attention_mask: torch.Tensor, past: None = None) -> tuple:
            # The policy's logits, keeping the hidden states they came from for the head.
            seen.append(self.body.hidden_states(ids, attention_mask))
            return self.body.logits_from_hidden(seen[-1]), None

        log_probs, entropy = sequence_log_probs(
            policy,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            temperature=temperature,
            return_entropy=True,
        )
        values = self.values_from_hidden(seen[0], prompt_ids.shape[1])
        return log_probs, entropy, values * completion_mask.to(values.dtype)
