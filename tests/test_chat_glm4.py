"""ChatModel and the CLI with a GLM-4V-9B / CogAgent-9B checkpoint (a tiny one converted from an HF folder): the
tokenizer family comes from model_config.json, and wrong tokenizers or names are one-line errors before any
weight is read."""
import importlib.util
import io
from pathlib import Path

import pytest

from conftest import one_line_error
from test_glm4v_conversion import write_hf_folder
from cogvlm.utils.checkpoint_io.hf_conversion import main as convert
from cogvlm.utils.inference.chat import ChatModel, TokenizerMismatchError, resolve_tokenizer
from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer, is_glm4_checkpoint
from cogvlm.utils.preprocessing.tokenizer import LlamaTokenizer, TokenizerNotFoundError

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
GLM4_TOKENIZER = FIXTURES / "glm4-tokenizer" / "tokenizer.model"
LLAMA_TOKENIZER = FIXTURES / "cogvlm-tiny" / "tokenizer.model"
IMAGE = FIXTURES / "glm4v-tiny" / "image.png"
PUBLISHED_VOCAB = 151552        # padded_vocab_size of glm-4v-9b


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))
    monkeypatch.delenv("COGVLM_MIRROR", raising=False)


def glm4_checkpoint(tmp_path: Path, with_tokenizer: bool = True) -> Path:
    hf = tmp_path / "hf"
    write_hf_folder(hf)
    if with_tokenizer:
        (hf / "tokenizer.model").write_bytes(GLM4_TOKENIZER.read_bytes())     # copied along by the converter
    assert convert(["--hf", str(hf), "--sat", str(tmp_path / "sat")]) == 0
    return tmp_path / "sat"


@pytest.fixture
def cli():
    spec = importlib.util.spec_from_file_location("cli_demo_sat_glm4", REPO_ROOT / "basic_demo" / "cli_demo_sat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(cli, monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_converted_checkpoint_is_of_the_glm4_family_and_finds_its_tokenizer(tmp_path):
    from cogvlm.utils.checkpoint_io.loading import read_model_config

    checkpoint = glm4_checkpoint(tmp_path)
    model_config = read_model_config(checkpoint)
    assert is_glm4_checkpoint(model_config)
    tokenizer = resolve_tokenizer(None, checkpoint, PUBLISHED_VOCAB, GLM4Tokenizer)
    assert isinstance(tokenizer, GLM4Tokenizer) and tokenizer.stop_token_ids == (151329, 151336, 151338)
    # the test checkpoint's embedding has 320 rows: fewer than the tokenizer's 151,343 ids
    one_line_error(TokenizerMismatchError,
                   lambda: resolve_tokenizer(None, checkpoint, model_config["vocab_size"], GLM4Tokenizer), "151343")
    assert not is_glm4_checkpoint(read_model_config(FIXTURES / "cogvlm-tiny" / "checkpoint"))
    assert LlamaTokenizer.from_path(LLAMA_TOKENIZER).stop_token_ids == (2,)


def test_the_cogvlm_tokenizer_for_a_glm4_checkpoint_is_refused_before_loading(tmp_path):
    checkpoint = glm4_checkpoint(tmp_path)
    one_line_error(TokenizerNotFoundError, lambda: ChatModel.from_pretrained(checkpoint, str(LLAMA_TOKENIZER)),
                   "tiktoken", str(LLAMA_TOKENIZER))


def test_no_tokenizer_names_the_glm4_one(tmp_path):
    checkpoint = glm4_checkpoint(tmp_path, with_tokenizer=False)
    one_line_error(TokenizerNotFoundError, lambda: ChatModel.from_pretrained(checkpoint, "lmsys/vicuna-7b-v1.5"),
                   "GLM-4 (THUDM/glm-4v-9b)", "--local_tokenizer")


def test_the_cli_reports_a_wrong_tokenizer_in_one_line(cli, monkeypatch, capsys, tmp_path):
    checkpoint = glm4_checkpoint(tmp_path)
    code, out, err = run_cli(cli, monkeypatch, capsys, ["--from_pretrained", checkpoint, "--local_tokenizer",
                                                        LLAMA_TOKENIZER, "--image", IMAGE, "--query", "Hi"])
    assert code == 1 and out == ""
    (line,) = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert "tiktoken" in line and "Traceback" not in err


@pytest.mark.parametrize("name, repository", [("glm-4v-9b", "THUDM/glm-4v-9b"),
                                              ("cogagent-9b-20241220", "THUDM/cogagent-9b-20241220")])
def test_the_cli_explains_a_published_9b_name_it_cannot_fetch(cli, monkeypatch, capsys, name, repository):
    code, out, err = run_cli(cli, monkeypatch, capsys, ["--from_pretrained", name, "--image", IMAGE, "--query", "Hi"])
    assert code == 1 and out == ""
    (line,) = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert repository in line and "convert_hf_checkpoint.py" in line and "Traceback" not in err
