"""The Hugging Face adapter on a tiny random GPT-2 and a word-level tokenizer built here,
saved to a temporary directory and loaded back from that local path (nothing downloaded)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from driftlab.llm.generation import generate, sequence_log_probs  # noqa: E402
from driftlab.llm.hf import HFPolicy, char_gpt2, load_hf_policy, save_char_tokenizer  # noqa: E402
from driftlab.llm.tokenizer import CharTokenizer  # noqa: E402

CHAR = CharTokenizer()
PROMPTS = ["12+3=\n", "1+2=\n", "99+99=\n"]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A GPT-2 with 2 layers and our character vocabulary, as files in a local directory."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    save_char_tokenizer(path)
    torch.manual_seed(0)
    char_gpt2(n_layer=2, n_head=2, n_embd=32, n_positions=64).save_pretrained(path)
    return path


def test_tokenizer_matches_char_tokenizer(local_model):
    _, tok = load_hf_policy(local_model)
    text = "12+3=\n3+2+0=5\n<answer>15</answer>"
    assert tok.encode(text, add_bos=True, add_eos=True) == CHAR.encode(
        text, add_bos=True, add_eos=True
    )
    assert tok.decode(tok.encode(text, add_eos=True)) == text
    rows = [tok.encode(text, add_bos=True, add_eos=True), tok.encode("7"), []]
    assert tok.batch_decode(rows) == [tok.decode(row) for row in rows] == [text, "7", ""]
    ids, mask = tok.batch_encode(PROMPTS, "left")
    char_ids, char_mask = CHAR.batch_encode(PROMPTS, "left")
    assert torch.equal(ids, char_ids) and torch.equal(mask, char_mask)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_group_log_probs_equal_teacher_forced(local_model, temperature):
    policy, tok = load_hf_policy(local_model)
    assert isinstance(policy, HFPolicy)
    ids, mask = tok.batch_encode(PROMPTS, "left")
    rollout = generate(
        policy,
        ids,
        mask,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        max_new_tokens=16,
        group_size=3,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )
    assert rollout.completion_ids.shape[0] == 9
    assert rollout.completion_mask.sum() > 20
    log_probs = sequence_log_probs(
        policy,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
        temperature=temperature,
    )
    assert (log_probs - rollout.log_probs).abs().max().item() < 1e-5


def test_cached_greedy_equals_full_recompute(local_model):
    policy, tok = load_hf_policy(local_model)
    ids, mask = tok.batch_encode(PROMPTS, "left")
    options = {"eos_id": tok.eos_id, "pad_id": tok.pad_id, "max_new_tokens": 12}
    cached = generate(policy, ids, mask, temperature=0.0, **options)
    full = generate(policy, ids, mask, temperature=0.0, use_cache=False, **options)
    assert torch.equal(cached.completion_ids, full.completion_ids)
    # Left padding does not move a prompt: the padded row's logits equal the unpadded one's.
    alone_ids, alone_mask = tok.batch_encode(PROMPTS[1:2], "left")
    alone, _ = policy(alone_ids, attention_mask=alone_mask)
    padded, _ = policy(ids, attention_mask=mask)
    assert torch.allclose(alone[0, -1], padded[1, -1], atol=1e-5)


def test_only_local_directories_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="only local paths"):
        load_hf_policy(tmp_path / "missing")


def test_dtype_is_applied(local_model):
    policy, _ = load_hf_policy(local_model, dtype=torch.float64)
    assert next(policy.parameters()).dtype == torch.float64
