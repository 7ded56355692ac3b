#!/usr/bin/env bash
# One-time set-up on a fresh machine: a project venv in .venv with torch/torchvision and fipbench (editable).
# torch==2.14.1 and torchvision==0.29.1 are the builds this machine keeps on local disk; pip takes them from
# there (other versions would download gigabytes or fail to import torchvision's operators).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.venv/bin/python -c "import torch, torchvision, torchvision.ops; print('fipbench setup: torch', torch.__version__, 'torchvision', torchvision.__version__)"
