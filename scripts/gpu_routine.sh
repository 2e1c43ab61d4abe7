#!/usr/bin/env bash
# The GPU testing routine, in one call on the GPU machine:
#   1. the GPU test suite (bf16 kernels vs references, graphs vs eager, engine vs the CPU path);
#   2. the skinny-GEMM sweep against cuBLAS (STAGES contains "gemv");
#   3. the decode benchmark at the issue's contexts (STAGES contains "decode");
#   4. quantized GEMVs per format, bitsandbytes side by side when it is importable (STAGES contains
#      "quant"). To have it, carry ".bnb" (ignored): `pip download --no-deps --only-binary=:all:
#      --python-version 3.12 --platform manylinux_2_24_x86_64 bitsandbytes==0.50.2`, unzip the wheel
#      into .bnb/ and delete every libbitsandbytes_*.so but cuda130 (4 MB instead of 43);
#   5. the throughput benchmark at 256 and 512 sequences (STAGES contains "throughput");
#   6. A/B of the decode-path switches (STAGES contains "ab"): bench decode at 2048 and 16384 and
#      the bf16 GEMV rows of bench.quant under FLOORLINE_FUSE / FLOORLINE_PDL_EARLY on and off;
#   7. ablations of the batch-1 step (STAGES contains "ablate"): bench decode at 2048 with one piece
#      removed at a time (scripts/ablate_decode.py; ABLATE_ARGS picks the format, default int4 weights
#      and head), then the kernels' marginal costs by their place in the layer
#      (scripts/decode_timeline.py --by-position).
# Default STAGES: "tests decode". Logs go to $OUT (or ./gpu_out); the last lines printed are the tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
STAGES=${STAGES:-"tests decode"}
MODEL=${MODEL:-llama-3.1-8b}
CONTEXTS=${CONTEXTS:-2048,4096,8192,16384}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .bnb ]; then export PYTHONPATH=$PYTHONPATH:$PWD/.bnb; fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
status=0
if [[ $STAGES == *tests* ]]; then
  timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q -m gpu -p no:cacheprovider tests --timeout 120 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 || status=1
fi
if [[ $STAGES == *gemv* ]] && [ -f floorline/bench/kernels.py ]; then
  timeout ${GEMV_TIMEOUT:-170} python3 -m floorline.bench.kernels --sweep --budget-s ${GEMV_BUDGET:-140} --out "$OUT/gemv_best.json" 2>&1 | tee "$OUT/gemv.log" | tail -40 || status=1
fi
if [[ $STAGES == *decode* ]]; then
  for mode in ${DECODE_MODES:-graphs eager}; do
    flag=""; [ "$mode" = eager ] && flag="--enforce-eager"
    ctx=$CONTEXTS; [ "$mode" = eager ] && ctx=${EAGER_CONTEXTS:-2048}
    timeout ${DECODE_TIMEOUT:-110} python3 -m floorline.cli bench decode --model "$MODEL" --load-format dummy --contexts "$ctx" \
      $flag --json "$OUT/decode_$mode.json" 2>&1 | tee "$OUT/decode_$mode.log" | tail -12 || status=1
  done
fi
if [[ $STAGES == *quant* ]]; then
  timeout ${QUANT_TIMEOUT:-200} python3 -m floorline.bench.quant --m 1 4 16 2>&1 | tee "$OUT/quant.log" | tail -30 || status=1
fi
if [[ $STAGES == *throughput* ]]; then
  for seqs in ${THROUGHPUT_SEQS:-256 512}; do
    timeout ${THROUGHPUT_TIMEOUT:-120} python3 -m floorline.cli bench throughput --model "$MODEL" --load-format dummy \
      --max-num-seqs "$seqs" --max-num-batched-tokens 8192 --json "$OUT/throughput_$seqs.json" 2>&1 \
      | tee "$OUT/throughput_$seqs.log" | tail -6 || status=1
  done
fi
if [[ $STAGES == *ab* ]]; then
  for v in "1 1" "1 0" "0 0"; do
    set -- $v
    echo "== FLOORLINE_FUSE=$1 FLOORLINE_PDL_EARLY=$2" | tee -a "$OUT/ab.log"
    FLOORLINE_FUSE=$1 FLOORLINE_PDL_EARLY=$2 timeout ${AB_TIMEOUT:-70} python3 -m floorline.cli bench decode \
      --model "$MODEL" --load-format dummy --contexts 2048,16384 2>&1 | tail -3 | tee -a "$OUT/ab.log" || status=1
    FLOORLINE_FUSE=$1 FLOORLINE_PDL_EARLY=$2 timeout ${AB_TIMEOUT:-70} python3 -m floorline.bench.quant --formats bf16 \
      --m 1 2>&1 | grep -E "^bf16 " | tee -a "$OUT/ab.log" || status=1
  done
fi
if [[ $STAGES == *ablate* ]]; then
  args=${ABLATE_ARGS:-"--quantization int4 --lm-head-quantization int4"}
  for v in ${ABLATE_VARIANTS:-base noattn nokv nonorm no-6144.4096 no-4096.4096 no-28672.4096 no-4096.14336 no-128256.4096}; do
    echo "== $v: $(timeout ${ABLATE_TIMEOUT:-100} python3 scripts/ablate_decode.py "$v" -- bench decode --model "$MODEL" \
      --load-format dummy --contexts 2048 --steps 32 $args 2>&1 | grep -A1 'context  ms' | tail -1)" | tee -a "$OUT/ablate.log"
  done
  timeout ${TIMELINE_TIMEOUT:-120} python3 scripts/decode_timeline.py --by-position $args 2>&1 | tee "$OUT/timeline.log" | head -16 || status=1
fi
exit $status
