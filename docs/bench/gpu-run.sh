#!/bin/bash
# mpnet fine-tune on the GPU machine: reassemble the fp16 model, restore fp32, run bench-quality.
set -euo pipefail
R=$PWD; Z="env LD_LIBRARY_PATH=$R/.gpu/w/bin $R/.gpu/w/bin/zstd"
mkdir -p /root/m && cp .gpu/c3/* /root/m/; rm -rf /root/models
cat /root/m/mpnet16.tar.zst.00 /root/m/mpnet16.tar.zst.01 /root/m/mpnet16.tar.zst.02 /root/m/mpnet16.tar.zst.03 > /root/mp.tar.zst
echo "$(cut -d' ' -f1 .gpu/m/SHA256)  /root/mp.tar.zst" | sha256sum -c -
mkdir -p /root/models && $Z -dc /root/mp.tar.zst | tar -C /root/models -xf -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/w/whl/*.whl
export PYTHONPATH=/tmp/site:$R HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 - <<'PY'
from safetensors.torch import load_file, save_file
import os
d = "/root/models/all-mpnet-base-v2"
t = load_file(d + "/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, d + "/model.safetensors", metadata={"format": "pt"})
os.remove(d + "/model.fp16.safetensors")
import torch, transformers, sentence_transformers, datasets
print("torch", torch.__version__, "transformers", transformers.__version__, "st", sentence_transformers.__version__, "datasets", datasets.__version__, torch.cuda.get_device_name(0))
PY
mkdir -p /root/data && $Z -dc .gpu/w/resume_data.csv.zst > /root/data/resume_data.csv
python3 -m tools bench-quality --csv /root/data/resume_data.csv --models /root/models/all-mpnet-base-v2 \
  --splits "${SPLITS:-resume,job}" --mode "${MODE:-full+head}" --epochs "${EPOCHS:-2}" --device cuda --time-budget-s "${BUDGET:-240}" \
  --out "$OUT/quality-mpnet-gpu.json" 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | grep -v "^fine-tuning\|^training head\|^evaluating\|^embedding" | tail -c 6000
grep -E "^fine-tuning .*/.*" "$OUT/log.txt" | tail -3 || true
