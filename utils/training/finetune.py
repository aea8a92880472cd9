"""Fine-tuning CogVLM / CogAgent with SAT's `training_main` and DeepSpeed (shared by both finetune demos).

    TrainableParts / freeze(...)      what trains is configuration: visual expert, adapter, boi/eoi, cross branch,
                                      LoRA (language model and ViT), a ViT layer range, or everything
    GLM-4V-9B / CogAgent-9B           the same run; LoRA on configured targets (utils/training/lora.py), data in
                                      the published agent format (--data_format agent, utils/training/agent_data.py)
    CaptionDataset, collate           samples -> the processor's training examples (ModelInputs with labels, loss
                                      only on the answer), right-padded into one ModelInputs; corrupt images are
                                      skipped and counted
    forward_step / evaluation_step    SAT hooks: next-token loss; greedy exact-match accuracy (few new tokens)
    run(argv, model_name)             argument parsing, model + LoRA, training_main, LoRA merge, saving

On a machine without CUDA the same path runs on the CPU (gloo, fp32, ZeRO-1 with torch's Adam: see
finetune_demo/ds_config_cpu.json); utils/sat_patches.py holds the one SAT patch this needs.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cogvlm.models.inputs import IGNORE_INDEX, ModelInputs

if TYPE_CHECKING:
    from cogvlm.utils.preprocessing.processor import Processor
# New tokens per greedy answer in the in-training evaluation, as finetune_demo/evaluate.py's --max_new_tokens: a
# captcha answer is a few tokens, and decoding up to --max_length (1288) per sample made evaluation crawl.
EVAL_MAX_NEW_TOKENS = 16
TRAINABLE_CHOICES = ("visual_expert", "adapter", "boi_eoi", "cross_branch", "lora", "vit", "everything")
DATA_FORMATS = ("captcha", "sft", "agent")


# --- what trains --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainableParts:
    parts: frozenset = frozenset({"visual_expert"})
    vit_layer_range: tuple[int, int] | None = None      # EVA2-CLIP-E layers [start, end) trained with "vit"


def trainable_parameters(model, trainable: TrainableParts) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of the selected parts, found through the modules that own them (no name matching)."""
    if "everything" in trainable.parts:
        return list(model.named_parameters())
    owners: list[torch.nn.Module] = []
    image = model.get_mixin("image")
    if "visual_expert" in trainable.parts and "visual_expert_attention" in model.mixins:   # GLM-4V has none
        attention, mlp = model.get_mixin("visual_expert_attention"), model.get_mixin("visual_expert_mlp")
        owners += [attention.vision_query_key_value_list, attention.vision_dense_list, mlp.vision_gate_proj,
                   mlp.vision_dense_h_to_4h_list, mlp.vision_dense_4h_to_h_list]
    if "adapter" in trainable.parts:
        owners.append(image.adapter)
        if hasattr(image, "conv"):                   # GLM-4V's projector starts with its patch-merging conv
            owners.append(image.conv)
    if "cross_branch" in trainable.parts and "cross_vision" in model.mixins:
        owners.append(model.get_mixin("cross_vision"))
        owners += [layer.cross_attention for layer in model.transformer.layers]
    if "vit" in trainable.parts:
        layers = image.encoder.transformer.layers
        start, end = trainable.vit_layer_range or (0, len(layers))
        owners += list(layers[start:end])
    chosen = {id(p) for owner in owners for p in owner.parameters()}
    if "boi_eoi" in trainable.parts:
        chosen |= {id(image.boi), id(image.eoi)}
    if "lora" in trainable.parts:
        chosen |= {id(p) for name, p in model.named_parameters() if ".matrix_A." in name or ".matrix_B." in name}
    return [(name, p) for name, p in model.named_parameters() if id(p) in chosen]


def freeze(model, trainable: TrainableParts) -> int:
    """Train only the chosen parts; return (and print) the trainable parameter count."""
    chosen = {id(p) for _, p in trainable_parameters(model, trainable)}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"trainable parameters: {count:,} ({', '.join(sorted(trainable.parts))})", flush=True)
    if count == 0:
        raise ValueError("nothing to train: the chosen parts have no parameters in this model")
    return count


EMBEDDING_INIT_STD = 0.02               # token and position embeddings


def init_weights(model, seed: int) -> None:
    """Seeded random weights for training from scratch: matrices N(0, 1/fan_in) (so that attention logits are not
    vanishingly small in a narrow model), embeddings N(0, EMBEDDING_INIT_STD), norms 1, biases 0; buffers kept."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1 and "norm" in name:
                param.fill_(1.0)
            elif param.dim() >= 2 and "embeddings" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * EMBEDDING_INIT_STD)


# --- data ---------------------------------------------------------------------------------------------------------

class CaptionDataset(torch.utils.data.Dataset):
    """Samples (image_path, query, answer, history) as training examples (`ModelInputs` with labels, B = 1). An
    image that cannot be read is skipped with a warning and counted (`skipped`); it never stops a run.

    SAT's DataLoaders read samples in worker processes, each with its own copy of the dataset, so the record of
    skipped samples is a tensor in shared memory: what a worker marks, the training process sees."""

    def __init__(self, samples, processor: Processor, max_length: int):
        self.samples, self.processor, self.max_length = list(samples), processor, max_length
        self._unreadable = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def skipped(self) -> set[str]:
        """The paths of the images found unreadable so far, in any process."""
        return {str(self.samples[i].image_path) for i in self._unreadable.nonzero().flatten().tolist()}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ModelInputs | None:
        from cogvlm.utils.preprocessing.image_processor import load_image

        sample = self.samples[index]
        try:
            picture = load_image(str(sample.image_path))
        except ValueError as problem:
            if not self._unreadable[index]:
                self._unreadable[index] = True
                warnings.warn(f"skipping an unreadable image: {problem}")
            return None
        return self.processor.training_example(sample.query, sample.answer, sample.history, picture,
                                               self.max_length)


def collate(examples: list[ModelInputs | None], pad_token_id: int = 0) -> ModelInputs | None:
    """Right-pad a batch (the causal mask keeps padding out of every real token's view; padding has no label).
    Skipped samples (None) are dropped; a batch of only skipped samples is None."""
    examples = [e for e in examples if e is not None]
    if not examples:
        return None
    return ModelInputs.batch(examples, pad_token_id, side="right")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), labels (B, T): predict token t+1 from position t."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)


def _next_batch(data_iterator) -> ModelInputs:
    batch = None
    while batch is None:                    # a batch of only unreadable images: take the next one
        batch = next(data_iterator)
    return batch


def _unwrapped(model):
    return model.module if hasattr(model, "module") else model


def forward_step(data_iterator, model, args, timers):
    batch = _next_batch(data_iterator)
    core = _unwrapped(model)
    logits = model(**batch.to(core.device, core.dtype).forward_arguments())[0]
    loss = next_token_loss(logits, batch.labels)
    return loss, {"loss": loss}


def greedy_answers(model, batch: ModelInputs, tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers for the prompts of a training batch (each row's positions before its first label), the rows
    generated together (utils/inference/engine.py)."""
    from cogvlm.utils.inference.engine import Request, collect, generate_batch
    from cogvlm.utils.inference.generation import SamplingConfig

    prompts = [batch.row(i).prompt() for i in range(batch.batch_size)]
    requests = [Request(prompt, SamplingConfig(max_length=len(prompt) + max_new_tokens), tokenizer.stop_token_ids)
                for prompt in prompts]
    results = collect(generate_batch(model, requests))
    return [tokenizer.decode(results[i][0]).strip() for i in range(len(requests))]


def evaluation_step(tokenizer, max_new_tokens: int):
    """SAT's forward_step_eval hook: the loss, and the exact-match accuracy of greedy answers of at most
    `max_new_tokens` tokens (as the published demo's acc and acc_w/o_case)."""
    from cogvlm.utils.training.data import exact_match

    def forward_step_eval(data_iterator, model, args, timers):
        batch = _next_batch(data_iterator)
        core = _unwrapped(model)
        with torch.no_grad():
            loss = next_token_loss(core.forward_inputs(batch.to(core.device, core.dtype))[0], batch.labels)
            predictions = greedy_answers(core, batch, tokenizer, max_new_tokens=max_new_tokens)
        exact, case_insensitive = exact_match(predictions, labels_text(batch, tokenizer))
        return loss, {"loss": loss, "acc": torch.tensor(exact), "acc_w/o_case": torch.tensor(case_insensitive)}

    return forward_step_eval


def labels_text(batch: ModelInputs, tokenizer) -> list[str]:
    ends = (IGNORE_INDEX, *tokenizer.stop_token_ids)
    return [tokenizer.decode([t for t in row.tolist() if t not in ends]).strip() for row in batch.labels]


# --- the run ------------------------------------------------------------------------------------------------------

def parse_args(argv):
    """SAT's training arguments plus the published finetune options. SAT's get_args is asked for inference
    mode (its finetune mode insists on a CUDA device) and switched to DeepSpeed fine-tuning here."""
    from sat import get_args

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--version", default=None, help="prompt template (default: the checkpoint's)")
    parser.add_argument("--from_pretrained", required=True)
    parser.add_argument("--local_tokenizer", default="lmsys/vicuna-7b-v1.5")
    parser.add_argument("--lora_rank", type=int, default=10)
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="9B models: LoRA scaling alpha / rank (default 32, as THUDM/CogAgent's lora.yaml)")
    parser.add_argument("--lora_dropout", type=float, default=None, help="9B models: default 0.1, as published")
    parser.add_argument("--lora_targets", nargs="+", default=None,
                        help="9B models: the language model's linears LoRA adapts (default: query_key_value, as "
                             "published; also dense, dense_h_to_4h, up_proj, dense_4h_to_h)")
    parser.add_argument("--lora_vision", action="store_true", help="9B models: LoRA on the vision tower too")
    parser.add_argument("--data_format", choices=DATA_FORMATS, default="captcha",
                        help="captcha: folders of images named by their text; sft: CogVLM-SFT-311K folders; "
                             "agent: CogAgent-9B .jsonl files (screenshot + conversation)")
    parser.add_argument("--use_lora", action="store_true")
    parser.add_argument("--use_qlora", action="store_true")
    parser.add_argument("--use_ptuning", action="store_true")
    parser.add_argument("--layer_range", nargs=2, type=int, default=None, help="ViT layers [start, end) to train")
    parser.add_argument("--train", nargs="+", choices=TRAINABLE_CHOICES, default=None,
                        help="parts to train (default: visual_expert; LoRA only for the 9B models)")
    parser.add_argument("--query", default=None, help="captcha data: the question asked of every image")
    parser.add_argument("--merged_save", default=None,
                        help="where the fine-tuned (LoRA-merged) checkpoint goes; default SAVE/merged-<model>")
    parser.add_argument("--eval_max_new_tokens", type=int, default=EVAL_MAX_NEW_TOKENS,
                        help="greedy tokens generated per sample by the in-training evaluation")
    known, rest = parser.parse_known_args(argv)
    if known.eval_max_new_tokens < 1:
        raise SystemExit(f"Error: --eval_max_new_tokens must be at least 1, got {known.eval_max_new_tokens}")
    if known.use_qlora:
        raise SystemExit("Error: --use_qlora needs bitsandbytes' 4-bit kernels on a CUDA GPU; use --use_lora here")
    if known.use_ptuning:
        raise SystemExit("Error: --use_ptuning is not supported yet; use --use_lora or --train")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.setdefault("LOCAL_RANK", "0")                # DeepSpeed's engine asserts it is set
    args = get_args(["--mode", "inference", "--distributed-backend", backend, *rest])
    args.mode, args.deepspeed = "finetune", True
    args.deepspeed_activation_checkpointing = args.checkpoint_activations
    ds_config = json.loads(Path(args.deepspeed_config).read_text())
    args.fp16 = ds_config.get("fp16", {}).get("enabled", False)
    args.bf16 = ds_config.get("bf16", {}).get("enabled", False)
    args.batch_size = ds_config.get("train_micro_batch_size_per_gpu", args.batch_size)
    args.gradient_accumulation_steps = ds_config.get("gradient_accumulation_steps", 1)
    args.lr = ds_config.get("optimizer", {}).get("params", {}).get("lr", args.lr)
    args.deepspeed_config = ds_config
    if not torch.cuda.is_available():
        args.no_save_rng = args.no_load_rng = True          # SAT saves CUDA RNG states otherwise
    return argparse.Namespace(**{**vars(args), **vars(known)})


DATA_FLAGS = (("--train-data", "train_data"), ("--valid-data", "valid_data"), ("--test-data", "test_data"))
DATA_HINTS = {"captcha": "make one with finetune_demo/make_captcha_dataset.py and utils/split_dataset.py",
              "sft": "a CogVLM-SFT-311K folder: images/ beside labels/",
              "agent": "a .jsonl file of CogAgent-9B conversations, or a folder of them"}


def read_samples(path: str, data_format: str, query: str) -> list:
    from cogvlm.utils.training.agent_data import agent_samples
    from cogvlm.utils.training.data import captcha_samples, sft_samples

    if data_format == "agent":
        return agent_samples(path)
    if data_format == "sft":
        return sft_samples(path)
    return captcha_samples(path, query)


def read_data_folders(args, query: str) -> dict[str, list]:
    """The samples of every --train-data / --valid-data / --test-data folder by path, read before the model loads
    so that a wrong path ends the run at once, in one line (SystemExit), not in a traceback from SAT's loaders."""
    data_format = getattr(args, "data_format", "captcha")
    samples = {}
    for flag, name in DATA_FLAGS:
        for path in getattr(args, name) or ():
            try:
                samples[path] = read_samples(path, data_format, query)
            except FileNotFoundError as problem:
                raise SystemExit(f"Error: {flag}: {problem} ({DATA_HINTS[data_format]})") from None
    return samples


def is_glm4v(config) -> bool:
    from cogvlm.models.config import GLM4VConfig

    return isinstance(config, GLM4VConfig)


NINE_B_LORA_FLAGS = (("--lora_alpha", "lora_alpha"), ("--lora_dropout", "lora_dropout"),
                     ("--lora_targets", "lora_targets"), ("--lora_vision", "lora_vision"))


def lora_settings(args, config):
    """The LoRA of a run: the 9B models' targets are configuration (published defaults: lora.yaml of
    THUDM/CogAgent); CogVLM / CogAgent keep SAT's LoraMixin (attention of every layer, alpha 1) as published, whose
    checkpoints merge_model.py folds with alpha 1, so the 9B options are refused for them."""
    from cogvlm.utils.training.lora import PUBLISHED_TARGETS, LoraSettings

    if not is_glm4v(config):
        given = [flag for flag, name in NINE_B_LORA_FLAGS if getattr(args, name) not in (None, False)]
        if given:
            raise SystemExit(f"Error: {', '.join(given)} apply to the 9B models (GLM-4V-9B, CogAgent-9B) only")
        return None
    try:
        return LoraSettings(args.lora_rank, 32.0 if args.lora_alpha is None else args.lora_alpha,
                            0.1 if args.lora_dropout is None else args.lora_dropout,
                            tuple(args.lora_targets or PUBLISHED_TARGETS), args.lora_vision)
    except ValueError as problem:
        raise SystemExit(f"Error: {problem}") from None


def add_lora(model, config, args) -> None:
    from sat.model.finetune.lora2 import LoraMixin

    from cogvlm.utils.training.lora import TargetedLora

    settings = lora_settings(args, config)
    if settings is not None:
        try:
            model.add_mixin("lora", TargetedLora(settings), reinit=True)
        except ValueError as problem:                   # targets this model-parallel run cannot adapt exactly
            raise SystemExit(f"Error: {problem}") from None
        args.lora_alpha, args.lora_targets = settings.alpha, list(settings.targets)     # model_config.json
        return
    model.add_mixin("lora", LoraMixin(config.language.num_layers, args.lora_rank), reinit=True)
    model.get_mixin("image").encoder.add_mixin(
        "lora", LoraMixin(config.vision.num_layers, args.lora_rank, layer_range=args.layer_range), reinit=True)


def merge_lora(model) -> None:
    """Fold the LoRA of a trained model into its weights and remove the mixins."""
    model.get_mixin("lora").merge_lora()
    model.del_mixin("lora")
    encoder = model.get_mixin("image").encoder
    if "lora" in encoder.mixins:
        encoder.get_mixin("lora").merge_lora()
        encoder.del_mixin("lora")


def run(argv=None, model_name: str = "CogVLM"):
    from sat.training.deepspeed_training import training_main

    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.checkpoint_io.loading import save_model
    from cogvlm.utils.training.data import CAPTCHA_QUERY
    from cogvlm.utils.training.sat_patches import apply_cpu_training_patches

    args = parse_args(argv)
    query = args.query or CAPTCHA_QUERY
    samples = read_data_folders(args, query)
    apply_cpu_training_patches()
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    try:
        chat = ChatModel.from_pretrained(args.from_pretrained, args.local_tokenizer, args.version or "chat", dtype,
                                         "cuda" if torch.cuda.is_available() else "cpu")
    except ValueError as problem:       # not found, a failed download, a broken checkpoint, no tokenizer
        raise SystemExit(f"Error: {problem}") from None
    model, config = chat.model, chat.config
    model.train()
    parts = set(args.train or ([] if is_glm4v(config) else ["visual_expert"]))
    if args.use_lora:
        add_lora(model, config, args)
        parts.add("lora")
    trainable = TrainableParts(frozenset(parts), tuple(args.layer_range) if args.layer_range else None)
    model.disable_untrainable_params = lambda: freeze(model, trainable)
    # SAT writes model_config.json from args at every save: give it this model's published configuration.
    for key, value in config.to_model_config().items():
        setattr(args, key, value)
    datasets = []

    def create_dataset_function(path, args):
        dataset = CaptionDataset(samples[path], chat.processor, args.max_length)
        datasets.append(dataset)
        return dataset

    # SAT appends "<experiment-name>-<time>" to args.save; the merged model goes where the README says.
    target = Path(args.merged_save or Path(args.save or "checkpoints") / f"merged-{model_name.lower()}")
    engine = training_main(args, model_cls=model, forward_step_function=forward_step,
                           create_dataset_function=create_dataset_function,
                           collate_fn=lambda batch: collate(batch, chat.tokenizer.pad_token_id),
                           forward_step_eval=evaluation_step(chat.tokenizer, args.eval_max_new_tokens))
    skipped = set().union(*(d.skipped for d in datasets)) if datasets else set()
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s)", flush=True)
    trained = _unwrapped(engine) if engine is not None else model
    if args.use_lora:
        merge_lora(trained)
    trained.eval()
    # with the tokenizer: a self-contained checkpoint folder for cli_demo_sat.py
    save_model(trained, target, tokenizer=Path(chat.tokenizer.path))
    print(f"saved the fine-tuned model to {target}", flush=True)
    return target
