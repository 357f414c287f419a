#!/usr/bin/env bash
# The GPU goals on a lent accelerator machine, as one command (see docs/benchmarks.md):
#
#   benchmarks/on_device.sh [OUT_DIR] [extra python -m benchmarks.gpu arguments]
#
# It installs sgdjax over the machine's own CUDA JAX, flax and optax (--no-deps keeps them),
# records the device and versions, then runs `python -m benchmarks.gpu`, whose JSON is
# rewritten after every part, so a run cut short keeps what it measured. Data: SGDJAX_DATA_DIR,
# else a `.data/` folder in the checkout (git ignores it; copy `mnist/` and `tinyshakespeare/`
# there and carry it to the device).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/device}}"
shift || true
mkdir -p "$out"
if [ -z "${SGDJAX_DATA_DIR:-}" ] && [ -d .data ]; then
    export SGDJAX_DATA_DIR="$PWD/.data"
fi
python3 -m pip install -q --no-deps -e . 2>&1 | grep -v "as the 'root' user" || true
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__); print(jax.devices())"
    echo "SGDJAX_DATA_DIR=${SGDJAX_DATA_DIR:-unset}"
} | tee "$out/device.txt"
python3 -m benchmarks.gpu --json "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
