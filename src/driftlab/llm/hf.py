"""Hugging Face ``transformers`` causal LMs behind driftlab's policy and tokenizer interfaces.

:class:`HFPolicy` makes any ``AutoModelForCausalLM`` a policy
``policy(input_ids, attention_mask=None, past=None) -> (logits, new_past)``, the interface of
:class:`driftlab.llm.model.TransformerLM`, so :func:`driftlab.llm.generation.generate`,
:func:`~driftlab.llm.generation.sequence_log_probs` and :func:`driftlab.llm.sft.sft` work on
it unchanged. :class:`HFTokenizer` gives a Hugging Face tokenizer the protocol of
:class:`driftlab.llm.tokenizer.CharTokenizer`. Models are loaded from a local directory only
(``local_files_only``): nothing is downloaded.

Needs the optional extra: ``pip install 'driftlab[llm]'``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driftlab.llm.hf_decode import GPT2Decoder, StaticKVCache, gpt2_decoder
from driftlab.llm.tokenizer import CharTokenizer, pad_sequences


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "driftlab.llm.hf needs the transformers package: pip install 'driftlab[llm]'"
        ) from error
    return transformers


class HFPolicy(nn.Module):
    """A ``transformers`` causal LM as a driftlab policy.

    Position ids are computed from the attention mask (``cumsum(mask) - 1``, as
    :class:`~driftlab.llm.model.TransformerLM` does), so left-padded prompts are placed like
    unpadded ones; ``past`` is the model's own cache object, passed through untouched, or,
    for a GPT-2 decoded by :func:`~driftlab.llm.generation.generate`, the preallocated cache
    of :meth:`new_cache`.

    With ``fast_activations`` (the default) the model's ``NewGELUActivation`` modules
    (``gelu_new``: GPT-2, GPT-J, ...) are replaced by ``transformers``' ``GELUTanh``, the same
    function in one PyTorch kernel ("equivalent ... but much faster", equal to float
    rounding): five elementwise passes forward, and their backward, become one. Measured on
    a 4-layer width-128 GPT-2, a forward pass over 32 x 45 tokens took a third less time.
    """

    def __init__(self, model: nn.Module, fast_activations: bool = True) -> None:
        super().__init__()
        if fast_activations:
            _replace_new_gelu(model)
        self.model = model
        self._decoder: GPT2Decoder | None = None  # set by new_cache
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns).
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        length = input_ids.shape[1]
        if attention_mask is None:
            past_length = 0 if past is None else past.get_seq_length()
            attention_mask = torch.ones(
                input_ids.shape[0], past_length + length, dtype=torch.long, device=input_ids.device
            )
        # Padding positions get 1 (any valid index): their outputs are never read.
        positions = attention_mask.long().cumsum(dim=1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)[:, -length:]
        if isinstance(past, StaticKVCache):
            return self._decoder(input_ids, positions, attention_mask, past), past
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: past},
        )
        new_past = out.get("cache", None)
        return out.logits, out.get("past_key_values", None) if new_past is None else new_past

    def new_cache(self, rows: int, max_length: int) -> StaticKVCache | None:
        """An empty cache for decoding ``rows`` sequences of up to ``max_length`` tokens
        with :class:`~driftlab.llm.hf_decode.GPT2Decoder` (what
        :func:`~driftlab.llm.generation.generate` asks for), or ``None`` for models it does
        not cover: they decode through ``transformers``' own cache."""
        decoder = gpt2_decoder(self.model)
        if decoder is None:
            return None
        self._decoder = decoder
        return decoder.new_cache(rows, max_length)

    # Cache layers whose whole per-row state is keys and values, so dropping rows is exact
    # (a linear-attention or static layer keeps other state, or cannot shrink).
    _ROW_SELECTABLE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")

    @classmethod
    def select_cache_rows(cls, past: Any, index: torch.Tensor) -> Any:
        """The model's cache cut, in place, to the batch rows ``index`` (``[n]``, long) with
        ``DynamicCache.batch_select_indices``: how :func:`~driftlab.llm.generation.generate`
        drops finished rows while decoding. ``None`` for other cache types: generation then
        decodes every row, as before."""
        if isinstance(past, StaticKVCache):
            return past.select_rows(index)
        if type(past).__name__ != "DynamicCache":
            return None
        # Older transformers keep key/value lists, no layers: their selection is exact too.
        layers = getattr(past, "layers", ())
        if any(type(layer).__name__ not in cls._ROW_SELECTABLE_LAYERS for layer in layers):
            return None
        past.batch_select_indices(index)
        return past

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last layer's hidden states ``[batch, T, hidden]`` (the base model's
        ``last_hidden_state``, after the final norm in GPT-2 and Llama), the features a value
        head reads (PPO)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(dim=1) - 1).masked_fill(attention_mask == 0, 1)
        # The base model (``model.base_model``) skips the vocabulary projection we do not need.
        out = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        )
        return out.last_hidden_state

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's output embedding applied to :meth:`hidden_states`: ``forward``'s logits
        from one backbone pass that also feeds a value head (for models whose logits are that
        plain projection: GPT-2, Llama, Qwen; not those that soft-cap them)."""
        return self.model.get_output_embeddings()(hidden)


def _replace_new_gelu(model: nn.Module) -> None:
    """Every ``NewGELUActivation`` of ``model`` becomes a ``GELUTanh`` (in place)."""
    activations = _require_transformers().activations
    # Named ``PytorchGELUTanh`` in older transformers releases.
    fast = getattr(activations, "GELUTanh", None) or getattr(activations, "PytorchGELUTanh", None)
    if fast is None:
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "NewGELUActivation":
                setattr(parent, name, fast())


class HFTokenizer:
    """A Hugging Face tokenizer with the driftlab tokenizer protocol (``pad_id``, ``bos_id``,
    ``eos_id``, ``encode``, ``decode``, ``batch_encode``).

    A tokenizer without a padding token pads with its end-of-sequence token, as TRL does;
    masks, not token ids, tell padding apart. ``add_bos`` prepends the BOS token when the
    tokenizer has one.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no eos token; generation needs one to stop")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = tokenizer.bos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return [*ids, self.eos_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]], skip_special: bool = True
    ) -> list[str]:
        """:meth:`decode` of every sequence, in one call of the fast tokenizer."""
        return self.tokenizer.batch_decode(
            [list(ids) for ids in sequences], skip_special_tokens=skip_special
        )

    def batch_encode(
        self,
        texts: Sequence[str],
        padding_side: str = "left",
        add_bos: bool = True,
        add_eos: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_sequences(
            [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts],
            self.pad_id,
            padding_side,
        )


def load_hf_policy(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[HFPolicy, HFTokenizer]:
    """Load a causal LM and its tokenizer from the local directory ``path`` (never the hub)."""
    transformers = _require_transformers()
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {str(path)!r} (only local paths load)")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        # transformers 5 renamed ``torch_dtype`` to ``dtype``.
        major = int(transformers.__version__.split(".")[0])
        kwargs["dtype" if major >= 5 else "torch_dtype"] = dtype
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return HFPolicy(model.eval()), HFTokenizer(tokenizer)


def save_char_tokenizer(directory: str | Path, prepend_bos: bool = False) -> None:
    """Save :class:`~driftlab.llm.tokenizer.CharTokenizer`'s vocabulary as a Hugging Face fast
    tokenizer in ``directory``: one token per character, the answer tags one token each, the
    same ids. With ``prepend_bos`` the tokenizer's own call adds ``<bos>`` in front (what
    libraries that call ``tokenizer(prompts)`` need to see the prompts driftlab encodes)."""
    transformers = _require_transformers()
    import tokenizers

    char = CharTokenizer()
    vocab = {token: i for i, token in enumerate(char.vocab)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(r"<answer>|</answer>|[\s\S]"), behavior="isolated"
    )
    if prepend_bos:
        backend.post_processor = tokenizers.processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", char.bos_id)]
        )
    backend.decoder = tokenizers.decoders.Fuse()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(directory)


def char_gpt2(
    n_layer: int = 2, n_head: int = 2, n_embd: int = 32, n_positions: int = 64, dropout: float = 0.1
) -> nn.Module:
    """A GPT-2 (``transformers.GPT2LMHeadModel``) over CharTokenizer's vocabulary, initialised
    from torch's global generator (seed it first): a Hugging Face architecture for the
    built-in tasks without a download. Save it with ``save_pretrained`` beside
    :func:`save_char_tokenizer` and load both with :func:`load_hf_policy`."""
    transformers = _require_transformers()
    char = CharTokenizer()
    config = transformers.GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=char.vocab_size,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=char.bos_id,
        eos_token_id=char.eos_id,
        pad_token_id=char.pad_id,
    )
    return transformers.GPT2LMHeadModel(config)
