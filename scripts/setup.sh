#!/usr/bin/env bash
# One-time set-up on a fresh machine: a project venv in .venv with torch/torchvision and fipbench (editable).
# torch==2.14.1 and torchvision==0.29.1 are the builds this machine keeps on local disk; pip takes them from
# there (other versions would download gigabytes or fail to import torchvision's operators).
#
#   bash scripts/setup.sh          what `fipbench run` needs
#   bash scripts/setup.sh --test   also the test tools: pytest, Ray (the [ray] extra, for the Ray executor test)
#                                  and Debian's chromium (the HTML leaderboard test); the suite then requires
#                                  them instead of skipping those tests (marker .venv/fipbench-test-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="dev"
if [ "${1:-}" = "--test" ]; then
    extras="dev,ray"
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.venv/bin/python -c "import torch, torchvision, torchvision.ops; print('fipbench setup: torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [ "${1:-}" = "--test" ]; then
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
        else
            echo "fipbench setup: install Debian's chromium (apt-get install chromium) for the HTML leaderboard test" >&2
            exit 1
        fi
    fi
    touch .venv/fipbench-test-tools
    echo "fipbench setup: test tools ready ($(chromium --version 2>/dev/null | head -1), ray $(.venv/bin/python -c 'import ray; print(ray.__version__)'))"
fi
