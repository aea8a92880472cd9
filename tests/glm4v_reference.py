"""The GLM-4V-9B / CogAgent-9B reference fixtures (tests/fixtures/glm4v-tiny, cogagent9b-tiny): their weights,
regenerated from the fixtures' recipe (weights-recipe.md of the reference data: one seeded generator drawn in
keys.txt order, scaled by kind) and checked against its content sha256, and the tiny models built from them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
GLM4V_TINY = FIXTURES / "glm4v-tiny"
COGAGENT9B_TINY = FIXTURES / "cogagent9b-tiny"
GLM4_TOKENIZER = FIXTURES / "glm4-tokenizer" / "tokenizer.model"
WEIGHTS_SEED = 1234
WEIGHTS_SHA256 = "18191e089ac4573e0610ac76b945673ed9d049e5be835aa93f9ec2a9d2aa6049"     # shared by both fixtures


def read_keys(fixture: Path) -> list[tuple[str, list[int], str]]:
    """(HF name, shape, recipe kind) of every tensor, in generation order."""
    rows = []
    for line in (fixture / "keys.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape, _dtype, kind = line.split("\t")
        rows.append((name, json.loads(shape), kind))
    return rows


def regenerate_hf_weights(fixture: Path, seed: int = WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """The fixture's HF-named fp32 weights, drawn as the recipe says."""
    rotary_dim = json.loads((fixture / "config.json").read_text())["kv_channels"] // 2
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape, kind in read_keys(fixture):
        if kind == "rope_inv_freq_buffer":           # computed, not drawn
            weights[name] = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).to(torch.float32) / rotary_dim))
            continue
        tensor = torch.randn(shape, generator=generator, dtype=torch.float32)
        if kind == "norm_weight":
            tensor = tensor * 0.1 + 1.0
        elif kind == "bias":
            tensor = tensor * 0.1
        elif kind == "conv_kernel":
            tensor = tensor * ((shape[1] * shape[2] * shape[3]) ** -0.5)
        elif kind == "fan_in_scaled":
            tensor = tensor * (shape[-1] ** -0.5)
        weights[name] = tensor
    return weights


def write_hf_folder(fixture: Path, folder: Path) -> Path:
    """The fixture as a published HF folder: config.json, the regenerated weights (one model.safetensors) and the
    real GLM-4 tokenizer.model (what glm-4v-9b / cogagent-9b-20241220 ship, at tiny size)."""
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(regenerate_hf_weights(fixture), folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(fixture / "config.json", folder)
    shutil.copy(GLM4_TOKENIZER, folder)
    return folder


def convert_to_sat(hf_folder: Path, sat_folder: Path, timeout: float | None = None) -> Path:
    """A SAT checkpoint converted from an HF folder by the converter's command line, as users convert; it carries
    the folder's tokenizer."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "utils/convert_hf_checkpoint.py", "--hf", str(hf_folder), "--sat",
                             str(sat_folder)], cwd=FIXTURES.parent.parent, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return sat_folder


def content_sha256(fixture: Path, weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in read_keys(fixture):
        tensor = weights[name].contiguous()
        digest.update(name.encode("utf-8") + b"\n")
        digest.update(json.dumps(list(tensor.shape)).encode("ascii") + b"\n")
        digest.update(tensor.numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def fixture_config(fixture: Path):
    from cogvlm.models.config import GLM4VConfig

    return GLM4VConfig.from_hf_config(json.loads((fixture / "config.json").read_text()))


def sat_weights(fixture: Path) -> dict[str, torch.Tensor]:
    """The regenerated weights (hash checked) in published SAT names."""
    from cogvlm.utils.checkpoint_io.glm4v_names import hf_to_sat

    weights = regenerate_hf_weights(fixture)
    assert content_sha256(fixture, weights) == WEIGHTS_SHA256, "torch.randn's stream changed: see weights-recipe.md"
    return hf_to_sat(weights, fixture_config(fixture))


def build_fixture_model(fixture: Path, dtype: torch.dtype = torch.float32):
    """(model in eval mode, config) of a fixture, its weights loaded strictly."""
    from cogvlm.utils.checkpoint_io.loading import build_model, check_state_dict

    config = fixture_config(fixture)
    model = build_model(config, dtype)
    state_dict = {k: v.to(dtype) for k, v in sat_weights(fixture).items()}
    check_state_dict(model, state_dict, fixture)
    model.load_state_dict(state_dict, assign=True)
    return model.eval(), config


def load_cases(fixture: Path) -> dict:
    return torch.load(fixture / "cases.pt", weights_only=False)


def case_images(cases: dict, case: dict):
    """The case's preprocessed pixels as ImageInputs (None for a text-only case)."""
    from cogvlm.models.inputs import ImageInputs

    if case["boi_index"] is None:
        return None
    pixels = case["images"] if case["images"] is not None else cases["image"]["pixel_values"]
    return ImageInputs(pixels)


def case_inputs(cases: dict, case: dict, config):
    """The case's tokenizer output, expanded for the model."""
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders

    return expand_image_placeholders(case["input_ids"], config, case_images(cases, case), case["attention_mask"],
                                     case["position_ids"])
