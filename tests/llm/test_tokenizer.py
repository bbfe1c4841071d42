"""The character tokenizer: fixed vocabulary, round trips, padding on either side."""

import pytest
import torch

from driftlab.llm.tokenizer import ALPHABET, CharTokenizer


def test_vocabulary_is_fixed_and_ordered():
    tok = CharTokenizer()
    assert tok.vocab[:5] == ("<pad>", "<bos>", "<eos>", "<answer>", "</answer>")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 5 + len(ALPHABET) == 24
    assert CharTokenizer().token_to_id == tok.token_to_id


def test_round_trip_with_tags_as_single_tokens():
    tok = CharTokenizer()
    text = "12+(3*4)/5-6=\n7+5+0=12\n<answer>132</answer>"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert len(ids) == len(text) - len("<answer></answer>") + 2 + 2
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=False) == "<bos>" + text + "<eos>"


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="'x' at position 1"):
        CharTokenizer().encode("1x2")


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_encode_pads_and_masks(side):
    tok = CharTokenizer()
    ids, mask = tok.batch_encode(["1+2=", "10+20="], padding_side=side)
    assert ids.shape == mask.shape == (2, 7)
    assert mask.sum(dim=1).tolist() == [5, 7]
    short = ids[0][mask[0].bool()]
    assert tok.decode(short) == "1+2=" and short[0].item() == tok.bos_id
    pads = ids[0][~mask[0].bool()]
    assert torch.equal(pads, torch.tensor([tok.pad_id, tok.pad_id]))
    expected = [0, 0, 1, 1, 1, 1, 1] if side == "left" else [1, 1, 1, 1, 1, 0, 0]
    assert mask[0].tolist() == expected


def test_bad_padding_side_is_rejected():
    with pytest.raises(ValueError, match="padding_side"):
        CharTokenizer().batch_encode(["1"], padding_side="middle")
