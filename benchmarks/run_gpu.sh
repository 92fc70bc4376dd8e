#!/usr/bin/env bash
# The GPU checks of a short lease (one H200 or H100): the decoding targets (about 3.5 minutes on an H200)
# (benchmarks/bench_gpu.py: glm-2b default / compiled / batch 16, glm-10b, fill_blanks batched, fp32 greedy equality,
# ChatGLM-6B), written into the "(cuda)" section of benchmarks/RESULTS.md, then the CUDA-only tests (2-3 minutes).
#
#   bash benchmarks/run_gpu.sh                      # on the GPU machine, from the repository root
#   GLM_HF_GPU_SMOKE=1 bash benchmarks/run_gpu.sh   # the same script on tiny shapes on a CPU (checks the script)
#
# Each target runs on its own (a failure is reported and the others go on); copies of the logs and of RESULTS.md go
# to $OUT when it is set. Needs torch with CUDA and transformers (5.17+) installed; the package runs from src/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
out="${OUT:-}"
log() { if [[ -n "$out" ]]; then tee "$out/$1"; else cat; fi; }

"$python" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__)"
"$python" benchmarks/bench_gpu.py --output benchmarks/RESULTS.md 2>&1 | log bench_gpu.log | grep -v '^\[transformers\]'
if [[ -n "$out" ]]; then cp benchmarks/RESULTS.md "$out/RESULTS.md"; fi
# The tests that skip or branch on CUDA (grep the tests for `cuda`): test_cuda.py, and those of the other files;
# `glm-hf infill` with no --device runs on the GPU where there is one: its stderr must stay clean there too.
"$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_scale.py tests/test_attention_backends.py \
    tests/test_infilling.py::test_cli_infill_runs_on_the_device_and_dtype_asked_for \
    tests/test_infilling.py::test_commands_on_small_models_print_no_progress_bars_or_false_warnings \
    tests/test_infilling.py::test_cli_infill_refuses_bad_options_before_loading_a_model \
    tests/test_chatglm_chat.py::test_bitsandbytes_quantized_chatglm_generates \
    2>&1 | log cuda_tests.log | tail -15
