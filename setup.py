"""The package `cogvlm` is this repository: its folders (models/, utils/, basic_demo/, finetune_demo/) are the
subpackages, in the places the published repository has them. Exact tested versions are in constraints.txt."""
from setuptools import setup

SUBPACKAGES = [
    "models",
    "utils",
    "utils.preprocessing",
    "utils.inference",
    "utils.checkpoint_io",
    "utils.parallel",
    "utils.training",
    "utils.grounding",
    "utils.agent",
    "utils.quantization",
    "basic_demo",
    "finetune_demo",
    "openai_demo",
]

SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "openai>=1", "httpx"]
WEB = ["gradio>=6,<7"]

setup(
    name="cogvlm-sat",
    version="0.2.0",
    description="CogVLM and CogAgent on SwissArmyTransformer: the published checkpoints, on GPUs and on a CPU",
    python_requires=">=3.10",
    packages=["cogvlm"] + [f"cogvlm.{name}" for name in SUBPACKAGES],
    package_dir={"cogvlm": "."},
    # The embedded default model, so that `cogvlm-cli` answers out of the box, and the demos' shell/config files.
    package_data={"cogvlm": ["checkpoints/captcha-tiny/*", "checkpoints/captcha-tiny/*/*"],
                  "cogvlm.finetune_demo": ["*.sh", "*.json"]},
    install_requires=[
        "torch>=2.4,<3",
        "swissarmytransformer>=0.4.12,<0.5",
        "deepspeed>=0.14",
        # imported by `import sat` but not declared by it
        "triton",
        "wandb",
        "requests",
        "sentencepiece>=0.2",
        "einops",
        "pillow>=10",
        "tqdm",
        "filelock",             # the download lock
        "boto3",                # signs the published r2:// URLs (no network needed to sign)
        "safetensors",          # Hugging Face checkpoints
        "huggingface_hub",      # finding a tokenizer in the local Hugging Face cache
        "tiktoken",             # the GLM-4 tokenizer of GLM-4V-9B / CogAgent-9B
    ],
    extras_require={
        # openai_demo/openai_api.py
        "serve": SERVE,
        # basic_demo/web_demo.py
        "web": WEB,
        # basic_demo/agent_demo.py --execute desktop: the CogAgent-9B agent's actions as real input events
        "agent": ["pyautogui>=0.9.54", "pyperclip>=1.8"],
        # the servers are tested with the official client, the web demo in a real (Debian's) Chromium via playwright
        "test": ["pytest>=8", "hypothesis>=6", "captcha>=0.7", "openai>=1", "playwright>=1.40"] + SERVE + WEB,
        # the captcha demo's --style captcha images
        "finetune": ["captcha>=0.7"],
        # phrase/box pairing with spaCy noun chunks; also run `python -m spacy download en_core_web_sm`
        "grounding": ["spacy>=3.7"],
    },
    entry_points={"console_scripts": [
        "cogvlm-cli = cogvlm.basic_demo.cli_demo_sat:main",
        "cogvlm-evaluate = cogvlm.finetune_demo.evaluate:main",
        "cogvlm-merge-model = cogvlm.utils.merge_model:main",
        "cogvlm-convert-hf-checkpoint = cogvlm.utils.convert_hf_checkpoint:main",
        "cogvlm-split-dataset = cogvlm.utils.split_dataset:main",
        "cogvlm-batch-infer = cogvlm.basic_demo.batch_infer:main",
        "cogvlm-web = cogvlm.basic_demo.web_demo:main",
        "cogvlm-openai-api = cogvlm.openai_demo.openai_api:main",
        "cogvlm-agent = cogvlm.basic_demo.agent_demo:main",
        "cogvlm-agent-parse = cogvlm.basic_demo.agent_parse:main",
    ]},
)
