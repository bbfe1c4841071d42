"""Group sampling: cached vs recomputed decoding, recorded vs teacher-forced log-probs,
top-p, grouping, EOS handling and seeding."""

import pytest
import torch

from driftlab.llm.generation import (
    MIN_DECODE_ROWS,
    _rows_to_keep,
    decode_completions,
    generate,
    select_cache_rows,
    sequence_log_probs,
    top_p_filter,
)
from driftlab.llm.model import TransformerConfig, TransformerLM
from driftlab.llm.tokenizer import CharTokenizer

TOK = CharTokenizer()
PROMPTS = ["12+3=\n", "1+2=\n", "99+99=\n"]


def tiny(positions="rotary", seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=TOK.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        positions=positions,
    )
    return TransformerLM(config).eval()


def sample(model, **kwargs):
    ids, mask = TOK.batch_encode(PROMPTS, "left")
    options = {"eos_id": TOK.eos_id, "pad_id": TOK.pad_id, "max_new_tokens": 24}
    return generate(model, ids, mask, **{**options, **kwargs})


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_cached_greedy_equals_full_recompute(positions):
    model = tiny(positions)
    cached = sample(model, temperature=0.0, group_size=2)
    full = sample(model, temperature=0.0, group_size=2, use_cache=False)
    assert torch.equal(cached.completion_ids, full.completion_ids)
    assert torch.equal(cached.completion_mask, full.completion_mask)
    assert torch.allclose(cached.log_probs, full.log_probs, atol=1e-5)
    # Greedy: every row picks its argmax, so a group's rows are identical.
    assert torch.equal(cached.completion_ids[0], cached.completion_ids[1])


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_recorded_log_probs_equal_teacher_forced(temperature):
    model = tiny()
    g = torch.Generator().manual_seed(3)
    rollout = sample(model, temperature=temperature, group_size=4, generator=g)
    # Greedy decoding records log-probs at temperature 1.
    recompute_t = temperature if temperature > 0 else 1.0
    log_probs = sequence_log_probs(
        model,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
        temperature=recompute_t,
    )
    assert rollout.completion_mask.sum() > 20
    assert (log_probs - rollout.log_probs).abs().max().item() < 1e-5
    assert (rollout.log_probs[rollout.completion_mask == 0] == 0).all()


def test_log_probs_are_of_the_tempered_distribution():
    model = tiny()
    rollout = sample(
        model, temperature=0.5, group_size=2, generator=torch.Generator().manual_seed(0)
    )
    args = (
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
    )
    at_one = sequence_log_probs(model, *args, temperature=1.0)
    assert (at_one - rollout.log_probs).abs().max().item() > 1e-2


def test_groups_are_consecutive_and_seeded():
    model = tiny()
    first = sample(model, group_size=3, generator=torch.Generator().manual_seed(7))
    again = sample(model, group_size=3, generator=torch.Generator().manual_seed(7))
    other = sample(model, group_size=3, generator=torch.Generator().manual_seed(8))
    assert first.completion_ids.shape[0] == 9 and first.group_size == 3
    ids, _ = TOK.batch_encode(PROMPTS, "left")
    assert torch.equal(first.prompt_ids, ids.repeat_interleave(3, dim=0))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.log_probs, again.log_probs)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    # Random weights: the samples within a group differ.
    assert not torch.equal(first.completion_ids[0], first.completion_ids[1])


def test_finished_rows_are_padded_and_masked():
    model = tiny()
    # Make <eos> the likeliest token after the first step by boosting its embedding norm.
    with torch.no_grad():
        model.embed.weight[TOK.eos_id] *= 40
    rollout = sample(model, group_size=2, generator=torch.Generator().manual_seed(0))
    for ids, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()
        if length < ids.shape[0]:
            assert ids[length - 1] == TOK.eos_id
            assert (ids[length:] == TOK.pad_id).all()
        assert (ids[: length - 1] != TOK.eos_id).all()
    assert (rollout.lengths < rollout.completion_ids.shape[1]).any()


def test_tiny_top_p_keeps_only_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.9, -1.0], [3.0, 0.0, 2.99, 0.0]])
    kept = torch.isfinite(top_p_filter(logits, 1e-9))
    assert kept.tolist() == [[False, True, False, False], [True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    model = tiny()
    nucleus = sample(model, top_p=1e-9, group_size=2, generator=torch.Generator().manual_seed(0))
    greedy = sample(model, temperature=0.0, group_size=2)
    assert torch.equal(nucleus.completion_ids, greedy.completion_ids)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_filter(probs.log(), 0.81))
    assert kept.tolist() == [[True, True, True, False]]


def test_validation():
    model = tiny()
    with pytest.raises(ValueError, match="top_p must be"):
        sample(model, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        sample(model, max_new_tokens=0)
    ids, mask = TOK.batch_encode(PROMPTS, "left")
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        sequence_log_probs(model, ids, mask, ids, mask, chunks=0)


class Recording(torch.nn.Module):
    """A policy that records the batch size of every call; ``cut=False`` hides the cache
    selection, so :func:`generate` decodes every row to the end (the uncompacted path)."""

    def __init__(self, policy, cut=True):
        super().__init__()
        self.policy, self.batch_sizes = policy, []
        if cut:
            self.select_cache_rows = policy.select_cache_rows

    def forward(self, input_ids, attention_mask=None, past=None):
        self.batch_sizes.append(input_ids.shape[0])
        return self.policy(input_ids, attention_mask=attention_mask, past=past)


def early_eos_model():
    """The tiny model with ``<eos>`` boosted: rows end at many different steps."""
    model = tiny()
    with torch.no_grad():
        model.embed.weight[TOK.eos_id] *= 6
    return model


def assert_same_rollout(first, second):
    for field in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "log_probs"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


@pytest.mark.parametrize("draw", ["uniforms", "generator", "greedy", "top_p"])
def test_dropping_finished_rows_changes_no_bit(draw):
    model, rows = early_eos_model(), len(PROMPTS) * 5

    def options():
        if draw == "uniforms":
            return {"uniforms": torch.rand(rows, 24, generator=torch.Generator().manual_seed(1))}
        if draw == "generator":
            return {"generator": torch.Generator().manual_seed(1)}
        if draw == "greedy":
            return {"temperature": 0.0}
        return {"top_p": 0.8, "temperature": 0.7, "generator": torch.Generator().manual_seed(1)}

    cut, whole = Recording(model), Recording(model, cut=False)
    compact = sample(cut, group_size=5, **options())
    full = sample(whole, group_size=5, **options())
    assert_same_rollout(compact, full)
    recomputed = sample(model, group_size=5, use_cache=False, **options())
    assert torch.equal(compact.completion_ids, recomputed.completion_ids)
    assert (compact.log_probs - recomputed.log_probs).abs().max().item() < 1e-5
    # Rows left the batch as they finished, never below MIN_DECODE_ROWS; the other path
    # decoded all 15 rows at every step.
    steps = compact.completion_ids.shape[1]
    assert set(whole.batch_sizes) == {rows} and len(cut.batch_sizes) == steps
    assert cut.batch_sizes == sorted(cut.batch_sizes, reverse=True)
    if draw != "greedy":  # greedy groups are 5 equal rows: here all of them end together
        assert cut.batch_sizes[-1] < rows
    unfinished = [int((compact.lengths >= t).sum()) for t in range(1, steps + 1)]
    assert all(n <= size for n, size in zip(unfinished, cut.batch_sizes, strict=True))
    assert min(cut.batch_sizes) >= MIN_DECODE_ROWS


def test_rows_to_keep():
    finished = torch.tensor([True, False, True, True, False, True, True])
    assert _rows_to_keep(finished).tolist() == [0, 1, 2, 4]  # topped up to 4 rows
    assert _rows_to_keep(torch.tensor([False] * 6)) is None
    assert _rows_to_keep(torch.tensor([False, True, False, False])) is None
    assert _rows_to_keep(torch.tensor([True, True, False])) is None  # already below 4
    assert _rows_to_keep(torch.tensor([True] * 3 + [False] * 5)).tolist() == [3, 4, 5, 6, 7]
    # Cuts wait until an eighth of the batch has finished.
    assert _rows_to_keep(torch.tensor([True] + [False] * 15)) is None
    assert _rows_to_keep(torch.tensor([True, True] + [False] * 14)).tolist() == list(range(2, 16))


def test_policies_without_row_selection_decode_every_row():
    model = early_eos_model()
    past = model(torch.zeros(6, 2, dtype=torch.long))[1]
    index = torch.tensor([1, 4])
    selected = select_cache_rows(model, past, index)
    for (keys, values), (kept_keys, kept_values) in zip(past, selected, strict=True):
        assert torch.equal(kept_keys, keys[index]) and torch.equal(kept_values, values[index])
    assert select_cache_rows(lambda *a, **k: model(*a, **k), past, index) is None


def test_hf_policy_drops_finished_rows_bit_identically():
    pytest.importorskip("transformers")
    from driftlab.llm.hf import HFPolicy, char_gpt2

    torch.manual_seed(0)
    model = char_gpt2(n_layer=2, n_head=2, n_embd=32, n_positions=64).eval()
    with torch.no_grad():
        model.transformer.wte.weight[TOK.eos_id] *= 8
    policy = HFPolicy(model)
    uniforms = torch.rand(len(PROMPTS) * 6, 24, generator=torch.Generator().manual_seed(2))
    cut, whole = Recording(policy), Recording(policy, cut=False)
    compact = sample(cut, group_size=6, uniforms=uniforms)
    assert_same_rollout(compact, sample(whole, group_size=6, uniforms=uniforms))
    recomputed = sample(policy, group_size=6, uniforms=uniforms, use_cache=False)
    assert torch.equal(compact.completion_ids, recomputed.completion_ids)
    assert (compact.log_probs - recomputed.log_probs).abs().max().item() < 1e-5
    assert min(cut.batch_sizes) < len(PROMPTS) * 6
    assert len(set(compact.lengths.tolist())) > 3
    # A cache that cannot drop rows (here a legacy tuple) is decoded whole.
    assert policy.select_cache_rows(((torch.zeros(2, 1),),), torch.tensor([0])) is None


def test_decode_completions_reads_masked_tokens_only():
    ids = torch.tensor([[*TOK.encode("12"), TOK.eos_id, TOK.pad_id], TOK.encode("3+45")])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    assert decode_completions(TOK, ids, mask) == ["12", "3+4"]
    model = early_eos_model()
    rollout = sample(model, group_size=4, generator=torch.Generator().manual_seed(0))
    texts = decode_completions(TOK, rollout.completion_ids, rollout.completion_mask)
    assert texts == [
        TOK.decode(row[mask.bool()])
        for row, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True)
    ]


@pytest.mark.parametrize("chunks", [2, 3, 40])
def test_length_chunked_log_probs_equal_one_pass(chunks):
    model = early_eos_model().train()
    rollout = sample(model, group_size=4, generator=torch.Generator().manual_seed(0))
    assert len(set(rollout.lengths.tolist())) > 3  # rows of many lengths: chunks differ
    args = (
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
    )
    weights = torch.linspace(-1.0, 1.0, rollout.completion_ids.shape[0])[:, None]
    results = []
    for k in (1, chunks):
        model.zero_grad()
        log_probs, entropy = sequence_log_probs(
            model, *args, temperature=0.7, return_entropy=True, chunks=k
        )
        (log_probs * weights).sum().backward()
        results.append((log_probs.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (one_lp, one_entropy, one_grads), (lp, entropy, grads) = results
    assert lp.shape == one_lp.shape and (lp[rollout.completion_mask == 0] == 0).all()
    assert (lp - one_lp).abs().max().item() < 1e-5
    assert (entropy - one_entropy).abs().max().item() < 1e-5
    for grad, one_grad in zip(grads, one_grads, strict=True):
        assert torch.allclose(grad, one_grad, atol=1e-6, rtol=1e-4)
