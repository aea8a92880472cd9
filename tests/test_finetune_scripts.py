"""finetune_demo's entry points as users type them: the README's fine-tune -> evaluate commands, the shell scripts
(a few iterations each, CogVLM and CogAgent, under both launchers), their failures as one line, and the shipped
DeepSpeed configs as DeepSpeed itself reads them."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import KeysView
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import COGAGENT_TINY

REPO_ROOT = Path(__file__).resolve().parent.parent
FINETUNE_DEMO = REPO_ROOT / "finetune_demo"
EMBEDDED_MODEL = REPO_ROOT / "checkpoints" / "captcha-tiny"
SCRIPT_TIMEOUT = 600          # seconds: a hang fails the test instead of the suite; never a speed assertion


# --- running scripts ------------------------------------------------------------------------------------------------

def run_script(command: list[str] | str, cwd: Path = REPO_ROOT, **environment) -> subprocess.CompletedProcess:
    """Run a command line (a string goes through bash, as typed) with extra environment variables; text output."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update({key: str(value) for key, value in environment.items()})
    args = ["bash", "-c", command] if isinstance(command, str) else command
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def captcha_folder(folder: Path, count: int, seed: int) -> Path:
    result = run_script([sys.executable, str(FINETUNE_DEMO / "make_captcha_dataset.py"), "--out", str(folder),
                         "--count", str(count), "--seed", str(seed)])
    assert result.returncode == 0, output(result)[-2000:]
    return folder


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    """A non-zero exit whose stderr holds the user's `Error: ...` line once, and no traceback from any process."""
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in output(result) and "ChildFailedError" not in output(result), output(result)[-3000:]


def assert_checkpoint_folder(folder: Path) -> None:
    """The published SAT layout, with the tokenizer inside so that the folder alone is enough to load it."""
    assert sorted(p.name for p in folder.iterdir()) == ["1", "latest", "model_config.json", "tokenizer.model"]
    assert (folder / "1" / "mp_rank_00_model_states.pt").is_file()


def accuracy_rows(text: str) -> dict[str, tuple[int, float]]:
    """evaluate.py's table: split -> (count, exact match %)."""
    rows = re.findall(r"^\| (\S+) +\| +(\d+) \| +([\d.]+) \| +[\d.]+ \|$", text, re.M)
    return {split: (int(count), float(exact)) for split, count, exact in rows}


# --- the README ---------------------------------------------------------------------------------------------------

def readme_fine_tuning_blocks() -> list[list[str]]:
    """The bash code blocks of README.md's Fine-tuning section, each as its command lines without comments."""
    section = (REPO_ROOT / "README.md").read_text().split("### Fine-tuning\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[re.sub(r"\s+#.*$", "", line) for line in block.splitlines() if line.strip()] for block in blocks]


def repository_like_folder(tmp_path: Path) -> Path:
    """A folder laid out like the repository root for commands typed there (the code folders linked, the embedded
    model in a checkpoints/ of its own), so that what the commands write stays out of the repository."""
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    for name in ("finetune_demo", "utils", "basic_demo"):
        (work / name).symlink_to(REPO_ROOT / name)
    (work / "checkpoints" / EMBEDDED_MODEL.name).symlink_to(EMBEDDED_MODEL)
    return work


def test_the_readme_fine_tuning_flows_hand_over_the_same_way():
    gpu, cpu = readme_fine_tuning_blocks()
    scripts = [set(re.findall(r"\S+\.(?:sh|py)\b", " ".join(block))) for block in (gpu, cpu)]
    assert scripts[0] == scripts[1] and "finetune_demo/finetune_cogvlm_lora.sh" in scripts[0]
    assert gpu[-1] == cpu[-1] == "MODEL=checkpoints/merged-cogvlm bash finetune_demo/evaluate_cogvlm.sh"
    assert "MODEL_TYPE=checkpoints/captcha-tiny" in cpu[2]


@pytest.mark.slow
def test_the_readme_cpu_fine_tune_then_evaluate_runs_as_written(tmp_path):
    work = repository_like_folder(tmp_path)
    make_data, split, fine_tune, evaluate = readme_fine_tuning_blocks()[1]
    for line in (make_data, split):
        result = run_script(line, cwd=work)
        assert result.returncode == 0, output(result)[-2000:]

    result = run_script(fine_tune, cwd=work)
    assert result.returncode == 0, output(result)[-3000:]
    assert "validation loss at iteration 20" in output(result) and "acc_w/o_case" in output(result)
    assert "saved the fine-tuned model to checkpoints/merged-cogvlm" in result.stdout
    assert_checkpoint_folder(work / "checkpoints" / "merged-cogvlm")

    result = run_script(evaluate, cwd=work)
    assert result.returncode == 0, output(result)[-3000:]
    count, exact = accuracy_rows(result.stdout)["test"]
    assert count == len(list((work / "archive_split" / "test").iterdir())) == 30
    assert exact >= 80.0              # the embedded model reads 99 %; a short LoRA run on it keeps it reading


# --- the shell scripts ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cogagent_lora_script_under_the_deepspeed_launcher_then_its_evaluation(tmp_path):
    """finetune_cogagent_lora.sh on the tiny CogAgent, with one unreadable image among the training images: it is
    skipped, the run says so at the end, and evaluate_cogagent.sh reads the model the run wrote."""
    train = captcha_folder(tmp_path / "train", 2, seed=1)
    (train / "unreadable.png").write_bytes(b"not a png")
    valid = captcha_folder(tmp_path / "valid", 2, seed=2)
    save = tmp_path / "checkpoints"
    result = run_script(["bash", str(FINETUNE_DEMO / "finetune_cogagent_lora.sh")], LAUNCHER="deepspeed",
                        NUM_GPUS_PER_WORKER=1, MASTER_PORT=free_port(), MODEL_TYPE=COGAGENT_TINY / "checkpoint",
                        LOCAL_TOKENIZER=COGAGENT_TINY / "tokenizer.model", TRAIN_DATA=train, VALID_DATA=valid,
                        SAVE_DIR=save, TRAIN_ITERS=3, EVAL_INTERVAL=3, EVAL_ITERS=1,
                        EXTRA_ARGS="--eval_max_new_tokens 4")
    assert result.returncode == 0, output(result)[-3000:]
    assert "deepspeed.launcher.launch" in output(result) and "validation loss at iteration 3" in output(result)
    assert "skipped 1 unreadable image(s)" in result.stdout
    assert_checkpoint_folder(save / "merged-cogagent")

    result = run_script(["bash", str(FINETUNE_DEMO / "evaluate_cogagent.sh")], MODEL=save / "merged-cogagent",
                        TEST_DATA=valid)
    assert result.returncode == 0, output(result)[-3000:]
    assert accuracy_rows(result.stdout)["valid"][0] == 2


@pytest.mark.slow
def test_train_captcha_tiny_script_at_a_small_size(tmp_path):
    result = run_script(["bash", str(FINETUNE_DEMO / "train_captcha_tiny.sh"), str(tmp_path / "work")],
                        TRAIN_ITERS=4, CAPTCHA_COUNT=40, BATCH_SIZE=4, EVAL_INTERVAL=4, LOG_INTERVAL=2)
    assert result.returncode == 0, output(result)[-3000:]
    assert "validation loss at iteration 4" in output(result)
    assert_checkpoint_folder(tmp_path / "work" / "trained")
    assert accuracy_rows(result.stdout)["test"][0] == 6          # 15 % of 40 captchas


# --- failures: one line ----------------------------------------------------------------------------------------------

@pytest.fixture
def one_image_folder(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(next((EMBEDDED_MODEL / "examples").iterdir()), folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("launcher,variable,flag", [("deepspeed", "TRAIN_DATA", "--train-data"),
                                                    ("python", "VALID_DATA", "--valid-data")])
def test_a_missing_data_folder_ends_fine_tuning_in_one_line(tmp_path, one_image_folder, launcher, variable, flag):
    data = {"TRAIN_DATA": one_image_folder, "VALID_DATA": one_image_folder, variable: tmp_path / "missing"}
    result = run_script(["bash", str(FINETUNE_DEMO / "finetune_cogvlm_lora.sh")], LAUNCHER=launcher,
                        NUM_GPUS_PER_WORKER=1, MASTER_PORT=free_port(), MODEL_TYPE=EMBEDDED_MODEL,
                        SAVE_DIR=tmp_path / "checkpoints", **data)
    assert_one_error_line(result, f"Error: {flag}: not a folder: {tmp_path / 'missing'}")
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture
def mirror_without_models(tmp_path):
    """A local HTTP server that answers 404 for every model zip; its base URL."""
    empty = tmp_path / "mirror"
    empty.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(empty)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.slow
def test_a_failed_download_ends_fine_tuning_in_one_line(tmp_path, one_image_folder, mirror_without_models):
    result = run_script(["bash", str(FINETUNE_DEMO / "finetune_cogvlm_lora.sh")], MODEL_TYPE="cogvlm-base-490",
                        COGVLM_MIRROR=mirror_without_models, SAT_HOME=tmp_path / "sat_home",
                        TRAIN_DATA=one_image_folder, VALID_DATA=one_image_folder, SAVE_DIR=tmp_path / "checkpoints")
    assert_one_error_line(result, f"download of {mirror_without_models}/cogvlm-base-490.zip failed: HTTP 404")


def test_evaluate_script_with_a_missing_test_folder_says_so_in_one_line(tmp_path):
    result = run_script(["bash", str(FINETUNE_DEMO / "evaluate_cogvlm.sh")], MODEL=EMBEDDED_MODEL,
                        TEST_DATA=tmp_path / "missing")
    assert_one_error_line(result, f"Error: --data: not a folder: {tmp_path / 'missing'}")


# --- DeepSpeed configs -----------------------------------------------------------------------------------------------

# Passed whole to the optimizer's (scheduler's) constructor when the engine starts, which rejects unknown names
# itself; DeepSpeedConfig only stores them.
CONSTRUCTOR_ARGUMENTS = ("optimizer.params", "scheduler.params")


class ReadRecorder(dict):
    """A config dict that records, as dotted paths into `read`, every key DeepSpeed looks up or tests for, and
    everything in a section it iterates over (it hands such a section on whole, e.g. to a pydantic model that
    refuses unknown keys itself)."""

    def __init__(self, items: dict, read: set, prefix: str = ""):
        super().__init__({key: ReadRecorder(value, read, f"{prefix}{key}.") if isinstance(value, dict) else value
                          for key, value in items.items()})
        self.read, self.prefix = read, prefix

    def _saw(self, key) -> None:
        self.read.add(f"{self.prefix}{key}")

    def __getitem__(self, key):
        self._saw(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._saw(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self._saw(key)
        return super().__contains__(key)

    def __iter__(self):                 # the section is handed on whole: what it holds is the receiver's to check
        for key in super().__iter__():
            self.read.update(dotted_paths({key: dict.__getitem__(self, key)}, self.prefix))
            yield key

    def keys(self):                     # `key in config.keys()` must be recorded too
        return KeysView(self)

    def __copy__(self):                 # DeepSpeedConfig reads a copy; copying must not count as reading
        copy = ReadRecorder({}, self.read, self.prefix)
        dict.update(copy, dict.items(self))
        return copy


def dotted_paths(config: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in config.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and prefix + key not in CONSTRUCTOR_ARGUMENTS:
            paths |= dotted_paths(value, f"{prefix}{key}.")
    return paths


def parse_with_deepspeed(config: dict):
    """DeepSpeed's own config class on `config` (world size 1 outside a process group); (parsed, ignored keys)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    read: set[str] = set()
    parsed = DeepSpeedConfig(ReadRecorder(config, read))
    return parsed, sorted(dotted_paths(config) - read)


@pytest.mark.parametrize("path", sorted(FINETUNE_DEMO.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_deepspeed_config_parses_and_deepspeed_reads_every_key(path):
    parsed, ignored = parse_with_deepspeed(json.loads(path.read_text()))
    assert ignored == []
    assert parsed.train_micro_batch_size_per_gpu == parsed.train_batch_size > 0


def test_the_shipped_configs_are_the_ones_the_scripts_use():
    assert sorted(p.name for p in FINETUNE_DEMO.glob("*.json")) == ["ds_config_bf16.json", "ds_config_cpu.json"]
    common = (FINETUNE_DEMO / "finetune_common.sh").read_text()
    assert "$script_dir/ds_config_bf16.json" in common and "$script_dir/ds_config_cpu.json" in common


def test_the_bf16_config_offloads_the_optimizer_to_the_cpu():
    parsed, _ = parse_with_deepspeed(json.loads((FINETUNE_DEMO / "ds_config_bf16.json").read_text()))
    assert parsed.zero_optimization_stage == 2 and parsed.bfloat16_config.enabled
    assert parsed.zero_config.offload_optimizer is not None
    assert parsed.zero_config.offload_optimizer.device == "cpu"


def test_keys_deepspeed_never_reads_are_found():
    published = json.loads((FINETUNE_DEMO / "ds_config_bf16.json").read_text())
    published["offload_optimizer"] = published["zero_optimization"].pop("offload_optimizer")   # where it was
    published["activation_checkpointing"]["partition_activation"] = True                       # a typo
    parsed, ignored = parse_with_deepspeed(published)
    assert ignored == ["activation_checkpointing.partition_activation", "offload_optimizer",
                       "offload_optimizer.device", "offload_optimizer.pin_memory"]
    assert parsed.zero_config.offload_optimizer is None
