#!/usr/bin/env bash
# Shared by finetune_cogvlm_lora.sh and finetune_cogagent_lora.sh: launches the demo with the published options.
# Every setting can be overridden from the environment, e.g. TRAIN_ITERS=50 bash finetune_cogvlm_lora.sh
# GPUs: the deepspeed launcher (a hostfile for several nodes), BF16 config. No GPU: one CPU process, fp32 config.
# LAUNCHER=deepspeed or LAUNCHER=python overrides the launcher (the tests run the deepspeed launcher on a CPU).
# The fine-tuned model is saved to $SAVE_DIR/merged-cogvlm (or merged-cogagent), SAT's run folders beside it.
set -euo pipefail
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
main_dir=$(dirname "$script_dir")

NUM_GPUS_PER_WORKER=${NUM_GPUS_PER_WORKER:-8}
MP_SIZE=${MP_SIZE:-1}
TRAIN_DATA=${TRAIN_DATA:-./archive_split/train}
VALID_DATA=${VALID_DATA:-./archive_split/valid}
TRAIN_ITERS=${TRAIN_ITERS:-800}
SAVE_INTERVAL=${SAVE_INTERVAL:-200}
EVAL_INTERVAL=${EVAL_INTERVAL:-200}
EVAL_ITERS=${EVAL_ITERS:-10}
LORA_RANK=${LORA_RANK:-10}
HOST_FILE_PATH=${HOST_FILE_PATH:-hostfile}
SAVE_DIR=${SAVE_DIR:-./checkpoints}
EXTRA_ARGS=${EXTRA_ARGS:-}

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DS_CONFIG=${DS_CONFIG:-$script_dir/ds_config_bf16.json}
    LAUNCHER=${LAUNCHER:-deepspeed}
    backend=nccl
else
    DS_CONFIG=${DS_CONFIG:-$script_dir/ds_config_cpu.json}
    LAUNCHER=${LAUNCHER:-python}
    backend=gloo
fi
case "$LAUNCHER" in
    deepspeed)
        if [ -f "$HOST_FILE_PATH" ]; then hostfile=(--hostfile "$HOST_FILE_PATH"); else hostfile=(); fi
        launcher=(deepspeed --master_port "${MASTER_PORT:-16666}" "${hostfile[@]}" --num_gpus "$NUM_GPUS_PER_WORKER");;
    python) launcher=(python);;
    *) echo "Error: LAUNCHER must be deepspeed or python, not '$LAUNCHER'" >&2; exit 2;;
esac

"${launcher[@]}" "$script_dir/$DEMO_SCRIPT" \
    --experiment-name "finetune-$(basename "$MODEL_TYPE")" \
    --model-parallel-size "$MP_SIZE" \
    --train-iters "$TRAIN_ITERS" \
    --resume-dataloader \
    --from_pretrained "$MODEL_TYPE" \
    --max_length "$MAX_LENGTH" \
    --lora_rank "$LORA_RANK" \
    --use_lora \
    --local_tokenizer "${LOCAL_TOKENIZER:-lmsys/vicuna-7b-v1.5}" \
    --version "$VERSION" \
    --train-data "$TRAIN_DATA" \
    --valid-data "$VALID_DATA" \
    --distributed-backend "$backend" \
    --lr-decay-style cosine \
    --warmup .02 \
    --save-interval "$SAVE_INTERVAL" \
    --eval-interval "$EVAL_INTERVAL" \
    --save "$SAVE_DIR" \
    --eval-iters "$EVAL_ITERS" \
    --eval-batch-size 1 \
    --split 1. \
    --deepspeed_config "$DS_CONFIG" \
    --skip-init \
    --seed 2023 \
    $EXTRA_ARGS
