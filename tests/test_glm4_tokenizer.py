"""Tests for cogvlm.utils.preprocessing.glm4_tokenizer against the real GLM-4 tokenizer.model (tiktoken, 151,329
ranks) and the published tokenizer's outputs stored in the glm4v-tiny / cogagent9b-tiny fixtures."""
import json
from pathlib import Path

import pytest

from conftest import one_line_error
from cogvlm.utils.preprocessing.glm4_tokenizer import SPECIAL_TOKENS, GLM4Tokenizer
from cogvlm.utils.preprocessing.tokenizer import TokenIdError, TokenizerNotFoundError

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_FILE = FIXTURES / "glm4-tokenizer" / "tokenizer.model"
CASE_FILES = [FIXTURES / "glm4v-tiny" / "template_cases.json", FIXTURES / "cogagent9b-tiny" / "template_cases.json"]
# Published facts (glm4-tokenizer README, tokenizer_config.json and config.json of THUDM/glm-4v-9b).
PUBLISHED_SPECIAL_IDS = {"<|endoftext|>": 151329, "[MASK]": 151330, "[gMASK]": 151331, "[sMASK]": 151332,
                         "<sop>": 151333, "<eop>": 151334, "<|system|>": 151335, "<|user|>": 151336,
                         "<|assistant|>": 151337, "<|observation|>": 151338, "<|begin_of_image|>": 151339,
                         "<|end_of_image|>": 151340, "<|begin_of_video|>": 151341, "<|end_of_video|>": 151342}
PUBLISHED_STOP_IDS = (151329, 151336, 151338)
PUBLISHED_VOCAB_SIZE = 151343
PADDED_VOCAB_SIZE = 151552
# Encodings checked with the published tokenizer (fixture README; vLLM PR #5358 for the first).
PUBLISHED_ENCODINGS = {
    "Describe these two picture.": [74198, 1493, 1378, 6802, 13],
    "\n": [198],
    "<<一般操作>>": [2442, 99385, 99812, 2452],
    "<<敏感操作>>": [2442, 103096, 99812, 2452],
    "Grounded Operation:": [30593, 291, 16713, 25],
    "🙂": [9281, 18504],
    "这个按钮": [98741, 104957],
    "Hello <|user|> world": [9703, 81959, 872, 91, 29, 1879],      # special-token text stays ordinary text
}


@pytest.fixture(scope="module")
def tokenizer():
    return GLM4Tokenizer.from_path(TOKENIZER_FILE)


def all_cases():
    for path in CASE_FILES:
        for name, case in json.loads(path.read_text())["cases"].items():
            yield pytest.param(case, id=f"{path.parent.name}-{name}")


def test_special_tokens_and_stop_ids_are_the_published_ones(tokenizer):
    assert {token: tokenizer.token_id(token) for token in SPECIAL_TOKENS} == PUBLISHED_SPECIAL_IDS
    assert tokenizer.stop_token_ids == PUBLISHED_STOP_IDS
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 151329
    assert tokenizer.vocab_size == PUBLISHED_VOCAB_SIZE
    for path in CASE_FILES:
        stored = json.loads(path.read_text())
        assert stored["special_token_ids"] == PUBLISHED_SPECIAL_IDS
        assert tuple(stored["stop_token_ids"]) == PUBLISHED_STOP_IDS


@pytest.mark.parametrize("text, ids", PUBLISHED_ENCODINGS.items())
def test_encode_gives_the_published_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids
    assert tokenizer.decode(ids) == text


def test_from_path_accepts_the_file_and_its_folder(tokenizer):
    from_folder = GLM4Tokenizer.from_path(TOKENIZER_FILE.parent)
    assert from_folder.path == tokenizer.path == TOKENIZER_FILE
    assert from_folder.encode("Grounded Operation:") == PUBLISHED_ENCODINGS["Grounded Operation:"]


@pytest.mark.parametrize("case", all_cases())
def test_decoding_the_greedy_tokens_gives_the_published_text(tokenizer, case):
    """What the published demos show: decode(new ids, skip_special_tokens=True), incl. U+FFFD for a character
    cut between tokens and non-Latin scripts."""
    for ids, text in zip(case["new_token_ids"], case["text"]):
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("case", all_cases())
def test_decoding_a_prompt_gives_the_published_prompt_string(tokenizer, case):
    """The prompt string the fixture stores is decode(non-pad ids, no spaces around special tokens)."""
    for ids, mask, prompt in zip(case["input_ids"], case["attention_mask"], case["prompt_strings"]):
        real = [token for token, keep in zip(ids, mask) if keep]
        assert tokenizer.decode(real, skip_special_tokens=False) == prompt


def test_decode_skips_or_shows_special_tokens_and_padding_rows_are_empty(tokenizer):
    ids = [151331, 151333, 151336] + tokenizer.encode("\nHi") + [151337, PADDED_VOCAB_SIZE - 1]
    assert tokenizer.decode(ids, skip_special_tokens=False) == "[gMASK]<sop><|user|>\nHi<|assistant|>"
    assert tokenizer.decode(ids) == "\nHi"
    assert tokenizer.decode([PUBLISHED_VOCAB_SIZE, PADDED_VOCAB_SIZE - 1]) == ""


def test_a_character_split_between_tokens_decodes_whole_once_complete(tokenizer):
    first, second = PUBLISHED_ENCODINGS["🙂"]
    assert tokenizer.decode([first]) == "\ufffd"
    assert tokenizer.decode([first, second]) == "🙂"


def test_negative_ids_are_a_one_line_error(tokenizer):
    one_line_error(TokenIdError, lambda: tokenizer.decode([5, -1]), "-1")


@pytest.mark.parametrize("content", [None, b"", b"not base64 at all\n", b"QQ== 0\nQg== 5\n"])
def test_a_file_that_is_not_a_tiktoken_vocabulary_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    if content is not None:
        path.write_bytes(content)
    target = path if content is not None else tmp_path / "missing.model"
    one_line_error(TokenizerNotFoundError, lambda: GLM4Tokenizer.from_path(target), str(target), "--local_tokenizer")


def test_a_sentencepiece_model_is_refused_with_a_one_line_error():
    """The CogVLM tokenizer passed to a GLM-4 checkpoint: named, not a crash inside tiktoken."""
    sentencepiece_file = FIXTURES / "cogvlm-tiny" / "tokenizer.model"
    one_line_error(TokenizerNotFoundError, lambda: GLM4Tokenizer.from_path(sentencepiece_file), "tiktoken",
                   str(sentencepiece_file))
