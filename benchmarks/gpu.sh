#!/usr/bin/env bash
# Training-step throughput on one CUDA GPU: the paper's GTI setting (synthetic, batch 48, bf16)
# and real Neubrandenburg z16 tiles at paper width (paper-gt: 384 wide, 12 blocks), each with
# and without `torch.compile` of the transformer blocks (issue 8). Two steps:
#
#   bash benchmarks/gpu.sh prepare   # here, with the project's venv and ../shared/data:
#                                    # writes .bench-gpu/ (dataset + wheels, git-ignored)
#   bash benchmarks/gpu.sh run       # on the GPU machine, from the repository root; writes
#                                    # JSON + logs to $OUT (default benchmarks/results/gpu)
#
# The GPU machine needs Python 3.12 with CUDA PyTorch, numpy, pandas, pyarrow, safetensors and
# tqdm (the device image has them) and no network: `prepare` downloads the other imports of the
# benchmark (pydantic, shapely, osmium and their needs) as cp312 manylinux wheels into
# .bench-gpu/whl, and `run` installs them into /tmp/site. With the device tool (from the
# checkout the session started in, after `prepare` there): run `bash benchmarks/gpu.sh run`
# with carry [".bench-gpu"] and timeout_s 600. It first runs the GPU tests (compiled
# FlexAttention vs dense attention, a step under sync debug mode "error"; 60 s), then the four
# measurements, each with its own time limit (475 s in all, mostly compiling), so a failure
# or a slow compile in one still leaves the
# others' JSON. On CUDA the packed layout's attention is FlexAttention, compiled once on its
# first call also in the "eager" runs (uncompiled it would materialise the N x N scores of the
# whole packed batch): the warm-up steps, which are not timed, pay for that compile.
#
# Quality at paper width (issue 21: a pretraining longer and wider than the CPU allows, read on
# val beside the CPU recipe's rows), also two steps, then two here:
#
#   bash benchmarks/gpu.sh prepare-quality  # here: the CPU recipe's pretraining data (train
#                                           # blocks + corpus) and the wheels -> .bench-gpu/
#   bash benchmarks/gpu.sh quality          # there, timeout_s 600, carry
#                                           # [".bench-gpu/pretrain", ".bench-gpu/whl"]
#   python benchmarks/scaling.py unpack gpu-paper-gt --from <files_at>   # here, then
#   python benchmarks/scaling.py eval gpu-paper-gt --at <steps> --seeds 2 --threads 2
#
# `quality` times a 20-step probe of the same run, trains as many steps as fit BUDGET_S
# (default 270 s, at most the preset's 100 epochs; PRESET default paper-gt) and packs the last
# checkpoint for the trip back (`scaling.py pack`: a float16 embedding-only model in parts of
# 15 MiB). The working tree with those two is ~60 MiB of the device's 64. One seed: read it as
# a single run beside the CPU recipe's pooled rows; a claim needs three (`scaling.py pool`).
# A dry run on a CPU: DEVICE=cpu PRESET=cpu-small BUDGET_S=20 THREADS=1 PYTHON=.venv/bin/python
# DATA=runs/benchmark/data/liechtenstein (for prepare-quality) OUT=/tmp/q.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.bench-gpu}

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    local shared=${GEOJEPA_SHARED:-../shared}
    mkdir -p "$BENCH/whl"
    if [ ! -f "$BENCH/nb16/manifest.json" ]; then
        if [ -n "${DATASET:-}" ]; then  # an already prepared Neubrandenburg z16, without its cache
            mkdir -p "$BENCH/nb16"
            cp -r "$DATASET"/{config.json,manifest.json,shards,vocab.parquet} "$BENCH/nb16/"
        else
            PYTHONPATH=src "$py" -m geojepa.cli prepare "$shared/data/neubrandenburg.osm.pbf" \
                -o "$BENCH/nb16" --zoom 16 -q
        fi
    fi
    wheels "$py"
    du -sh "$BENCH"
}

wheels() {
    # the benchmark's imports that the device image lacks (versions as in requirements pins)
    local pins=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
                typing-inspection==0.4.5 shapely==2.2.0 osmium==4.3.2)
    "$1" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$BENCH/whl" "${pins[@]}"
}

install_wheels() {
    if ls "$BENCH"/whl/*.whl >/dev/null 2>&1; then
        "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$BENCH"/whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
}

prepare_quality() {
    # the pretraining data of the CPU recipe (the benchmark's train blocks + the ten corpus
    # extracts, prepared by `scaling.py train ... --corpus`), without its token cache
    local py=${PYTHON:-.venv/bin/python} data=${DATA:-runs/benchmark/pretrain-corpus}
    [ -f "$data/manifest.json" ] || { echo "no prepared pretraining data at $data" >&2; exit 1; }
    mkdir -p "$BENCH/pretrain" "$BENCH/whl"
    cp -r "$data"/{config.json,manifest.json,shards,vocab.parquet} "$BENCH/pretrain/"
    # the tag table (there is no text model there) travels in float16, to keep the working tree
    # under the device's 64 MiB; `quality` widens it back: the GPU run's tag inputs differ
    # from the CPU runs' by float16 rounding (~5e-4 relative)
    tag_table "$py" "$data" "$BENCH/pretrain" float16
    wheels "$py"
    du -sh "$BENCH/pretrain" "$BENCH/whl"
}

tag_table() {  # PYTHON SRC DST DTYPE: the dataset's tag table (the text embeddings) as DTYPE
    "$1" - "$2" "$3" "$4" <<'PY'
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

src, dst, dtype = Path(sys.argv[1]), Path(sys.argv[2]), getattr(torch, sys.argv[3])
for path in src.glob("tag_table-*.safetensors"):
    with safe_open(str(path), "pt") as f:
        table, meta = f.get_tensor("table"), f.metadata()
    save_file({"table": table.to(dtype).contiguous()}, str(dst / path.name), metadata=meta)
PY
}

quality() {
    # A pretraining at paper width on the GPU, packed for `scaling.py unpack` + `eval` here:
    # a 20-step probe of the same run times a step (start-up and compiling left out), the run
    # gets the steps that fit BUDGET_S seconds (at most the preset's 100 epochs), and its last
    # checkpoint comes back as a compact float16 model in parts of 15 MiB (paper-gt: ~46 MiB
    # in 4 parts; with the record, the metrics and one log, 7 files: the device returns 8).
    local out=${OUT:-benchmarks/results/gpu-quality} py=${PYTHON:-python3}
    local preset=${PRESET:-paper-gt} budget=${BUDGET_S:-270} threads=${THREADS:-8}
    local name=${NAME:-gpu-$preset} data="$BENCH/pretrain" steps log
    mkdir -p "$out"
    log="$out/$name.log"
    [ "${DEVICE:-cuda}" = cuda ] && install_wheels "$py"  # DEVICE=cpu: a dry run here
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$log" 2>&1 || true
    tag_table "$py" "$data" "$data" float32
    local opts=(--preset "$preset" --data "$data" --threads "$threads")
    timeout 150 "$py" benchmarks/scaling.py train "$name-probe" "${opts[@]}" --steps 20 \
        --every 10 >>"$log" 2>&1 || { tail -n 30 "$log"; return 1; }
    steps=$("$py" benchmarks/scaling.py steps "$name-probe" --preset "$preset" --data "$data" \
            --seconds "$budget")
    echo "probe: $steps steps fit $budget s" | tee -a "$log"
    timeout $((budget + 150)) "$py" benchmarks/scaling.py train "$name" "${opts[@]}" \
        --steps "$steps" --every "$steps" >>"$log" 2>&1 &&
        "$py" benchmarks/scaling.py pack "$name" --at "$steps" --out "$out" >>"$log" 2>&1 ||
        { tail -n 30 "$log"; return 1; }
    tail -n 8 "$log"
    ls -la "$out"
}

run() {
    # DEVICE/SETTINGS/PRESET/STEPS/WARMUP: a dry run on a CPU with a small model, e.g.
    # DEVICE=cpu SETTINGS=cpu-small PRESET=cpu-small STEPS=2 WARMUP=1 OUT=/tmp/g PYTHON=... run
    local out=${OUT:-benchmarks/results/gpu} py=${PYTHON:-python3} device=${DEVICE:-cuda}
    local settings=${SETTINGS:-gti} preset=${PRESET:-paper-gt} steps=${STEPS:-30}
    local warmup=${WARMUP:-5} status=0
    mkdir -p "$out"
    [ "$device" = cuda ] && install_wheels "$py"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 ||
        true
    local common=(benchmarks/train_step.py --device "$device" --dtype bf16 --steps "$steps"
                  --warmup "$warmup")
    local synth=("${common[@]}" --settings "$settings")
    local real=("${common[@]}" --data "$BENCH/nb16" --preset "$preset")
    # GPU correctness first: the compiled FlexAttention against dense attention (values and
    # gradients) and a training step under sync debug mode "error" (tests skipped on CPUs)
    if [ "$device" = cuda ]; then
        timeout 60 "$py" -m pytest -q -p no:cacheprovider -rs tests/test_step_hygiene.py \
            tests/test_packed.py >"$out/gpu-tests.log" 2>&1 || status=1
    fi
    # eager first (cheap, and kept if a compile fails), then --compile (the eager side is run
    # again in the same process: the ratio comes from one run); time limits fit 10 minutes
    timeout 75 "$py" "${synth[@]}" --out "$out/gti-eager.json" >"$out/gti-eager.log" 2>&1 ||
        status=1
    timeout 100 "$py" "${real[@]}" --out "$out/real-nb16-eager.json" \
        >"$out/real-nb16-eager.log" 2>&1 || status=1
    timeout 150 "$py" "${synth[@]}" --no-naive --compile --out "$out/gti-compile.json" \
        >"$out/gti-compile.log" 2>&1 || status=1
    timeout 150 "$py" "${real[@]}" --compile --out "$out/real-nb16-compile.json" \
        >"$out/real-nb16-compile.log" 2>&1 || status=1
    tail -n 4 "$out"/*.log
    ls -la "$out"
    return $status
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    prepare-quality) prepare_quality ;;
    quality) quality ;;
    *) echo "usage: bash benchmarks/gpu.sh prepare|run|prepare-quality|quality" >&2; exit 2 ;;
esac
