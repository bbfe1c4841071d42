"""Supervised warm-up: completion-only loss, and a short run that teaches 1-2 digit addition."""

import torch

from driftlab.llm.model import TransformerConfig, TransformerLM
from driftlab.llm.sft import SFTConfig, completion_batch, completion_loss, greedy_accuracy, sft
from driftlab.llm.tasks import get_task
from driftlab.llm.tokenizer import CharTokenizer

TOK = CharTokenizer()


def test_loss_covers_completion_tokens_only():
    ids, mask, loss_mask = completion_batch(TOK, ["1+2=\n", "10+20=\n"], ["<answer>3</answer>"] * 2)
    # <bos> + prompt (5 or 7) + completion (3) + <eos>
    assert mask.sum(dim=1).tolist() == [10, 12]
    assert loss_mask.sum(dim=1).tolist() == [4, 4]
    assert TOK.decode(ids[0][loss_mask[0].bool()], skip_special=False) == "<answer>3</answer><eos>"
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=TOK.vocab_size, d_model=16, n_heads=2))
    loss = completion_loss(model, ids, mask, loss_mask)
    # An untrained model is close to uniform over the vocabulary.
    assert abs(loss.item() - torch.log(torch.tensor(24.0)).item()) < 0.3
    # Changing a prompt token's target does not enter the loss (only context changes).
    changed = loss_mask.clone()
    changed[:, :3] = 0
    assert completion_loss(model, ids, mask, changed).item() == loss.item()


def test_sft_teaches_addition():
    """250 steps of 32 reference solutions take 1-2 digit addition from 0 to about 0.6 greedy
    accuracy on held-out problems (0.61, 0.37, 0.28 for seeds 0, 1, 2: the threshold leaves
    room for other CPUs' rounding). Two layers: one layer learns to copy digits far less
    reliably (0.62, 0.35, 0.02)."""
    task = get_task("addition", digits=2)
    test = task.problems(200, "test")
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=TOK.vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=48
    )
    model = TransformerLM(config)
    assert greedy_accuracy(model, TOK, task, test) == 0.0
    sft(model, TOK, task, SFTConfig(steps=250, batch_size=32, lr=1e-2, seed=0))
    accuracy = greedy_accuracy(model, TOK, task, test)
    assert accuracy > 0.2, accuracy
