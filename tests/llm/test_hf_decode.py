"""GPT-2 decoding with the preallocated cache against ``transformers``' own forward pass, and
the tanh-GELU swap of HFPolicy."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from driftlab.llm.generation import generate, new_cache  # noqa: E402
from driftlab.llm.hf import HFPolicy, char_gpt2  # noqa: E402
from driftlab.llm.hf_decode import StaticKVCache, gpt2_decoder  # noqa: E402


def _model(seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = char_gpt2(n_layer=2, n_head=2, n_embd=32, n_positions=64).eval()
    for key, value in config.items():
        setattr(model.config, key, value)
    return model


def _prompts(rows: int = 5, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts: row r has r padding positions."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 20, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(rows):
        mask[r, :r] = 0
        ids[r, :r] = 0
    return ids, mask


def _hf_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("inverse_layer_scaling", [False, True])
def test_prefill_and_decoding_equal_the_model(inverse_layer_scaling):
    model = _model(scale_attn_by_inverse_layer_idx=inverse_layer_scaling)
    # Re-create the attention modules' scaling from the edited config, as loading would.
    model = type(model)(model.config).eval() if inverse_layer_scaling else model
    policy = HFPolicy(model)
    ids, mask = _prompts()
    cache = policy.new_cache(ids.shape[0], ids.shape[1] + 4)
    assert isinstance(cache, StaticKVCache)
    logits, past = policy(ids, attention_mask=mask, past=cache)
    assert past is cache and cache.length == ids.shape[1]
    assert logits.shape == (5, 1, model.config.vocab_size)  # the last position only
    torch.testing.assert_close(logits[:, 0], _hf_logits(model, ids, mask)[:, -1])
    # Three more tokens one at a time (the second is padding for row 0: finished there).
    for step, token in enumerate([[5], [7], [9]]):
        new = torch.tensor(token * 5)[:, None]
        column = torch.ones(5, 1, dtype=torch.long)
        if step == 1:
            column[0] = 0
        ids, mask = torch.cat((ids, new), 1), torch.cat((mask, column), 1)
        logits, past = policy(new, attention_mask=mask, past=past)
        expected = _hf_logits(model, ids, mask)[:, -1]
        # Row 0's padding query at step 1 sees only real keys in the model's pass (and
        # itself here): its output is never read; compare the rows that read theirs.
        rows = slice(None) if step != 1 else slice(1, None)
        torch.testing.assert_close(logits[rows, 0], expected[rows])


def test_generate_with_the_static_cache_equals_the_model_cache():
    model = _model()
    with torch.no_grad():
        model.transformer.wte.weight[2] *= 6  # <eos> likely: rows finish and leave the batch
    policy = HFPolicy(model)
    ids, mask = _prompts(4)
    uniforms = torch.rand(12, 20, generator=torch.Generator().manual_seed(3))
    kwargs = {"eos_id": 2, "pad_id": 0, "max_new_tokens": 20, "group_size": 3}
    fast = generate(policy, ids, mask, uniforms=uniforms, **kwargs)
    assert isinstance(new_cache(policy, 12, 27), StaticKVCache)
    policy.new_cache = lambda rows, max_length: None  # transformers' DynamicCache instead
    reference = generate(policy, ids, mask, uniforms=uniforms, **kwargs)
    assert torch.equal(fast.completion_ids, reference.completion_ids)
    assert torch.equal(fast.completion_mask, reference.completion_mask)
    torch.testing.assert_close(fast.log_probs, reference.log_probs, rtol=0, atol=1e-5)
    assert len(set(fast.lengths.tolist())) > 2


def test_cache_rows_are_selected_and_capacity_is_checked():
    cache = StaticKVCache(1, 3, 2, 4, 2, torch.float32, torch.device("cpu"))
    cache.keys[0][:, :, :2] = torch.arange(3.0)[:, None, None, None]
    cache.length = 2
    HFPolicy.select_cache_rows(cache, torch.tensor([2, 0]))
    assert cache.keys[0].shape == (2, 2, 4, 2)
    assert cache.keys[0][:, :, :2].flatten(1).tolist() == [[2.0] * 8, [0.0] * 8]
    policy = HFPolicy(_model())
    small = policy.new_cache(2, 3)
    with pytest.raises(ValueError, match="holds 3 positions; 4 needed"):
        policy(torch.zeros(2, 4, dtype=torch.long), past=small)


def test_unsupported_configurations_keep_the_model_cache():
    assert gpt2_decoder(_model()) is not None
    assert gpt2_decoder(_model().train()) is None  # dropout 0.1 active
    assert gpt2_decoder(_model(reorder_and_upcast_attn=True)) is None
    assert gpt2_decoder(_model(scale_attn_weights=False)) is None
    config = transformers.LlamaConfig(
        vocab_size=24,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    llama = HFPolicy(transformers.LlamaForCausalLM(config).eval())
    assert llama.new_cache(2, 8) is None


def test_tanh_gelu_swap_keeps_the_function():
    model = _model()
    ids, mask = _prompts()
    expected = _hf_logits(model, ids, mask)
    kept = HFPolicy(_model(), fast_activations=False)
    assert type(kept.model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    policy = HFPolicy(model)
    assert all(type(b.mlp.act).__name__ != "NewGELUActivation" for b in model.transformer.h)
    torch.testing.assert_close(_hf_logits(policy.model, ids, mask), expected)
