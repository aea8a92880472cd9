"""utils/training/finetune.py: training examples, batching, what trains, skipping bad images, and one end-to-end run of
the SAT + DeepSpeed pipeline on the CPU (loss falls, a checkpoint is written and reloads)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sat.model.finetune.lora2 import LoraMixin

from cogvlm.models.config import CAPTCHA_TINY_CONFIG
from cogvlm.utils.inference.chat import ChatModel
from cogvlm.utils.inference.engine import Event
from cogvlm.utils.inference.generation import SamplingConfig, generate
from cogvlm.utils.checkpoint_io.loading import build_model
from cogvlm.models.inputs import IGNORE_INDEX, ImageInputs, ModelInputs
from cogvlm.utils.training import finetune
from cogvlm.utils.training.finetune import (CaptionDataset, TrainableParts, collate, evaluation_step, freeze,
                                            greedy_answers, init_weights, labels_text, next_token_loss,
                                            trainable_parameters)
from cogvlm.utils.training.data import Sample
from conftest import COGVLM_TINY

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chat():
    return ChatModel.from_pretrained(COGVLM_TINY / "checkpoint", str(COGVLM_TINY / "tokenizer.model"))


def test_training_example_puts_the_loss_on_the_answer_only(chat):
    from PIL import Image

    picture = Image.open(COGVLM_TINY / "image.png")
    example = chat.processor.training_example("What is it?", "42", (), picture, max_length=200)
    prompt = chat.processor("What is it?", (), picture)
    answer = chat.tokenizer.encode("42") + [chat.tokenizer.eos_token_id]
    n = len(prompt)
    assert example.input_ids[0].tolist() == prompt.input_ids[0].tolist() + answer
    assert example.labels[0].tolist() == [IGNORE_INDEX] * n + answer
    assert example.position_ids[0, n:].tolist() == [int(prompt.position_ids[0, -1]) + i
                                                    for i in range(1, len(answer) + 1)]
    assert example.vision_expert_mask[0, n:].sum() == 0 and example.image_embed_mask.sum() == 18
    assert example.images.pixel_values.shape == (1, 3, 56, 56) and example.prompt_length == n
    with pytest.raises(ValueError, match="leaves no room to learn"):
        chat.processor.training_example("What is it?", "42", (), picture, max_length=n)


def _example(length, label_from=0):
    """A B = 1 training example of `length` tokens with an image slot of 2 and labels from `label_from` on."""
    ids = torch.arange(10, 10 + length)[None]
    slot = torch.zeros(1, length, dtype=torch.long)
    slot[0, 1:3] = 1
    labels = torch.where(torch.arange(length) >= label_from, ids, IGNORE_INDEX)
    return ModelInputs(ids, torch.arange(length)[None], slot, slot, ImageInputs(torch.full((1, 3, 4, 4), length)),
                       labels=labels)


def test_collate_right_pads_and_drops_skipped_samples():
    batch = collate([_example(3), None, _example(5)], pad_token_id=7)
    assert batch.input_ids.tolist()[0] == [10, 11, 12, 7, 7]
    assert batch.labels.tolist()[0][3:] == [IGNORE_INDEX, IGNORE_INDEX]
    assert batch.attention_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch.vision_expert_mask.tolist()[0][3:] == [0, 0] and batch.images.pixel_values.shape == (2, 3, 4, 4)
    assert collate([None, None]) is None


def test_greedy_answers_start_from_each_rows_prompt(chat, monkeypatch):
    """Each row of a right-padded batch is generated from its own prompt: no padding, no answer, its image."""
    seen = []

    def fake_generate_batch(model, requests, num_slots=None, on_logits=None):
        for i, request in enumerate(requests):
            seen.append(request.prompt)
            yield Event(i, finish_reason="stop")

    monkeypatch.setattr("cogvlm.utils.inference.engine.generate_batch", fake_generate_batch)
    batch = collate([_example(6, label_from=4), _example(3, label_from=2)], pad_token_id=7)
    assert greedy_answers(None, batch, chat.tokenizer, max_new_tokens=4) == ["", ""]
    assert [p.input_ids.tolist() for p in seen] == [[[10, 11, 12, 13]], [[10, 11]]]
    assert [int(p.images.pixel_values[0, 0, 0, 0]) for p in seen] == [6, 3]
    assert all(p.labels is None and p.attention_mask is None for p in seen)


def test_greedy_answers_of_a_batch_are_each_rows_answer_alone(chat):
    from PIL import Image

    picture = Image.open(COGVLM_TINY / "image.png")
    examples = [chat.processor.training_example(query, "42", (), picture, max_length=200)
                for query in ("What is it?", "Describe the picture in a few more words, please.")]
    batch = collate(examples, pad_token_id=chat.tokenizer.pad_token_id)
    alone = [chat.tokenizer.decode(list(generate(chat.model, example.prompt(), SamplingConfig(
        max_length=example.prompt_length + 5), (chat.tokenizer.eos_token_id,)))).strip() for example in examples]
    assert greedy_answers(chat.model, batch, chat.tokenizer, max_new_tokens=5) == alone
    assert all(alone)


def test_next_token_loss_ignores_unlabelled_positions():
    logits = torch.zeros(1, 3, 5)
    logits[0, 1, 4] = 100.0                                  # position 1 predicts token 4 with certainty
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4]])
    assert next_token_loss(logits, labels) < 1e-6


@pytest.mark.parametrize("parts,expected", [
    ({"visual_expert"}, lambda n: ".vision_" in n),
    ({"adapter"}, lambda n: n.startswith("mixins.image.adapter.")),
    ({"boi_eoi"}, lambda n: n in ("mixins.image.boi", "mixins.image.eoi")),
    ({"everything"}, lambda n: True),
])
def test_trainable_parts_select_the_parameters_they_name(parts, expected):
    model = build_model(CAPTCHA_TINY_CONFIG, device="cpu")
    chosen = {name for name, _ in trainable_parameters(model, TrainableParts(frozenset(parts)))}
    assert chosen == {name for name, _ in model.named_parameters() if expected(name)}
    count = freeze(model, TrainableParts(frozenset(parts)))
    assert count == sum(p.numel() for n, p in model.named_parameters() if n in chosen and p.requires_grad)
    assert all(p.requires_grad == (n in chosen) for n, p in model.named_parameters())


def test_lora_and_a_vit_layer_range():
    model = build_model(CAPTCHA_TINY_CONFIG, device="cpu")
    model.add_mixin("lora", LoraMixin(2, 4), reinit=True)
    chosen = {n for n, _ in trainable_parameters(model, TrainableParts(frozenset({"lora", "vit"}), (1, 2)))}
    assert any(".matrix_A." in n for n in chosen)
    vit = {n for n in chosen if n.startswith("mixins.image.encoder.")}
    assert vit and all(".layers.1." in n for n in vit)
    with pytest.raises(ValueError, match="nothing to train"):
        freeze(model, TrainableParts(frozenset({"cross_branch"})))           # CogVLM has no cross branch


def test_unreadable_images_are_skipped_with_a_warning_and_counted(chat, tmp_path):
    good = tmp_path / "1234.png"
    shutil.copy(COGVLM_TINY / "image.png", good)
    bad = tmp_path / "5678.png"
    bad.write_bytes(b"not a png")
    dataset = CaptionDataset([Sample(good, "q?", "1234"), Sample(bad, "q?", "5678")], chat.processor, 200)
    assert dataset[0] is not None
    with pytest.warns(UserWarning, match="skipping an unreadable image"):
        assert dataset[1] is None
    assert dataset.skipped == {str(bad)}


def test_images_skipped_in_dataloader_workers_are_counted_in_the_training_process(chat, tmp_path):
    """SAT reads samples in DataLoader worker processes; the end-of-run summary is printed by the main one."""
    good = shutil.copy(COGVLM_TINY / "image.png", tmp_path / "1234.png")
    bad = tmp_path / "5678.png"
    bad.write_bytes(b"not a png")
    samples = [Sample(Path(good), "q?", "1234"), Sample(bad, "q?", "5678")]
    dataset = CaptionDataset(samples, chat.processor, 200)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate)
    (batch,) = list(loader)
    assert batch.input_ids.shape[0] == 1
    assert dataset.skipped == {str(bad)}


def test_in_training_evaluation_asks_for_at_most_its_max_new_tokens(chat, monkeypatch):
    from PIL import Image

    example = chat.processor.training_example("q?", "42", (), Image.open(COGVLM_TINY / "image.png"), max_length=200)
    batch = collate([example], chat.tokenizer.pad_token_id)
    asked = []

    def right_answers(model, batch, tokenizer, max_new_tokens):
        asked.append(max_new_tokens)
        return labels_text(batch, tokenizer)

    monkeypatch.setattr(finetune, "greedy_answers", right_answers)
    loss, metrics = evaluation_step(chat.tokenizer, 3)(iter([batch]), chat.model, None, None)
    assert asked == [3]
    assert metrics["acc"] == 1 and metrics["acc_w/o_case"] == 1 and torch.isfinite(loss)


def test_init_weights_is_seeded():
    a, b = (build_model(CAPTCHA_TINY_CONFIG, device="cpu") for _ in range(2))
    init_weights(a, 3)
    init_weights(b, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.all(a.transformer.final_layernorm.weight == 1)


def test_qlora_without_its_gpu_library_is_a_clear_error():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "finetune_demo" / "finetune_cogvlm_demo.py"),
                             "--from_pretrained", "x", "--use_qlora"], capture_output=True, timeout=120)
    assert result.returncode != 0
    assert "--use_qlora needs bitsandbytes" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss_and_writes_a_checkpoint_that_loads(tmp_path):
    """The whole pipeline: data generation, split, SAT training_main + DeepSpeed on the CPU, LoRA-free full
    training of a tiny model from scratch, evaluation during training, the saved checkpoint in the CLI."""
    run = lambda *cmd: subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO_ROOT, capture_output=True,  # noqa
                                      timeout=300)
    assert run("finetune_demo/make_tiny_model.py", "--out", tmp_path / "init").returncode == 0
    assert run("finetune_demo/make_captcha_dataset.py", "--out", tmp_path / "all", "--count", "60").returncode == 0
    assert run("utils/split_dataset.py", "--source", tmp_path / "all", "--target", tmp_path / "split").returncode == 0
    config = json.loads((REPO_ROOT / "finetune_demo" / "ds_config_cpu.json").read_text())
    config["optimizer"]["params"]["lr"] = 0.02          # SAT runs the first 100 fine-tuning steps at 5 % of it
    (tmp_path / "ds.json").write_text(json.dumps(config))
    result = run("finetune_demo/finetune_cogvlm_demo.py", "--from_pretrained", tmp_path / "init",
                 "--max_length", "100", "--train", "everything", "--experiment-name", "ci", "--train-iters", "40",
                 "--train-data", tmp_path / "split" / "train", "--valid-data", tmp_path / "split" / "valid",
                 "--split", "1.", "--eval-interval", "40", "--eval-iters", "1", "--eval-batch-size", "2",
                 "--save", tmp_path / "runs", "--save-interval", "40", "--log-interval", "10",
                 "--deepspeed_config", tmp_path / "ds.json", "--warmup", "0.02", "--seed", "2023", "--skip-init",
                 "--merged_save", tmp_path / "trained")
    log = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, log[-3000:]
    assert "trainable parameters: 1,002,944 (everything)" in log
    losses = [float(x) for x in re.findall(r"iteration +\d+/ +40 \|.*? loss ([\d.E+-]+) \|", log)]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert "validation loss at iteration 40" in log and "acc_w/o_case" in log
    assert sorted(p.name for p in (tmp_path / "trained").iterdir()) == ["1", "latest", "model_config.json",
                                                                       "tokenizer.model"]
    from cogvlm.utils.checkpoint_io.loading import load_model, read_state_dict, states_file
    (run_dir,) = (tmp_path / "runs").iterdir()                # SAT's own save during training: published names
    sat_saved = list(read_state_dict(states_file(run_dir)))
    assert sat_saved == list(read_state_dict(states_file(tmp_path / "init"))) and "mixins.eva.boi" in sat_saved
    load_model(run_dir)
    test_image = next((tmp_path / "split" / "test").iterdir())
    answer = run("basic_demo/cli_demo_sat.py", "--from_pretrained", tmp_path / "trained", "--image", test_image,
                 "--query", "What text is written in the image?", "--max_length", "100")
    assert answer.returncode == 0, answer.stderr.decode()[-2000:]
