#!/usr/bin/env bash
# LoRA fine-tuning of CogAgent-9B-20241220 (or GLM-4V-9B) on agent data in the published format: .jsonl files of
# {"messages": [user turn with the query and "image", assistant turn with the answer]} (THUDM/CogAgent
# finetune/README.md), or of {"image", "task", "history", "platform", "format", "answer"}. LoRA as published
# (lora.yaml): rank 8, alpha 32, dropout 0.1 on query_key_value; EXTRA_ARGS="--lora_targets query_key_value dense
# dense_h_to_4h up_proj dense_4h_to_h" adapts the MLP too, "--lora_vision" the vision tower. See finetune_common.sh.
DEMO_SCRIPT=finetune_cogagent9b_demo.py
MODEL_TYPE=${MODEL_TYPE:-cogagent-9b-20241220}
VERSION=${VERSION:-chat}                    # unused: the 9B models have one chat template
MAX_LENGTH=${MAX_LENGTH:-2600}              # counts the 1602 image positions, as published (512 + 1600 + answer)
LORA_RANK=${LORA_RANK:-8}
TRAIN_DATA=${TRAIN_DATA:-./CogAgentData/train.jsonl}
VALID_DATA=${VALID_DATA:-./CogAgentData/dev.jsonl}
EXTRA_ARGS="--data_format agent ${EXTRA_ARGS:-}"
source "$(dirname "${BASH_SOURCE[0]}")/finetune_common.sh"
