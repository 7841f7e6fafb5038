#!/usr/bin/env bash
# The real vllm wheel for the `vllm_contract` tests (tests/test_vllm_contract.py), CPU only:
# the pinned wheel and the few pure-Python/small deps its sampling, prompt-parsing, tokenizer
# and chat-template modules import, all with --no-deps into TARGET (never site-packages, so the
# "vllm extra missing" test stays honest). pip's cache keeps a re-run to seconds; a marker file
# makes an up-to-date TARGET a no-op.
#
#   bash tests/real_vllm/install.sh [TARGET]     # default: .venv/vllm-$VLLM_VERSION
set -euo pipefail
cd "$(dirname "$0")/../.."

VLLM_VERSION=0.33.0  # = docker/Dockerfile's VLLM_VERSION (tests/test_vllm_contract.py checks)
# what `import vllm.sampling_params, vllm.renderers.hf, vllm.tokenizers` needs beyond the
# hf+test extras (torch, transformers, pydantic, openai, fastapi, ...), found by importing
DEPS=(msgspec==0.23.0 cbor2==6.3.0 cachetools==8.0.2 pyzmq==27.3.0 aiohttp==3.14.5
      multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 aiohappyeyeballs==2.7.1 aiosignal==1.4.0
      frozenlist==1.8.0 openai-harmony==0.0.8 cloudpickle==3.1.3 pybase64==1.5.1 uvloop==0.23.0
      py-cpuinfo==9.0.0 prometheus_client==0.26.0
      # the Mistral tokenizer (and its tekken.json files, used as a Mistral-format fixture)
      mistral_common==1.13.1 pydantic-extra-types==2.11.1 pycountry==26.2.16 tiktoken==0.14.0)
TARGET="${1:-.venv/vllm-$VLLM_VERSION}"
stamp="$TARGET/.installed-$(printf '%s\n' "$VLLM_VERSION" "${DEPS[@]}" | sha256sum | cut -c1-16)"

if [ -e "$stamp" ]; then
  echo "real vllm $VLLM_VERSION already in $TARGET"
  exit 0
fi
rm -rf "$TARGET"
# bounded: a stuck index fails here, with the reason, not as a hung CI job
timeout 900 python -m pip install -q --no-deps --target "$TARGET" "vllm==$VLLM_VERSION" "${DEPS[@]}"
PYTHONPATH="$TARGET" timeout 300 python -c \
  'import vllm.sampling_params, vllm.renderers.hf, vllm.renderers.mistral, vllm.tokenizers.mistral, vllm.config.model, mistral_common'
touch "$stamp"
echo "real vllm $VLLM_VERSION installed in $TARGET"
