#!/usr/bin/env bash
# Fill wheels/ (git-ignored) with the Python packages scripts/gpu_check.sh installs on a GPU machine that has
# torch but no network and none of our other dependencies. Run it here, where pip reaches the package index:
#
#   scripts/gpu_wheels.sh          # for CPython 3.12 on manylinux x86_64 (the lent H200 image's python3)
#   scripts/gpu_wheels.sh 3.11     # for another CPython on the GPU machine
#
# Versions are the ones this checkout is tested with (what .venv has installed, i.e. constraints.txt's pins).
# Not carried: torch (the GPU machine's CUDA build stays), numpy, pandas, pyarrow (~74 MB for CPython 3.12; the image has them),
# huggingface-hub (the image's 1.x satisfies transformers and datasets). The wheel set is kept well under the
# 64 MiB that the working tree plus carried paths may take: the script fails above WHEELS_MAX_MB (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${1:-3.12}"
DEST=wheels
MAX_MB="${WHEELS_MAX_MB:-40}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

# sft_core's training path (transformers, peft, datasets and what the image lacks or has too old), and TRL
# for the benchmark's TRL row. Binary ones (pydantic-core, regex, tokenizers, safetensors) come as
# manylinux x86_64 wheels for PY_VERSION (abi3 where the project publishes one).
PACKAGES=(transformers peft datasets trl pydantic pydantic-core annotated-types typing-inspection typing-extensions
          dill multiprocess regex fsspec tokenizers safetensors)

mapfile -t PINS < <("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import importlib.metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed in this environment: run `make setup` (and pip install -e .[bench]) first")
PY
)

rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST.tmp" "${PINS[@]}"
printf 'python_version=%s\n' "$PY_VERSION" > "$DEST.tmp/MANIFEST"
printf '%s\n' "${PINS[@]}" >> "$DEST.tmp/MANIFEST"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"

total_kb=$(du -sk "$DEST" | cut -f1)
ls -l "$DEST" | awk 'NR > 1 {printf "  %8.1f MB  %s\n", $5 / 1048576, $9}'
echo "wheels/: $(ls "$DEST"/*.whl | wc -l) wheels, $((total_kb / 1024)) MB in all, for CPython $PY_VERSION"
if [ "$((total_kb / 1024))" -gt "$MAX_MB" ]; then
    echo "error: wheels/ is over WHEELS_MAX_MB=$MAX_MB MB; the working tree plus carried paths may take 64 MiB" >&2
    exit 1
fi
