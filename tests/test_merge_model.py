"""utils/checkpoint_io/merging.py and its entry point utils/merge_model.py: any model-parallel size, with or
without LoRA, back to one published mp=1 checkpoint."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sat.model.finetune.lora2 import LoraMixin

from cogvlm.models.mlp_adapter import ImageInputs
from cogvlm.utils.checkpoint_io.loading import load_model, read_state_dict, save_model, states_file
from cogvlm.utils.checkpoint_io.merging import fold_lora, main
from conftest import COGVLM_TINY, HANG_TIMEOUT, run_under_torchrun

SCRIPT = Path(__file__).resolve().parent.parent / "utils" / "merge_model.py"


def assert_same_checkpoint(a: Path, b: Path):
    left, right = read_state_dict(states_file(a)), read_state_dict(states_file(b))
    assert list(left) == list(right)
    assert all(torch.equal(left[k], right[k]) for k in right)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cogvlm-tiny", "cogagent-tiny"])
def test_mp2_checkpoint_merges_back_to_the_original_key_for_key(mp2_runs, tmp_path, name):
    assert main(["--from_pretrained", str(mp2_runs[name]["checkpoint"]), "--save", str(tmp_path / "merged")]) == 0
    assert_same_checkpoint(tmp_path / "merged", Path(__file__).parent / "fixtures" / name / "checkpoint")


@pytest.mark.slow
def test_runs_as_a_plain_script_and_under_torchrun(mp2_runs, tmp_path):
    source = mp2_runs["cogvlm-tiny"]["checkpoint"]
    plain = subprocess.run([sys.executable, str(SCRIPT), "--from_pretrained", str(source), "--save",
                            str(tmp_path / "plain")], capture_output=True, timeout=HANG_TIMEOUT)
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    run_under_torchrun(SCRIPT, "--from_pretrained", source, "--save", tmp_path / "torchrun")
    assert_same_checkpoint(tmp_path / "plain", tmp_path / "torchrun")


def test_lora_on_language_model_and_vit_merges_to_the_same_logits(tmp_path, cogvlm_cases):
    model, config = load_model(COGVLM_TINY / "checkpoint")
    model.add_mixin("lora", LoraMixin(config.language.num_layers, 4), reinit=True)
    model.get_mixin("image").encoder.add_mixin("lora", LoraMixin(config.vision.num_layers, 4), reinit=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lora = [p for n, p in model.named_parameters() if "matrix_" in n]
        for p in lora:                                          # B starts at 0; make every LoRA matrix count
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    assert len(lora) == 2 * (config.language.num_layers + config.vision.num_layers) * (3 + 1)
    case = cogvlm_cases["cases"]["chat_describe"]
    images = ImageInputs(cogvlm_cases["image"]["pixel_values"])

    def logits(m):
        with torch.no_grad():
            return m(case["input_ids"], case["position_ids"], images=images,
                     image_embed_mask=case["image_embed_mask"], vision_expert_mask=case["vision_expert_mask"])[0]

    unmerged = logits(model)
    assert (unmerged - case["logits"]).abs().max() > 1e-2              # the LoRA weights really change the model
    save_model(model, tmp_path / "lora")
    assert any(".matrix_A." in k for k in read_state_dict(states_file(tmp_path / "lora")))
    assert main(["--from_pretrained", str(tmp_path / "lora"), "--save", str(tmp_path / "merged")]) == 0
    merged, _ = load_model(tmp_path / "merged")
    torch.testing.assert_close(logits(merged), unmerged, atol=1e-5, rtol=1e-5)


def test_fold_lora_is_w_plus_scaled_ba_per_block():
    a = [torch.randn(2, 3), torch.randn(2, 3)]
    b = [torch.randn(4, 2), torch.randn(4, 2)]
    w = torch.randn(8, 3)
    folded = fold_lora({"x.original.weight": w, "x.original.bias": torch.ones(8), "x.matrix_A.0": a[0],
                        "x.matrix_A.1": a[1], "x.matrix_B.0": b[0], "x.matrix_B.1": b[1], "y": torch.zeros(1)},
                       lora_alpha=4.0)
    assert set(folded) == {"x.weight", "x.bias", "y"}
    torch.testing.assert_close(folded["x.weight"], w + torch.cat([b[0] @ a[0], b[1] @ a[1]]) * 2.0)


def test_bad_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["--from_pretrained", str(tmp_path / "nothing"), "--save", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("Error: checkpoint")
