"""utils/inference/chat.py: tokenizer resolution, the tokenizer/model vocabulary check, the checkpoint's prompt-template
override, and ChatModel.stream/answer against the published implementation's greedy answers (cases.pt)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch

from cogvlm.utils.inference.chat import (REPLACEMENT_CHARACTER, ChatModel, ChatRequest, TokenizerMismatchError,
                                        resolve_tokenizer)
from cogvlm.utils.inference.generation import SamplingConfig
from cogvlm.utils.preprocessing.tokenizer import TOKENIZER_FILENAME, TokenizerNotFoundError
from conftest import checkpoint_copy

FIXTURE = Path(__file__).parent / "fixtures" / "cogvlm-tiny"
CHECKPOINT = FIXTURE / "checkpoint"
TOKENIZER = FIXTURE / "tokenizer.model"
IMAGE = FIXTURE / "image.png"

_CASES = torch.load(FIXTURE / "cases.pt", weights_only=False)
CASE_NAMES = list(_CASES["case_order"])
_SP = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))


def greedy_answer(name: str) -> str:
    """The published implementation's greedy answer: its new tokens, decoded and stripped."""
    return _SP.decode(_CASES["cases"][name]["generation"]["new_token_ids"]).strip()


@pytest.fixture(scope="module")
def chat() -> ChatModel:
    # 'chat' is asked for; the fixture checkpoint's text_processor_version ('chat_old') must win.
    return ChatModel.from_pretrained(CHECKPOINT, str(TOKENIZER), "chat")


@pytest.fixture(scope="module")
def image(chat):
    return chat.prepare_image(str(IMAGE))


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path):
    """Nothing here may touch the network or the user's Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    try:                                   # huggingface_hub reads its cache folder once, at import time
        import huggingface_hub.constants as hub_constants
    except ImportError:
        return
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


# --- resolve_tokenizer --------------------------------------------------------------------------------------


def test_resolve_tokenizer_explicit_existing_path_wins_over_checkpoint(tmp_path):
    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    shutil.copy(TOKENIZER, checkpoint_dir / TOKENIZER_FILENAME)
    explicit = tmp_path / "mine" / "my.model"
    explicit.parent.mkdir()
    shutil.copy(TOKENIZER, explicit)

    assert resolve_tokenizer(str(explicit), checkpoint_dir).path == explicit
    # a folder holding a tokenizer.model counts as an explicit path too
    assert resolve_tokenizer(str(checkpoint_dir), tmp_path / "elsewhere").path == checkpoint_dir / TOKENIZER_FILENAME


@pytest.mark.parametrize("local_tokenizer", [None, "lmsys/vicuna-7b-v1.5", "nobody/none", "missing/tokenizer.model"])
def test_resolve_tokenizer_falls_back_to_checkpoint_tokenizer(tmp_path, local_tokenizer):
    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    shutil.copy(TOKENIZER, checkpoint_dir / TOKENIZER_FILENAME)
    tokenizer = resolve_tokenizer(local_tokenizer, checkpoint_dir)
    assert tokenizer.path == checkpoint_dir / TOKENIZER_FILENAME
    assert tokenizer.vocab_size == 512


def test_resolve_tokenizer_uses_hugging_face_cache_last(tmp_path):
    import huggingface_hub.constants as hub_constants

    snapshot = Path(hub_constants.HF_HUB_CACHE) / "models--nobody--none" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    shutil.copy(TOKENIZER, snapshot / TOKENIZER_FILENAME)
    empty_checkpoint = tmp_path / "ckpt"
    empty_checkpoint.mkdir()

    assert resolve_tokenizer("nobody/none", empty_checkpoint).path == snapshot / TOKENIZER_FILENAME


@pytest.mark.parametrize("local_tokenizer", [
    "nobody/none",                  # hub-like id, not cached
    "./tokenizer.model",            # relative path with one slash: must not be mistaken for an (invalid) hub id
    "~/no-such-tokenizer.model",
    "/no/such/tokenizer.model",
    "tokenizer.model",
])
def test_resolve_tokenizer_not_found_names_the_argument(tmp_path, monkeypatch, local_tokenizer):
    monkeypatch.chdir(tmp_path)                 # so that a relative "tokenizer.model" does not exist
    monkeypatch.setenv("HOME", str(tmp_path))
    empty_checkpoint = tmp_path / "ckpt"
    empty_checkpoint.mkdir()
    with pytest.raises(TokenizerNotFoundError) as error:
        resolve_tokenizer(local_tokenizer, empty_checkpoint)
    message = str(error.value)
    assert local_tokenizer in message
    assert "--local_tokenizer" in message
    assert "\n" not in message


def test_resolve_tokenizer_not_found_without_argument(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="--local_tokenizer"):
        resolve_tokenizer(None, tmp_path)


def test_resolve_tokenizer_explicit_file_that_is_not_a_tokenizer(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_text("not a sentencepiece model")
    with pytest.raises(TokenizerNotFoundError, match="not a valid SentencePiece model"):
        resolve_tokenizer(str(bogus), tmp_path)


# --- vocabulary check and version override -------------------------------------------------------------------


def test_tokenizer_larger_than_model_vocabulary_is_rejected(chat):
    config = chat.config
    tokenizer = chat.tokenizer
    smaller = dataclasses.replace(config, language=dataclasses.replace(config.language,
                                                                       vocab_size=tokenizer.vocab_size - 1))
    with pytest.raises(TokenizerMismatchError) as error:
        ChatModel(chat.model, smaller, tokenizer, "chat")
    assert f"{tokenizer.vocab_size} tokens" in str(error.value)
    assert str(tokenizer.vocab_size - 1) in str(error.value)

    # equal sizes are fine, and so is a tokenizer smaller than the embedding (padded vocabularies)
    assert ChatModel(chat.model, config, tokenizer, "chat").tokenizer is tokenizer
    larger = dataclasses.replace(config, language=dataclasses.replace(config.language, vocab_size=1024))
    ChatModel(chat.model, larger, tokenizer, "chat")


def test_tokenizer_is_checked_before_the_weights_are_read(tmp_path):
    """The weights file is garbage: reading it fails. A tokenizer that does not fit the vocabulary of
    model_config.json is reported instead, so it was checked first; with a fitting one the garbage is the error."""
    import json

    from cogvlm.utils.checkpoint_io.loading import CheckpointError

    checkpoint = checkpoint_copy(tmp_path)
    (weights,) = checkpoint.glob("*/mp_rank_00_model_states.pt")
    weights.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        ChatModel.from_pretrained(checkpoint, str(TOKENIZER))

    config = json.loads((checkpoint / "model_config.json").read_text())
    config["vocab_size"] = 500                     # the tokenizer has 512 pieces
    (checkpoint / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerMismatchError, match="has 512 tokens but the model's vocabulary has 500"):
        ChatModel.from_pretrained(checkpoint, str(TOKENIZER))


def test_missing_tokenizer_is_reported_before_the_weights_are_read(tmp_path):
    checkpoint = checkpoint_copy(tmp_path, tokenizer=None)
    (weights,) = checkpoint.glob("*/mp_rank_00_model_states.pt")
    weights.write_bytes(b"not a torch file")
    with pytest.raises(TokenizerNotFoundError, match="no tokenizer found"):
        ChatModel.from_pretrained(checkpoint, str(tmp_path / "missing" / "tokenizer.model"))


def test_checkpoint_text_processor_version_overrides_argument(chat):
    assert chat.config.text_processor_version == "chat_old"
    assert chat.version == "chat_old"                    # 'chat' was asked for
    for asked in ("vqa", "base"):
        assert ChatModel.from_pretrained(CHECKPOINT, str(TOKENIZER), asked).version == "chat_old"


def test_version_argument_used_when_checkpoint_has_none(tmp_path):
    checkpoint = checkpoint_copy(tmp_path, text_processor_version=None)
    assert ChatModel.from_pretrained(checkpoint, None, "vqa").version == "vqa"
    assert ChatModel.from_pretrained(checkpoint, None).version == "chat"


# --- stream / answer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_stream_and_answer_match_published_greedy_answer(chat, image, name):
    case = _CASES["cases"][name]
    model = ChatModel(chat.model, chat.config, chat.tokenizer, case["version"])
    history = [tuple(turn) for turn in case["history"]]
    sampling = SamplingConfig(max_length=case["generation"]["max_length"], top_k=1)
    assert len(model.prompt(case["query"], history, image)) == case["input_ids"].shape[1]

    pieces = list(model.stream(case["query"], history, image, sampling))
    expected = greedy_answer(name)
    assert pieces and all(pieces)
    assert "".join(pieces).strip() == expected
    assert model.answer(case["query"], history, image, sampling) == expected
    if REPLACEMENT_CHARACTER not in expected:
        assert not any(REPLACEMENT_CHARACTER in piece for piece in pieces)


def fake_generation(monkeypatch, token_ids):
    """Make ChatModel.stream see `token_ids` as the generated tokens (stop token handling is generate()'s)."""
    calls = []

    def generate(model, prompt, sampling, stop_token_ids=(), **decoding):       # decoding: compile, prefill_dtype
        calls.append(stop_token_ids)
        yield from token_ids

    monkeypatch.setattr("cogvlm.utils.inference.chat.generate", generate)
    return calls


def test_stream_yields_whole_multibyte_characters(chat, image, monkeypatch):
    tokenizer = chat.tokenizer
    ids = tokenizer.encode("café 😀 ok")
    pieces_of_ids = [tokenizer.id_to_piece(i) for i in ids]
    assert "<0xC3>" in pieces_of_ids and "<0xF0>" in pieces_of_ids      # é and 😀 are byte-fallback tokens
    calls = fake_generation(monkeypatch, ids)

    pieces = list(chat.stream("Read the sign.", [], image, SamplingConfig(max_length=100)))
    assert calls == [(tokenizer.eos_token_id,)]
    assert "".join(pieces) == "café 😀 ok"
    assert not any(REPLACEMENT_CHARACTER in piece for piece in pieces)
    assert any(piece.endswith("é") for piece in pieces)
    assert any("😀" in piece for piece in pieces)
    assert len(pieces) >= 5                      # streamed as it goes, not all at the end
    assert chat.answer("Read the sign.", [], image, SamplingConfig(max_length=100)) == "café 😀 ok"


@pytest.mark.parametrize("tail", [
    "😀".encode()[:2],      # the answer was cut inside a character (max_length reached)
    b"\xa7",               # a stray continuation byte, then end of answer (the end token)
])
def test_answer_keeps_an_unfinished_byte_sequence_at_the_end(chat, image, monkeypatch, tail):
    """The published chat() returns the decoded tokens, U+FFFD included; nothing may be silently dropped."""
    tokenizer = chat.tokenizer
    ids = tokenizer.encode("ok") + [tokenizer._sp.piece_to_id(f"<0x{byte:02X}>") for byte in tail]
    fake_generation(monkeypatch, ids)
    expected = tokenizer.decode(ids).strip()
    assert expected.startswith("ok") and expected.endswith(REPLACEMENT_CHARACTER)

    pieces = list(chat.stream("q", [], image, SamplingConfig(max_length=100)))
    assert "".join(pieces) == expected
    assert "".join(pieces[:-1]) == "ok"           # the complete text was shown before the bytes came
    assert set(pieces[-1]) == {REPLACEMENT_CHARACTER}
    assert chat.answer("q", [], image, SamplingConfig(max_length=100)) == expected


def test_stream_drops_leading_whitespace_and_handles_no_tokens(chat, image, monkeypatch):
    tokenizer = chat.tokenizer
    ids = tokenizer.encode(" ") + tokenizer.encode(" ok go")
    fake_generation(monkeypatch, ids)
    pieces = list(chat.stream("q", [], image, SamplingConfig(max_length=100)))
    assert "".join(pieces) == "ok go" and not pieces[0].startswith(" ")

    fake_generation(monkeypatch, [])              # the model's first token is the end token
    assert list(chat.stream("q", [], image, SamplingConfig(max_length=100))) == []
    assert chat.answer("q", [], image, SamplingConfig(max_length=100)) == ""


def test_answer_errors_are_value_errors(chat, image):
    """The CLI relies on these being ValueErrors (one-line message, loop continues)."""
    with pytest.raises(ValueError, match="empty"):
        chat.answer("   ", [], image, SamplingConfig(max_length=100))
    with pytest.raises(ValueError, match="max_length 30"):
        chat.answer("How many boxes are in the image?", [], image, SamplingConfig(max_length=30))


# --- stream_batch / answer_batch ------------------------------------------------------------------------------


def test_answer_batch_gives_each_published_greedy_answer(chat, image):
    """Every case of one template, generated together, two slots at a time (the rest queued)."""
    by_version = {}
    for name in CASE_NAMES:
        by_version.setdefault(_CASES["cases"][name]["version"], []).append(name)
    for version, names in by_version.items():
        model = ChatModel(chat.model, chat.config, chat.tokenizer, version)
        requests = [ChatRequest(_CASES["cases"][n]["query"], [tuple(t) for t in _CASES["cases"][n]["history"]],
                                image, SamplingConfig(max_length=_CASES["cases"][n]["generation"]["max_length"]))
                    for n in names]
        answers = model.answer_batch(requests, num_slots=2)
        assert [a.text for a in answers] == [greedy_answer(n) for n in names], version
        assert all(a.error is None and a.finish_reason in ("stop", "length") for a in answers)


def test_stream_batch_streams_each_answer_and_a_bad_request_fails_alone(chat, image):
    case = _CASES["cases"]["chat_old_count"]
    good = ChatRequest(case["query"], (), image, SamplingConfig(max_length=case["generation"]["max_length"]))
    too_long = ChatRequest(case["query"], (), image, SamplingConfig(max_length=30))
    requests = [good, ChatRequest("   ", (), image), too_long, good]
    events = list(chat.stream_batch(requests))
    pieces = {i: [e.text for e in events if e.index == i and e.finish_reason is None] for i in range(4)}
    assert "".join(pieces[0]).strip() == "".join(pieces[3]).strip() == greedy_answer("chat_old_count")
    assert len(pieces[0]) >= 2 and all(pieces[0])                 # streamed in pieces, not at the end
    ends = {e.index: e for e in events if e.finish_reason is not None}
    assert ends[1].finish_reason == ends[2].finish_reason == "error"
    assert "empty" in ends[1].error and "max_length 30" in ends[2].error
    assert all("\n" not in ends[i].error for i in (1, 2)) and pieces[1] == pieces[2] == []
    answers = chat.answer_batch(requests)
    assert answers[0].text == answers[3].text == greedy_answer("chat_old_count") and answers[1].text == ""


# --- stream_requests ------------------------------------------------------------------------------------------


def test_stream_requests_takes_the_next_request_as_soon_as_a_slot_frees(chat, image):
    """Two slots: a one-token request and a longer one go in; the third is taken when the first ends, before the
    second ends (no waiting for a whole batch), and never more than two are in the engine."""
    case = _CASES["cases"]["chat_old_count"]
    long = ChatRequest(case["query"], (), image, SamplingConfig(max_length=case["generation"]["max_length"]))
    one_token = dataclasses.replace(long, sampling=SamplingConfig(max_length=len(chat.prompt(case["query"], (),
                                                                                             image)) + 1))
    requests = [one_token, long, long, ChatRequest("   ", (), image), long]
    log, in_engine, most = [], set(), 0

    def taken():
        nonlocal most
        for index, request in enumerate(requests):
            log.append(("take", index))
            in_engine.add(index)
            most = max(most, len(in_engine))
            yield request

    texts, reasons = {}, {}
    for event in chat.stream_requests(taken(), num_slots=2, max_length=case["generation"]["max_length"]):
        texts[event.index] = texts.get(event.index, "") + event.text
        if event.finish_reason is not None:
            log.append(("end", event.index))
            reasons[event.index] = event.finish_reason
            in_engine.discard(event.index)
    assert log.index(("end", 0)) < log.index(("take", 2)) < log.index(("end", 1))
    assert most == 2
    assert reasons[0] == "length" and len(texts[0].strip()) == 1
    assert [texts[i].strip() for i in (1, 2, 4)] == [greedy_answer("chat_old_count")] * 3
    assert reasons[3] == "error" and texts[3] == ""           # the empty query ended alone


def test_stream_requests_refuses_a_request_longer_than_its_cache_rows(chat, image):
    case = _CASES["cases"]["chat_old_count"]
    request = ChatRequest(case["query"], (), image, SamplingConfig(max_length=case["generation"]["max_length"]))
    events = list(chat.stream_requests(iter([request]), num_slots=1,
                                       max_length=case["generation"]["max_length"] - 1))
    assert [e.finish_reason for e in events] == ["error"] and "exceeds" in events[0].error
