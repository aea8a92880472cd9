"""Fine-tuning GLM-4V-9B / CogAgent-9B (issue 13 item 6) on the tiny CogAgent-9B fixture: training examples from
the GLM-4 processor, the published agent data format, LoRA on configured targets and its merge, and the whole
finetune_cogagent9b_lora.sh -> utils/merge_model.py -> cli_demo_sat.py flow on the CPU."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import HANG_TIMEOUT, one_line_error
from glm4v_reference import COGAGENT9B_TINY, build_fixture_model

from cogvlm.models.inputs import IGNORE_INDEX
from cogvlm.utils.training.data import SkippedDataWarning

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "glm4-tokenizer" / "tokenizer.model"
NEWLINE_ID, USER_ID = 198, 151336          # "\n" and <|user|> of the published GLM-4 tokenizer (notes section 2.5)
ANSWER = "Action: Click OK.\nGrounded Operation:CLICK(box=[[1,2,3,4]], element_info='OK')\n<<一般操作>>"


@pytest.fixture(scope="module")
def tiny():
    """(model, config) of the tiny CogAgent-9B fixture; tests that change the model take a copy."""
    return build_fixture_model(COGAGENT9B_TINY)


@pytest.fixture(scope="module")
def processor(tiny):
    from cogvlm.utils.preprocessing.glm4_processor import GLM4Processor, model_inputs_builder
    from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer
    from cogvlm.utils.preprocessing.image_processor import ImageProcessor

    _, config = tiny
    return GLM4Processor(GLM4Tokenizer.from_path(TOKENIZER), ImageProcessor(config.vision.image_size),
                         model_inputs_builder(config))


def screenshot(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path)
    return path


# --- training examples ------------------------------------------------------------------------------------------

def test_a_training_example_supervises_the_answer_and_its_end_of_turn_only(processor, tiny):
    picture = Image.new("RGB", (40, 30), (10, 200, 10))
    example = processor.training_example("Task: Press OK", ANSWER, (), picture, max_length=400)
    prompt = processor("Task: Press OK", (), picture)
    answer = [NEWLINE_ID] + processor.tokenizer.encode(ANSWER) + [USER_ID]
    n = len(prompt)
    assert prompt.input_ids[0, -1] == processor.tokenizer.token_id("<|assistant|>")
    assert example.input_ids[0].tolist() == prompt.input_ids[0].tolist() + answer
    assert example.labels[0].tolist() == [IGNORE_INDEX] * n + answer          # prompt and image slot: no loss
    assert example.image_embed_mask[0, :n].sum() == tiny[1].image_length + 2
    assert example.position_ids[0, n:].tolist() == [int(prompt.position_ids[0, -1]) + i
                                                    for i in range(1, len(answer) + 1)]
    assert example.prompt_length == n
    with pytest.raises(ValueError, match="leaves no room to learn"):
        processor.training_example("Task: Press OK", ANSWER, (), picture, max_length=n)


def test_a_training_example_with_history_is_the_chat_prompt_with_those_turns(processor):
    picture = Image.new("RGB", (40, 30))
    history = [("first question", "first answer")]
    example = processor.training_example("second", "42", history, picture, max_length=400)
    assert example.prompt().input_ids.tolist() == processor("second", history, picture).input_ids.tolist()


# --- the agent data format --------------------------------------------------------------------------------------

def write_lines(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_agent_fields_build_the_query_in_the_fine_tuning_order(tmp_path):
    from cogvlm.utils.training.agent_data import agent_samples

    image = screenshot(tmp_path / "images" / "a.png")
    data = write_lines(tmp_path / "train.jsonl", {
        "image": "images/a.png", "task": "Press OK", "platform": "Mac", "format": "action_op_sensitive",
        "history": [{"grounded_operation": "CLICK(box=[[1,2,3,4]])", "action": "Click it"},
                    ["TYPE(box=[[5,6,7,8]], text='a, b')", "Type it"]],
        "answer": ANSWER})
    (sample,) = agent_samples(data)
    assert sample.image_path == image and sample.answer == ANSWER and sample.history == []
    assert sample.query == ("Task: Press OK\n(Platform: Mac)\n(Answer in Action-Operation-Sensitive format.)\n"
                            "History steps: \n0. CLICK(box=[[1,2,3,4]])\tClick it\n"
                            "1. TYPE(box=[[5,6,7,8]], text='a, b')\tType it\n")


def test_published_conversations_give_one_sample_per_answer_and_bad_lines_are_skipped(tmp_path):
    from cogvlm.utils.training.agent_data import agent_samples

    image = screenshot(tmp_path / "images" / "0001.png")
    published = {"messages": [
        {"role": "user", "content": "Task: A\n(Platform: WIN)\n", "image": "images/0001.png"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": "second"}]}
    data = write_lines(tmp_path / "train.jsonl", published, "not json", {"messages": [{"role": "user"}]},
                       {"image": "images/missing.png", "task": "t", "answer": "a"},
                       {"image": "images/0001.png", "task": "t", "platform": "Linux", "answer": "a"})
    with pytest.warns(SkippedDataWarning) as caught:
        samples = agent_samples(tmp_path)                                       # the folder's .jsonl files
    assert [(s.image_path, s.query, s.answer, s.history) for s in samples] == [
        (image, "Task: A\n(Platform: WIN)\n", "first", []),
        (image, "go on", "second", [("Task: A\n(Platform: WIN)\n", "first")])]
    messages = [str(w.message) for w in caught]
    assert messages[-1] == f"skipped 4 of 5 lines under {tmp_path}"
    assert any("line 5: unknown platform 'Linux'" in m for m in messages)
    assert any("missing.png does not exist" in m for m in messages)


def test_no_agent_data_is_a_one_line_error(tmp_path):
    from cogvlm.utils.training.agent_data import agent_samples

    one_line_error(FileNotFoundError, lambda: agent_samples(tmp_path / "none"), "no .jsonl file at")
    write_lines(tmp_path / "bad.jsonl", "[]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedDataWarning)
        one_line_error(FileNotFoundError, lambda: agent_samples(tmp_path / "bad.jsonl"), "no usable sample")


# --- LoRA targets ---------------------------------------------------------------------------------------------------

def lora_model(tiny, **settings):
    from cogvlm.utils.training.lora import LoraSettings, TargetedLora

    model = copy.deepcopy(tiny[0])
    model.add_mixin("lora", TargetedLora(LoraSettings(**settings)), reinit=True)
    return model


def lora_names(model) -> set[str]:
    return {name.split(".matrix_A.")[0] for name, _ in model.named_parameters() if ".matrix_A." in name}


def test_lora_targets_are_configuration_and_the_vision_tower_is_left_alone_unless_asked(tiny):
    published = lora_model(tiny, rank=2)
    assert lora_names(published) == {f"transformer.layers.{i}.attention.query_key_value" for i in range(2)}
    everything = lora_model(tiny, rank=2, vision=True, targets=("query_key_value", "dense", "dense_h_to_4h",
                                                                "up_proj", "dense_4h_to_h"))
    expected = {f"transformer.layers.{i}.{linear}" for i in range(2) for linear in (
        "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")}
    expected |= {f"mixins.swiglu.up_proj.{i}" for i in range(2)}
    expected |= {f"mixins.image.encoder.transformer.layers.{i}.attention.query_key_value" for i in range(2)}
    assert lora_names(everything) == expected
    # grouped-query QKV: one LoRA pair per block [q heads | k groups | v groups] (64, 32, 32 rows here)
    qkv = everything.transformer.layers[0].attention.query_key_value
    assert [b.shape[0] for b in qkv.matrix_B] == [64, 32, 32]


def test_an_unknown_lora_target_is_a_one_line_error():
    from cogvlm.utils.training.lora import LoraSettings

    one_line_error(ValueError, lambda: LoraSettings(targets=("query_key_value", "mlp")),
                   "unknown LoRA target(s) mlp", "dense_4h_to_h")


def test_merged_lora_gives_the_lora_models_logits_and_merge_model_folds_the_same(tiny):
    from cogvlm.utils.checkpoint_io.loading import published_state_dict
    from cogvlm.utils.checkpoint_io.merging import fold_lora
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders
    from cogvlm.models.inputs import ImageInputs

    base, config = tiny
    model = lora_model(tiny, rank=4, alpha=8.0, dropout=0.0, vision=True,
                       targets=("query_key_value", "dense", "dense_h_to_4h", "up_proj", "dense_4h_to_h")).eval()
    ids = torch.tensor([[151331, 151333, 151336, 198, 151339, 151329, 151340, 9707, 11, 1879, 151337]])
    pixels = torch.randn(1, 3, config.vision.image_size, config.vision.image_size,
                         generator=torch.Generator().manual_seed(0))
    inputs = expand_image_placeholders(ids, config, ImageInputs(pixels))
    with torch.no_grad():
        assert torch.equal(model.forward_inputs(inputs)[0], base.forward_inputs(inputs)[0])   # B = 0 at the start
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if ".matrix_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        with_lora = model.forward_inputs(inputs)[0]
        assert not torch.allclose(with_lora, base.forward_inputs(inputs)[0], atol=1e-3)
        lora_state = {k: v.clone() for k, v in published_state_dict(model).items()}
        assert model.get_mixin("lora").merge_lora() == 12
        model.del_mixin("lora")
        torch.testing.assert_close(model.forward_inputs(inputs)[0], with_lora, atol=1e-5, rtol=1e-5)
    merged_state = published_state_dict(model)
    folded = fold_lora(lora_state, lora_alpha=8.0)
    assert folded.keys() == merged_state.keys() == published_state_dict(base).keys()
    for key in folded:
        torch.testing.assert_close(folded[key], merged_state[key], atol=1e-6, rtol=1e-6)


def test_what_trains_on_the_9b_model(tiny):
    from cogvlm.utils.training.finetune import TrainableParts, freeze, trainable_parameters

    model = copy.deepcopy(tiny[0])
    adapter = {name for name, _ in trainable_parameters(model, TrainableParts(frozenset({"adapter"})))}
    assert adapter == {name for name, _ in model.named_parameters()
                       if name.startswith(("mixins.image.adapter.", "mixins.image.conv."))}
    one_line_error(ValueError, lambda: freeze(model, TrainableParts(frozenset({"visual_expert"}))),
                   "nothing to train")


# --- the whole flow -------------------------------------------------------------------------------------------------

def run(*command, **environment) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update({key: str(value) for key, value in environment.items()})
    return subprocess.run([str(part) for part in command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)


@pytest.mark.slow
def test_lora_script_then_merge_model_then_the_cli(tiny, tmp_path):
    """finetune_cogagent9b_lora.sh on the tiny CogAgent-9B and a two-line agent dataset (both line formats): the
    loss falls, SAT's LoRA checkpoint is in the published layout with its alpha recorded, merge_model.py folds it
    into exactly the weights the run merged itself, and the CLI answers with the merged model."""
    from cogvlm.utils.checkpoint_io.loading import save_model
    from cogvlm.utils.checkpoint_io.sat_layout import read_state_dict, states_file

    checkpoint = save_model(tiny[0], tmp_path / "tiny", tokenizer=TOKENIZER)
    red = screenshot(tmp_path / "data" / "images" / "red.png")
    screenshot(tmp_path / "data" / "images" / "blue.png", (20, 20, 220))
    write_lines(tmp_path / "data" / "train.jsonl",
                {"image": "images/red.png", "task": "Press OK", "platform": "WIN", "answer": ANSWER},
                {"messages": [{"role": "user", "content": "Task: Close\n(Platform: Mac)\n", "image": "images/blue.png"},
                              {"role": "assistant", "content": "Action: Close.\nGrounded Operation:END()\n<<END>>"}]})
    ds_config = json.loads((REPO_ROOT / "finetune_demo" / "ds_config_cpu.json").read_text())
    ds_config["train_micro_batch_size_per_gpu"] = 2
    ds_config["optimizer"]["params"]["lr"] = 0.05          # SAT runs the first steps at 5 % of it
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    save = tmp_path / "checkpoints"
    result = run("bash", REPO_ROOT / "finetune_demo" / "finetune_cogagent9b_lora.sh", LAUNCHER="python",
                 MODEL_TYPE=checkpoint, TRAIN_DATA=tmp_path / "data" / "train.jsonl",
                 VALID_DATA=tmp_path / "data" / "train.jsonl", SAVE_DIR=save, TRAIN_ITERS=6, SAVE_INTERVAL=6,
                 EVAL_INTERVAL=6, EVAL_ITERS=1, DS_CONFIG=tmp_path / "ds.json", MAX_LENGTH=200,
                 EXTRA_ARGS="--lora_targets query_key_value dense dense_h_to_4h up_proj dense_4h_to_h "
                            "--lora_dropout 0 --log-interval 2 --eval_max_new_tokens 2")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    losses = [float(x) for x in re.findall(r"iteration +\d+/ +6 \|.*? loss ([\d.E+-]+) \|", log)]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0], losses
    assert "validation loss at iteration 6" in log

    (run_dir,) = save.glob("finetune-*")
    lora_keys = list(read_state_dict(states_file(run_dir)))
    assert "transformer.layers.0.attention.query_key_value.original.weight" in lora_keys
    assert "mixins.mlp.w2.1.matrix_B.0" in lora_keys            # the published name of the up projection
    recorded = json.loads((run_dir / "model_config.json").read_text())
    assert recorded["lora_alpha"] == 32.0 and recorded["model_class"] == "GLM4VModel"

    merged = tmp_path / "merged"
    result = run(sys.executable, "utils/merge_model.py", "--from_pretrained", run_dir, "--save", merged)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = read_state_dict(states_file(merged)), read_state_dict(states_file(save / "merged-cogagent-9b"))
    assert ours.keys() == theirs.keys() == read_state_dict(states_file(checkpoint)).keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert "lora_alpha" not in json.loads((merged / "model_config.json").read_text())

    result = run(sys.executable, "basic_demo/cli_demo_sat.py", "--from_pretrained", merged, "--local_tokenizer",
                 TOKENIZER, "--image", red, "--query", "Task: Press OK", "--max_length", "100")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() and "Error" not in result.stderr


def test_a_missing_agent_data_file_ends_the_run_in_one_line(tmp_path):
    from argparse import Namespace

    from cogvlm.utils.training.finetune import read_data_folders

    args = Namespace(data_format="agent", train_data=[str(tmp_path / "train.jsonl")], valid_data=None,
                     test_data=None)
    message = one_line_error(SystemExit, lambda: read_data_folders(args, ""), "Error: --train-data: no .jsonl file")
    assert "CogAgent-9B conversations" in message


def test_row_parallel_lora_targets_are_refused_under_model_parallelism(tiny, monkeypatch):
    monkeypatch.setattr("cogvlm.utils.parallel.model_parallel.rank_and_size", lambda: (0, 2))
    one_line_error(ValueError, lambda: lora_model(tiny, targets=("query_key_value", "dense_4h_to_h")),
                   "LoRA on dense_4h_to_h (row-parallel) is not exact under model parallelism")
    assert lora_names(lora_model(tiny, targets=("query_key_value", "up_proj")))     # column-parallel: fine


@pytest.mark.slow
def test_lora_under_two_model_parallel_processes_equals_one_process(tiny, tmp_path):
    """Column-parallel LoRA targets (grouped-query QKV included) at mp=2: each rank's shard of the LoRA weights gives
    the mp=1 logits, before and after each rank merges its own shard."""
    from cogvlm.utils.checkpoint_io.loading import published_state_dict, save_model
    from conftest import run_under_torchrun
    from glm4v_lora_parallel_worker import COLUMN_PARALLEL_TARGETS, lora_inputs

    checkpoint = save_model(tiny[0], tmp_path / "tiny")
    model = lora_model(tiny, rank=4, alpha=8.0, dropout=0.0, targets=COLUMN_PARALLEL_TARGETS).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".matrix_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        expected = model.forward_inputs(lora_inputs(tiny[1]))[0]
    torch.save(published_state_dict(model), tmp_path / "lora.pt")
    run_under_torchrun(Path(__file__).parent / "glm4v_lora_parallel_worker.py", "--checkpoint", checkpoint,
                       "--lora", tmp_path / "lora.pt", "--out", tmp_path / "results.pt")
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    assert results["qkv_rows"] == 64                             # really split: half of (4 + 2 + 2) x 16 rows
    assert not torch.allclose(expected, tiny[0].forward_inputs(lora_inputs(tiny[1]))[0], atol=1e-3)
    torch.testing.assert_close(results["with_lora"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["merged"], expected, atol=1e-5, rtol=1e-5)


def test_the_9b_lora_options_are_refused_for_cogvlm_in_one_line():
    from argparse import Namespace

    from cogvlm.models.config import CAPTCHA_TINY_CONFIG
    from cogvlm.utils.training.finetune import lora_settings

    args = Namespace(lora_rank=8, lora_alpha=32.0, lora_dropout=None, lora_targets=None, lora_vision=True)
    one_line_error(SystemExit, lambda: lora_settings(args, CAPTCHA_TINY_CONFIG),
                   "Error: --lora_alpha, --lora_vision apply to the 9B models")
    assert lora_settings(Namespace(**{**vars(args), "lora_alpha": None, "lora_vision": False}),
                         CAPTCHA_TINY_CONFIG) is None


def test_the_9b_lora_defaults_are_the_published_ones(tiny):
    from argparse import Namespace

    from cogvlm.utils.training.finetune import lora_settings
    from cogvlm.utils.training.lora import LoraSettings

    args = Namespace(lora_rank=8, lora_alpha=None, lora_dropout=None, lora_targets=None, lora_vision=False)
    assert lora_settings(args, tiny[1]) == LoraSettings(8, 32.0, 0.1, ("query_key_value",), False)
