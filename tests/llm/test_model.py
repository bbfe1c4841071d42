"""The built-in transformer: config validation, causality, padding and cache consistency."""

import pytest
import torch

from driftlab.core.config import ConfigError
from driftlab.llm.model import TransformerConfig, TransformerLM, load_model, save_model

VOCAB = 24


def tiny(positions="rotary", norm="rms", tie=True, seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=VOCAB,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_seq_len=32,
        positions=positions,
        norm=norm,
        tie_embeddings=tie,
    )
    return TransformerLM(config).eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "n_heads": 4}, "divisible by n_heads=4"),
        ({"d_model": 6, "n_heads": 2}, "even head_dim"),
        ({"norm": "batch"}, "norm must be one of"),
        ({"positions": "alibi"}, "positions must be one of"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"n_layers": 0}, "n_layers must be >= 1"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TransformerConfig(vocab_size=VOCAB, **kwargs)


def test_tied_embeddings_share_the_weight():
    tied, untied = tiny(tie=True), tiny(tie=False)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == VOCAB * 16


@pytest.mark.parametrize(("positions", "norm"), [("rotary", "rms"), ("learned", "layer")])
def test_causal_and_padding_invariant(positions, norm):
    model = tiny(positions, norm)
    ids = torch.randint(3, VOCAB, (1, 10))
    logits, _ = model(ids)
    assert logits.shape == (1, 10, VOCAB)
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1 - 3) % (VOCAB - 3) + 3
    later, _ = model(changed)
    assert torch.allclose(logits[:, :7], later[:, :7], atol=1e-6)
    assert not torch.allclose(logits[:, 7:], later[:, 7:], atol=1e-4)
    # Three pads on the left change nothing: positions count real tokens only.
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 3), torch.ones(1, 10)), dim=1).long()
    padded_logits, _ = model(padded, attention_mask=mask)
    assert torch.allclose(padded_logits[:, 3:], logits, atol=1e-5)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_cache_matches_full_forward(positions):
    model = tiny(positions)
    ids = torch.randint(3, VOCAB, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0  # left padding in the second row
    full, _ = model(ids, attention_mask=mask)
    logits, past = model(ids[:, :5], attention_mask=mask[:, :5])
    steps = [logits]
    for t in range(5, 9):
        logits, past = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past=past)
        steps.append(logits)
    assert len(past) == 2 and past[0][0].shape == (2, 2, 9, 8)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_too_long_and_bad_mask_are_rejected():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        model(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


def test_save_and_load_round_trip(tmp_path):
    model = tiny(positions="learned", norm="layer", tie=False)
    save_model(tmp_path / "policy", model)
    loaded = load_model(tmp_path / "policy")
    assert loaded.config == model.config
    ids = torch.randint(3, VOCAB, (2, 6))
    assert torch.equal(loaded(ids)[0], model(ids)[0])
