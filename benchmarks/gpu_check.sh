#!/usr/bin/env bash
# One GPU, under 8 minutes: the CUDA paths the CPU test suite cannot run, and the GPU numbers of results/perf.md.
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]     (default OUT_DIR: gpu_check/<UTC date-time>)
#
# Runs, each under its own time limit, logging to OUT_DIR/<name>.log and timing to OUT_DIR/summary.tsv:
#   a few training steps of clip and maskclip in bf16 and in fp16 with the GradScaler (precision amp);
#   maskclip under torchrun at world size 1 with NCCL (MASKCLIP_FORCE_DDP=1 makes the process group and DDP real);
#   maskclip with --torchcompile;
#   `maskclip-bench bench` GPU sections (with MFU) and cost breakdown for MaskCLIP-Tiny-8 and MaskCLIP-ViT-B-16;
#   the largest ViT-B/16 batch that fits 40 GiB for clip and maskclip (--max-batch).
# Everything it measured ends up in OUT_DIR (perf.md there holds the bench sections; copy them into
# results/perf.md by rerunning the two bench commands with --out results/perf.md, or by hand).
# --dry-run prints the commands and runs nothing (tests/test_gpu_check.py checks them against the CLI).
set -u -o pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_check/$(date -u +%Y%m%d-%H%M%S)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MASKCLIP_BIN:-$HERE/.venv/bin}"
MB="$BIN/maskclip-bench"
TRAIN=(train --model MaskCLIP-Tiny-8 --data shapes --steps 6 --batch-size 64 --device cuda --quiet)
FAILED=0
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"  # the whole script stays under 8 minutes: later steps get what is left
DEADLINE=$(( $(date +%s) + BUDGET_S ))

step() {  # step NAME LIMIT_S ENV... -- COMMAND...
    local name="$1" limit="$2"; shift 2
    local envs=()
    while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
    shift
    if [[ $DRY == 1 ]]; then
        echo "$name: ${envs[*]:+${envs[*]} }$*"
        return 0
    fi
    local start end rc left
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 15 )); then
        printf '%s\tskipped\t0\t%s\n' "$name" "$*" >>"$OUT/summary.tsv"
        echo "skipped: $name (the ${BUDGET_S} s budget is spent)"; FAILED=$((FAILED + 1)); return 0
    fi
    (( limit > left )) && limit=$left
    start=$(date +%s%N)
    env "${envs[@]}" timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $(( (end - start) / 1000000000 )) \
        $(( (end - start) / 1000000 % 1000 )) "$*" >>"$OUT/summary.tsv"
    if [[ $rc != 0 ]]; then FAILED=$((FAILED + 1)); echo "FAILED ($rc): $name, see $OUT/$name.log"; else echo "ok: $name"; fi
}

if [[ $DRY == 0 ]]; then
    mkdir -p "$OUT"
    printf 'name\texit\tseconds\tcommand\n' >"$OUT/summary.tsv"
    { nvidia-smi; "$BIN/python" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; } \
        >"$OUT/device.txt" 2>&1
fi

for method in clip maskclip; do
    for precision in bf16 amp; do
        step "train_${method}_${precision}" 90 OMP_NUM_THREADS=4 -- \
            "$MB" "${TRAIN[@]}" --method "$method" --precision "$precision" --out "$OUT/train_${method}_${precision}"
    done
done
step torchrun_nccl 120 MASKCLIP_FORCE_DDP=1 OMP_NUM_THREADS=4 -- \
    "$BIN/torchrun" --standalone --nproc_per_node 1 -m maskclip_bench "${TRAIN[@]}" --method maskclip \
    --precision bf16 --out "$OUT/torchrun_nccl"
step torchcompile 180 OMP_NUM_THREADS=4 -- \
    "$MB" "${TRAIN[@]}" --method maskclip --precision bf16 --torchcompile --out "$OUT/torchcompile"
step bench_tiny 120 OMP_NUM_THREADS=4 -- \
    "$MB" bench --device cuda --model MaskCLIP-Tiny-8 --precision bf16 --batch-size 256 --steps 10 --warmup 3 \
    --breakdown --loop-steps 12 --out "$OUT/perf.md"
step bench_vit_b16 150 OMP_NUM_THREADS=4 -- \
    "$MB" bench --device cuda --model MaskCLIP-ViT-B-16 --precision bf16 --batch-size 128 --steps 5 --warmup 2 \
    --breakdown --loop-steps 0 --out "$OUT/perf.md"
step max_batch_vit_b16 120 OMP_NUM_THREADS=4 -- \
    "$MB" bench --device cuda --model MaskCLIP-ViT-B-16 --precision bf16 --variants clip,maskclip --steps 1 \
    --warmup 0 --max-batch --memory-gb 40 --max-batch-limit 2048 --out "$OUT/max_batch.md"

if [[ $DRY == 0 ]]; then
    echo "wrote $OUT ($FAILED failed step(s)); summary: $OUT/summary.tsv"
fi
exit $(( FAILED > 0 ? 1 : 0 ))
