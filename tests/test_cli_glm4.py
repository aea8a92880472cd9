"""GLM-4V-9B and CogAgent-9B end to end, as users run them: the fixtures' HF folders (weights regenerated from the
recipe, config.json, the real GLM-4 tokenizer.model) converted with utils/convert_hf_checkpoint.py, then
basic_demo/cli_demo_sat.py and ChatModel answer every fixture case with the published greedy text. `--max_length`
counts the prompt with its image tokens: the fixtures' 8 new tokens need exactly the expanded length + 8."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import HANG_TIMEOUT
from glm4v_reference import (COGAGENT9B_TINY, GLM4_TOKENIZER, GLM4V_TINY, convert_to_sat, regenerate_hf_weights,
                             write_hf_folder)

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = GLM4V_TINY / "image.png"
NEW_TOKENS = 8          # greedy tokens each fixture case generated


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{fixture folder name: SAT checkpoint}, each converted from its HF folder by the converter's command line."""
    return {fixture.name: convert_to_sat(write_hf_folder(fixture, tmp_path_factory.mktemp(f"hf-{fixture.name}")),
                                         tmp_path_factory.mktemp(f"sat-{fixture.name}") / "checkpoint", HANG_TIMEOUT)
            for fixture in (GLM4V_TINY, COGAGENT9B_TINY)}


@pytest.fixture(scope="module")
def cases():
    return {fixture.name: torch.load(fixture / "cases.pt", weights_only=False)["cases"]
            for fixture in (GLM4V_TINY, COGAGENT9B_TINY)}


@pytest.fixture(scope="module")
def chats(checkpoints):
    from cogvlm.utils.inference.chat import ChatModel

    return {name: ChatModel.from_pretrained(path) for name, path in checkpoints.items()}


@pytest.fixture
def cli():
    spec = importlib.util.spec_from_file_location("cli_demo_sat_glm4_e2e", REPO_ROOT / "basic_demo" / "cli_demo_sat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(cli, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))

    def run(argv, stdin=""):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def published_answer(case, row: int = 0, tokens: int = NEW_TOKENS) -> str:
    """The published greedy answer as the CLI shows it: the new tokens decoded, stripped."""
    from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer

    ids = case["generation"]["new_token_ids"][row][:tokens].tolist()
    return GLM4Tokenizer.from_path(GLM4_TOKENIZER).decode(ids, skip_special_tokens=True).strip()


def greedy(max_length: int):
    from cogvlm.utils.inference.generation import SamplingConfig

    return SamplingConfig(max_length=max_length, top_k=1)


@pytest.mark.parametrize("fixture", ["glm4v-tiny", "cogagent9b-tiny"])
@pytest.mark.parametrize("name", ["image_question", "non_ascii"])
def test_one_shot_answers_are_the_published_greedy_answers(run, checkpoints, cases, fixture, name):
    case = cases[fixture][name]
    query = case["conversation"][0]["content"]
    code, out, err = run(["--from_pretrained", checkpoints[fixture], "--image", IMAGE, "--query", query,
                          "--max_length", case["expanded_length"] + NEW_TOKENS])
    assert code == 0, err
    assert out == published_answer(case) + "\n"


def test_max_length_counts_the_image_tokens(run, checkpoints, cases):
    """One token less than the expanded prompt + 8 leaves 7 tokens; the unexpanded prompt is 15 tokens shorter."""
    case = cases["glm4v-tiny"]["image_question"]
    assert case["expanded_length"] == case["input_ids"].shape[1] + 15
    code, out, err = run(["--from_pretrained", checkpoints["glm4v-tiny"], "--image", IMAGE, "--query",
                          case["conversation"][0]["content"], "--max_length", case["expanded_length"] + NEW_TOKENS - 1])
    assert code == 0, err
    assert out == published_answer(case, tokens=NEW_TOKENS - 1) + "\n"


def test_a_piped_session_answers_and_streams(run, checkpoints, cases):
    case = cases["cogagent9b-tiny"]["image_question"]
    query = case["conversation"][0]["content"]
    stdin = f"{IMAGE}\n{query}\nstop\n"
    for extra in ([], ["--stream_chat"]):
        code, out, err = run(["--from_pretrained", checkpoints["cogagent9b-tiny"], "--max_length",
                              case["expanded_length"] + NEW_TOKENS, *extra], stdin)
        assert code == 0, err
        assert f"Model: {published_answer(case)}\n" in out
        assert "Traceback" not in err


@pytest.mark.parametrize("fixture", ["glm4v-tiny", "cogagent9b-tiny"])
def test_one_shot_without_an_image_is_the_published_text_only_answer(run, checkpoints, cases, fixture, tmp_path):
    """--query without --image: the 9B models answer text-only; the checkpoint is also found by name under
    $SAT_HOME (the run fixture's), as users name the published ones, before anything heavy is loaded."""
    case = cases[fixture]["text_only"]
    query = case["conversation"][0]["content"]
    (tmp_path / "sat_home").mkdir()
    (tmp_path / "sat_home" / "my-9b").symlink_to(checkpoints[fixture])
    for checkpoint in (checkpoints[fixture], "my-9b"):
        code, out, err = run(["--from_pretrained", checkpoint, "--query", query,
                              "--max_length", case["expanded_length"] + NEW_TOKENS])
        assert code == 0, err
        assert out == published_answer(case) + "\n"


def test_an_empty_image_line_starts_a_text_only_chat(run, checkpoints, cases):
    case = cases["cogagent9b-tiny"]["text_only"]
    query = case["conversation"][0]["content"]
    for extra in ([], ["--stream_chat"]):
        code, out, err = run(["--from_pretrained", checkpoints["cogagent9b-tiny"], "--max_length",
                              case["expanded_length"] + NEW_TOKENS, *extra], f"\n{query}\nclear\nstop\n")
        assert code == 0, err
        assert f"Model: {published_answer(case)}\n" in out
        # the prompt offers the text-only chat; "clear" goes back to it
        assert out.count("Please enter the image path or URL (press Enter for plain text chat): ") == 2
        assert "Error" not in err and "Traceback" not in err


@pytest.mark.parametrize("fixture", ["glm4v-tiny", "cogagent9b-tiny"])
def test_history_text_only_and_agent_queries_through_chat_model(chats, cases, fixture):
    chat = chats[fixture]
    image = chat.prepare_image(str(IMAGE))
    assert chat.version == "glm4"
    history_case = cases[fixture]["image_history"]
    turns = [message["content"] for message in history_case["conversation"]]
    history = list(zip(turns[:-1:2], turns[1:-1:2]))
    assert chat.answer(turns[-1], history, image, greedy(history_case["expanded_length"] + NEW_TOKENS)) == \
        published_answer(history_case)
    text_case = cases[fixture]["text_only"]
    assert chat.answer(text_case["conversation"][0]["content"], [], None,
                       greedy(text_case["expanded_length"] + NEW_TOKENS)) == published_answer(text_case)
    if fixture == "cogagent9b-tiny":
        agent_case = cases[fixture]["agent_query"]
        assert chat.answer(agent_case["conversation"][0]["content"], [], image,
                           greedy(agent_case["expanded_length"] + NEW_TOKENS)) == published_answer(agent_case)


def test_the_left_padded_batch_case_row_by_row_through_the_engine(chats, cases):
    from cogvlm.utils.inference.chat import ChatRequest

    chat = chats["glm4v-tiny"]
    case = cases["glm4v-tiny"]["batch_left_pad"]
    with Image.open(IMAGE) as picture:
        images = [chat.preprocess(picture.convert("RGB")),
                  chat.preprocess(picture.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    lengths = case["model_attention_mask"].sum(dim=1).tolist()            # each row's expanded prompt
    requests = [ChatRequest(conversation[0]["content"], (), image, greedy(length + NEW_TOKENS))
                for conversation, image, length in zip(case["conversation"], images, lengths)]
    answers = chat.answer_batch(requests)
    assert [answer.text for answer in answers] == [published_answer(case, row) for row in range(2)]


@pytest.mark.slow
def test_under_torchrun_two_ranks_give_the_published_answer_once(checkpoints, cases):
    from conftest import run_under_torchrun

    case = cases["glm4v-tiny"]["image_question"]
    result = run_under_torchrun(REPO_ROOT / "basic_demo" / "cli_demo_sat.py", "--from_pretrained",
                                checkpoints["glm4v-tiny"], "--image", IMAGE, "--query",
                                case["conversation"][0]["content"], "--max_length",
                                case["expanded_length"] + NEW_TOKENS)
    assert result.stdout.decode() == published_answer(case) + "\n"


def test_a_checkpoint_split_for_two_ranks_converts_back_to_the_published_hf_weights(checkpoints, tmp_path):
    """SAT -> HF merges the model-parallel shards first: the HF folder equals the recipe's weights bit for bit."""
    from cogvlm.utils.checkpoint_io import sat_layout
    from cogvlm.utils.checkpoint_io.hf_conversion import main as convert
    from cogvlm.utils.checkpoint_io.loading import build_model, config_from_model_config, read_model_config
    from cogvlm.utils.parallel.model_parallel import shard, split_plan

    source = checkpoints["glm4v-tiny"]
    model_config = read_model_config(source)
    plan = split_plan(build_model(config_from_model_config(model_config)))
    full = sat_layout.read_state_dict(sat_layout.states_file(source))
    split = tmp_path / "mp2"
    for rank in range(2):
        sat_layout.write_state_dict(split, shard(full, plan, rank, 2), mp_rank=rank)
    sat_layout.write_config(split, {**model_config, "model_parallel_size": 2})
    sat_layout.write_tracker(split)
    rank_1 = sat_layout.read_state_dict(sat_layout.states_file(split, 1))
    assert any(rank_1[key].shape != full[key].shape for key in full)           # really split
    assert convert(["--hf", str(tmp_path / "hf"), "--sat", str(split), "--to-hf"]) == 0
    from safetensors.torch import load_file

    back = load_file(tmp_path / "hf" / "model.safetensors")
    published = regenerate_hf_weights(GLM4V_TINY)
    assert set(back) == set(published)
    assert all(torch.equal(back[name], tensor) for name, tensor in published.items())
