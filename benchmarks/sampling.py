"""Which sampling settings make self-generated text that transfers: judged downstream, not by how the text reads.

    python benchmarks/sampling.py

SmolLM2-135M-Instruct, banded r=128 calibrated on 8,192 tokens of pydoc (training part). For each setting the
dense teacher writes ~8k tokens (batches of 64, 128 new tokens, seed 2); ``cheap`` refits the factors on the
teacher's hidden states of those 8,192 tokens (150 steps); perplexity ratios to dense on 1,024 held-back tokens of
licenses, changelogs, German and Russian messages, none of which is in calibration or generation prompts.
Writes benchmarks/results/sampling.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.calibration.sampling import GenerationConfig, sample_texts
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.bundled import resolve
from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals
from hf_factor_embed.recovery.generate import starts

KINDS = ("licenses", "changelogs", "lang:de", "lang:ru")
SETTINGS = ((0.7, 50, 0.95), (1.0, 50, 0.95), (1.0, 0, 1.0), (1.3, 100, 0.95))  # temperature, top-k, top-p


def main() -> None:
    path = resolve("bundled:smollm2")
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    evals = {k: tok(load_source(k).split()[0][:12000], return_tensors="pt").input_ids[0][:1024] for k in KINDS}
    pydoc = tok(load_source("pydoc").split()[1][:60000], return_tensors="pt").input_ids[0]
    base = {k: perplexity(dense, e) for k, e in evals.items()}
    start = hfe.patch_model(copy.deepcopy(dense), rank=128, calibration=pydoc[:8192])
    rows = [{"setting": "training-free", "ratios": {k: perplexity(start, e) / base[k] for k, e in evals.items()}}]
    print(rows[-1], flush=True)
    for temperature, top_k, top_p in SETTINGS:
        config = GenerationConfig(64, 128, temperature, top_k, top_p, seed=2)
        texts, stats = sample_texts(dense, tok, 8000, config, starts, progress=False)
        ids = torch.tensor([i for t in texts for i in tok(t).input_ids])[:8192]
        student = copy.deepcopy(start)
        cheap_refit(student, collect_teacher_signals(dense, ids, progress=False), CheapRefitConfig(steps=150))
        ratios = {k: perplexity(student, e) / base[k] for k, e in evals.items()}
        rows.append({"temperature": temperature, "top_k": top_k, "top_p": top_p, "ratios": ratios, **stats})
        print(rows[-1], flush=True)
    out = Path(__file__).parent / "results" / "sampling.json"
    out.write_text(json.dumps({"command": "python benchmarks/sampling.py", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
