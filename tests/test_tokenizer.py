"""Tests for cogvlm.utils.preprocessing.tokenizer against the tiny fixture tokenizer (vocab 512)."""
from pathlib import Path

import pytest
import torch

from cogvlm.utils.preprocessing.tokenizer import LlamaTokenizer, TokenIdError, TokenizerNotFoundError

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "cogvlm-tiny"
TOKENIZER_FILE = FIXTURE_DIR / "tokenizer.model"
FIXTURE_VOCAB_SIZE = 512
IMAGE_LENGTH = 16
# bos + boi + patches + eoi: where the text after the image slot starts.
TEXT_AFTER_IMAGE_START = 1 + IMAGE_LENGTH + 2


@pytest.fixture(scope="module")
def tokenizer():
    return LlamaTokenizer.from_path(TOKENIZER_FILE)


@pytest.fixture(scope="module")
def cases():
    return torch.load(FIXTURE_DIR / "cases.pt", weights_only=False)["cases"]


def test_from_path_accepts_file_and_folder():
    from_file = LlamaTokenizer.from_path(TOKENIZER_FILE)
    from_folder = LlamaTokenizer.from_path(str(FIXTURE_DIR))
    assert from_file.vocab_size == from_folder.vocab_size == FIXTURE_VOCAB_SIZE
    assert from_file.path == from_folder.path == TOKENIZER_FILE


@pytest.mark.parametrize("kind", ["missing", "empty_folder", "garbage_file", "garbage_in_folder"])
def test_from_path_errors_name_the_path(tmp_path, kind):
    if kind == "missing":
        target = tmp_path / "does-not-exist"
    elif kind == "empty_folder":
        target = tmp_path
    else:
        garbage = tmp_path / "tokenizer.model"
        garbage.write_text("this is not a sentencepiece model")
        target = tmp_path if kind == "garbage_in_folder" else garbage
    with pytest.raises(TokenizerNotFoundError) as info:
        LlamaTokenizer.from_path(target)
    message = str(info.value)
    assert str(target) in message
    assert "--local_tokenizer" in message and "vicuna" in message
    assert "\n" not in message


def test_special_ids(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    # The fixture model defines no pad piece, so padding falls back to <unk>.
    assert tokenizer.pad_token_id == tokenizer.unk_token_id == 0


def test_encode_matches_fixture_pieces(tokenizer, cases):
    case = cases["chat_describe"]
    text_after_image = case["prompt"].split("<EOI>", 1)[1]
    ids = tokenizer.encode(text_after_image)
    assert ids == case["input_ids"][0, TEXT_AFTER_IMAGE_START:].tolist()
    assert [tokenizer.id_to_piece(i) for i in ids] == case["pieces"][TEXT_AFTER_IMAGE_START:]
    # The segment starts with a space: sentencepiece keeps a lone leading '▁'.
    assert tokenizer.id_to_piece(ids[0]) == "▁"


def test_encode_adds_no_special_tokens(tokenizer):
    ids = tokenizer.encode("Describe the image.")
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids
    assert tokenizer.encode("") == []


def test_decode_round_trip(tokenizer):
    text = "Where is the red box? It is at [[120,340,560,780]]."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_skips_control_tokens_and_accepts_tensors(tokenizer):
    ids = tokenizer.encode("the image")
    wrapped = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(torch.tensor(wrapped)) == "the image"


@pytest.mark.parametrize("bad_id", [-1, FIXTURE_VOCAB_SIZE, 10**6])
def test_decode_rejects_out_of_vocab_ids(tokenizer, bad_id):
    with pytest.raises(TokenIdError, match=str(bad_id)):
        tokenizer.decode([1, bad_id])
