"""Every command README.md shows runs as written, at tiny size.

The commands are read out of README.md's ```bash blocks, so the README cannot drift from what is tested. Paths
and published names that stand for large downloads are replaced by tiny stand-ins (TINY below) in a scratch
folder that looks like a checkout; nothing else of a command is changed. A README command that no test runs
fails `test_every_readme_command_is_run_by_a_test`.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import COGAGENT_TINY, HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
CAPTCHA = REPO_ROOT / "checkpoints" / "captcha-tiny"
IMAGE = CAPTCHA / "examples" / "3640.png"

# Commands run elsewhere: the install + test command is what .ci/run runs; the fine-tuning block is run by
# tests/test_finetune.py.
RUN_ELSEWHERE = ("python -m pytest -q tests", "finetune_demo/", "utils/split_dataset.py")


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()          # a trailing comment explains, it does not run
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def commands_with(fragment: str) -> list[str]:
    found = [c for c in readme_commands() if fragment in c]
    assert found, f"README.md shows no command with {fragment!r} any more: update this test"
    return found


@pytest.fixture
def scratch(tmp_path):
    """A folder that looks like a checkout (the scripts' folders linked in), with the tiny stand-ins."""
    for name in ("basic_demo", "utils", "finetune_demo", "checkpoints", "openai_demo"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    sat_home = tmp_path / "sat_home"
    shutil.copytree(CAPTCHA, sat_home / "cogvlm-chat-v1.1")
    shutil.copytree(COGAGENT_TINY / "checkpoint", sat_home / "cogagent-chat")
    shutil.copy(COGAGENT_TINY / "tokenizer.model", sat_home / "cogagent-chat")
    tokenizer = tmp_path / "vicuna"
    tokenizer.mkdir()
    shutil.copy(CAPTCHA / "tokenizer.model", tokenizer)
    return {"dir": tmp_path, "sat_home": sat_home, "tokenizer": tokenizer}


def run(command: str, scratch, stdin: str = "", substitutions=(), timeout=600) -> subprocess.CompletedProcess:
    for old, new in substitutions:
        assert old in command, (old, command)
        command = command.replace(old, str(new))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["SAT_HOME"] = str(scratch["sat_home"])         # never the user's own cache; the README may set it too
    result = subprocess.run(["bash", "-c", command], cwd=scratch["dir"], env=env, input=stdin, text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return result


def answers(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("Model: ")]


def test_the_first_command_reads_the_captcha(scratch):
    command = commands_with("--image checkpoints/captcha-tiny/examples/3640.png")[0]
    chat_part = command.split("&&", 1)[1]            # the install part is what .ci/run does before the tests
    assert run(chat_part, scratch).stdout.strip().splitlines()[-1] == "3640"


def test_a_checkpoint_folder_with_a_local_tokenizer(scratch):
    command = commands_with("--from_pretrained /data/cogvlm-chat-v1.1")[0]
    result = run(command, scratch, stdin=f"{IMAGE}\nWhat text is written in the image?\nstop\n",
                 substitutions=[("/data/cogvlm-chat-v1.1", CAPTCHA), ("/data/vicuna-7b-v1.5", scratch["tokenizer"])])
    assert answers(result.stdout) == ["Model: 3640"]


def test_a_published_name_under_sat_home(scratch):
    command = commands_with("--from_pretrained cogvlm-chat-v1.1")[0]
    result = run(command, scratch, stdin=f"{IMAGE}\nWhat text is written in the image?\nstop\n",
                 substitutions=[("SAT_HOME=/data/sat", f"SAT_HOME={scratch['sat_home']}")])
    assert answers(result.stdout) == ["Model: 3640"]


@pytest.mark.slow
def test_torchrun_cogagent_chat(scratch):
    command = commands_with("torchrun --nproc-per-node=2 basic_demo/cli_demo_sat.py")[0]
    result = run(command, scratch, stdin=f"{COGAGENT_TINY / 'image.png'}\nWhat is on the screen?\nstop\n")
    assert result.stdout.count("Model: ") == 1


@pytest.mark.slow
def test_merge_model(scratch, mp2_runs):
    command = commands_with("utils/merge_model.py")[0]
    shutil.copytree(mp2_runs["cogvlm-tiny"]["checkpoint"], scratch["dir"] / "finetuned-mp2-lora")
    run(command, scratch)
    merged = json.loads((scratch["dir"] / "finetuned-merged" / "model_config.json").read_text())
    assert merged["model_parallel_size"] == 1


def test_the_python_example_runs_and_reads_the_captcha(scratch):
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
                  if "ModelInputs.batch" in block]
    example += "\nassert batch.input_ids.shape[0] == 2 and logits.shape[:2] == inputs.input_ids.shape\n"
    result = run(f"python - <<'EOF'\n{example}EOF", scratch)
    assert result.stdout.strip().splitlines()[-1] == "0695"


def test_the_openai_api_server_and_its_client_example(scratch):
    from cogvlm.openai_demo.local_server import _wait_until_up, free_port
    server = commands_with("openai_demo/openai_api.py")[0]
    client = commands_with("--query \"What text is written in the image?\" --stream")[0]
    port = free_port()
    for old, new in [("/data/vicuna-7b-v1.5", scratch["tokenizer"]), ("--port 8000", f"--port {port}")]:
        assert old in server, (old, server)
        server = server.replace(old, str(new))
    env = {**os.environ, "SAT_HOME": str(scratch["sat_home"])}
    process = subprocess.Popen(["bash", "-c", f"exec {server}"], cwd=scratch["dir"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_up(process, f"http://127.0.0.1:{port}", timeout=600)
        result = run(client, scratch, substitutions=[("127.0.0.1:8000", f"127.0.0.1:{port}")])
        assert result.stdout.strip().splitlines()[-1] == "3640"
        # The agent extension: the captcha reader's answer is no agent step, and says so.
        result = run(commands_with("--agent_task")[0], scratch,
                     substitutions=[("127.0.0.1:8000", f"127.0.0.1:{port}"), ("screenshot.png", IMAGE)])
        assert result.stdout.strip().splitlines()[-1].startswith('agent_step: {"operation": null')
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_batch_jobs_over_a_folder_and_a_jobs_file(scratch):
    out = scratch["dir"] / "answers.jsonl"
    run(commands_with("batch_infer.py --images")[0], scratch)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["image"]: line["answer"] for line in lines} == {"0695.png": "0695", "3640.png": "3640",
                                                                 "6631.png": "6631"}
    out.unlink()
    (scratch["dir"] / "jobs.jsonl").write_text(json.dumps({"image": "checkpoints/captcha-tiny/examples/3640.png",
                                                           "query": "What text is written in the image?"}) + "\n")
    run(commands_with("--input jobs.jsonl")[0], scratch,
        substitutions=[("/data/vicuna-7b-v1.5", scratch["tokenizer"])])
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["3640"]


def test_glm4v_9b_and_cogagent_9b_convert_chat_and_act(scratch):
    from glm4v_reference import COGAGENT9B_TINY, GLM4V_TINY, write_hf_folder
    # --max_length stands for the real models' 1600 image tokens: the tiny ones have 4, and random weights write
    # until the limit.
    shorter = [("--max_length 4096", "--max_length 64"), ("--max_length 2048", "--max_length 32")]
    convert = commands_with("--sat $SAT_HOME/glm-4v-9b")[0]
    run(convert, scratch, substitutions=[("/data/glm-4v-9b", write_hf_folder(GLM4V_TINY, scratch["dir"] / "hf-g"))])
    result = run(commands_with("glm-4v-9b --bf16 --stream_chat")[0], scratch, substitutions=shorter[:1],
                 stdin=f"{GLM4V_TINY / 'image.png'}\nWhat is on the screen?\nclear\n\nAnd in words?\nstop\n")
    assert len(answers(result.stdout)) == 2     # one about the image; after clear, an empty image line: text-only
    result = run(commands_with('--query "Write one sentence')[0], scratch, substitutions=shorter[1:])
    assert result.stdout.strip()
    agent_hf = write_hf_folder(COGAGENT9B_TINY, scratch["dir"] / "hf-a")
    run(f"python utils/convert_hf_checkpoint.py --hf {agent_hf} --sat $SAT_HOME/cogagent-9b-20241220", scratch)
    result = run(commands_with("cogagent-9b-20241220 --image screenshot.png")[0], scratch,
                 substitutions=[("screenshot.png", COGAGENT9B_TINY / "image.png"), *shorter[:1]])
    assert result.stdout.strip()
    result = run(commands_with("basic_demo/agent_demo.py")[0], scratch,
                 substitutions=[("--max_length 4096", "--max_length 140")],
                 stdin=f"{COGAGENT9B_TINY / 'image.png'}\nSign in as Ada Lovelace\nstop\n")
    assert "Unparsed answer:" in result.stdout         # the random tiny model writes no agent step, and it says so


@pytest.mark.slow
def test_fine_tuning_cogagent_9b_then_chatting_with_it(scratch):
    from glm4v_reference import COGAGENT9B_TINY, convert_to_sat, write_hf_folder
    from PIL import Image
    fine_tune = commands_with("finetune_demo/finetune_cogagent9b_lora.sh")[0]
    chat = commands_with("--from_pretrained checkpoints/merged-cogagent-9b")[0]
    convert_to_sat(write_hf_folder(COGAGENT9B_TINY, scratch["dir"] / "hf-a"),
                   scratch["sat_home"] / "cogagent-9b-20241220")
    data = scratch["dir"] / "CogAgentData"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(data / "images" / "red.png")
    line = {"image": "images/red.png", "task": "Press OK", "platform": "WIN",
            "answer": "Action: Press OK.\nGrounded Operation:CLICK(box=[[100,100,300,200]], element_info='OK')\n"
                      "<<一般操作>>"}
    for name in ("train.jsonl", "dev.jsonl"):
        (data / name).write_text(json.dumps(line, ensure_ascii=False) + "\n")
    (scratch["dir"] / "checkpoints").unlink()            # the run saves into the scratch folder's own checkpoints/
    (scratch["dir"] / "checkpoints").mkdir()
    # A few steps at tiny size; the launcher and data paths are the command's own.
    result = run("TRAIN_ITERS=4 SAVE_INTERVAL=4 EVAL_INTERVAL=4 EVAL_ITERS=1 MAX_LENGTH=200 "
                 "EXTRA_ARGS='--eval_max_new_tokens 2' " + fine_tune, scratch)
    assert (scratch["dir"] / "checkpoints" / "merged-cogagent-9b" / "model_config.json").is_file(), result.stdout
    screenshot = data / "images" / "red.png"
    result = run(chat, scratch, substitutions=[("screenshot.png", screenshot), ("--max_length 4096",
                                                                                "--max_length 120")])
    assert result.stdout.strip()


def test_the_agent_parse_example_prints_the_step_in_pixels(scratch):
    result = run(commands_with("basic_demo/agent_parse.py")[0], scratch)
    step = json.loads(result.stdout)
    # The box centre in thousandths, (265, 196.5), on 1920 x 1080 pixels.
    assert (step["operation"], step["sensitive"], step["point"]) == ("CLICK", True, [509, 212])
    assert step["arguments"]["element_info"] == "Submit, now"


def serve_readme_command(command: str, scratch) -> str:
    """Start a README server command in the scratch checkout on a free port of 127.0.0.1; the first page's HTML."""
    from cogvlm.openai_demo.local_server import free_port
    port = free_port()
    for old, new in (("--port 7860", f"--port {port}"), ("--port 7861", f"--port {port}"),
                     ("SAT_HOME=/data/sat", f"SAT_HOME={scratch['sat_home']}"),
                     ("/data/vicuna-7b-v1.5", COGAGENT_TINY / "tokenizer.model")):
        command = command.replace(old, str(new))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(SAT_HOME=str(scratch["sat_home"]), GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(scratch["dir"] / "gradio"))
    server = subprocess.Popen(["bash", "-c", command], cwd=scratch["dir"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while time.monotonic() < deadline:
            assert server.poll() is None, f"{command}\n{server.stderr.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return response.read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise AssertionError(f"{command} did not serve")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)       # bash and the demo: the session start_new_session made
        server.wait(timeout=60)


def test_the_web_demo_commands_serve_the_page(scratch):
    for command in commands_with("basic_demo/web_demo.py"):
        assert "CogVLM / CogAgent" in serve_readme_command(command, scratch)


TESTED_HERE = ("--image checkpoints/captcha-tiny/examples/3640.png", "--from_pretrained /data/cogvlm-chat-v1.1",
               "--from_pretrained cogvlm-chat-v1.1", "torchrun --nproc-per-node=2 basic_demo/cli_demo_sat.py",
               "utils/merge_model.py", "openai_demo/openai_api.py", "openai_demo/openai_api_request.py",
               "basic_demo/batch_infer.py", "--sat $SAT_HOME/glm-4v-9b", "glm-4v-9b --bf16 --stream_chat",
               '--query "Write one sentence', "cogagent-9b-20241220 --image screenshot.png", "basic_demo/agent_demo.py",
               "basic_demo/agent_parse.py", "--from_pretrained checkpoints/merged-cogagent-9b",
               "basic_demo/web_demo.py")


def test_every_readme_command_is_run_by_a_test():
    untested = [c for c in readme_commands()
                if not any(f in c for f in TESTED_HERE) and not any(f in c for f in RUN_ELSEWHERE)]
    assert untested == []
