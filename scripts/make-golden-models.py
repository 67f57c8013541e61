#!/usr/bin/env python3
"""Makes the golden reference files under tests/data/golden/ from the external references.

  python3 -m venv /tmp/venv-golden
  /tmp/venv-golden/bin/pip install torch transformers safetensors gguf numpy
  /tmp/venv-golden/bin/python scripts/make-golden-models.py [--out tests/data/golden]

Writes, for each tiny random model (llama-gqa: GQA, llama3 rope scaling, tied; llama-untied: MHA,
untied; mistral: GQA 4/1, saved sharded; qwen2: q/k/v bias, tied):
  <name>/config.json, model.safetensors (or model-0000i-of-0000n.safetensors + index.json)
  <name>/golden.safetensors  input_ids I64 [2, 16], logits F32 [2, 16, vocab] (fp32, CPU, eager
                             attention), greedy_ids I64 [2, 8] (8 greedy tokens per sequence)
  <name>/golden.json         the same ids as JSON, plus the smallest top-1/top-2 logit margin seen
                             during the greedy decode (so a test knows ties cannot flip a token)
and llama-bf16/ (llama-gqa saved in bfloat16, no logits: for the bit-exact bf16 round trip).

GGUF fixtures, written with the gguf package (llama.cpp's own gguf-py writer) the way
convert_hf_to_gguf.py writes a Llama: tensor names blk.N.*, Q/K rows permuted for llama.cpp's rope
layout, 1-D tensors kept F32:
  gguf/llama-untied-{f32,f16,q8_0,q4_0}.gguf   from llama-untied
  gguf/llama-untied-{q8_0,q4_0}.expected.safetensors   every weight dequantised by gguf-py
                             (gguf.quants.dequantize), un-permuted back to HF layout, HF names
  gguf/quant-types.gguf      random blocks of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K
  gguf/quant-types.expected.safetensors   gguf-py's dequantisation of each (GGUF order)
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file, load_file
import gguf

VOCAB = 256
SEQ = 16
NEW = 8


def randomize(model, seed):
    """transformers' default init (std 0.02) gives near-uniform logits, where greedy ties would
    flip on rounding noise; use larger weights so every token has a clear margin."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def greedy(model, ids):
    out, margin = [], float("inf")
    cur = ids.clone()
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(cur).logits[:, -1].float()
            top = logits.topk(2, dim=-1).values
            margin = min(margin, (top[:, 0] - top[:, 1]).min().item())
            nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            cur = torch.cat([cur, nxt], dim=1)
    return torch.cat(out, dim=1), margin


def make(name, cls, cfg, out, seed, shard=None, dtype=torch.float32, logits=True):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed)
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True,
                                    **({"max_shard_size": shard} if shard else {}))
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    if not logits:
        return model
    model = model.float()
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=g)
    with torch.no_grad():
        lg = model(ids).logits.float()
    gen, margin = greedy(model, ids)
    assert margin > 1e-3, f"{name}: greedy margin {margin} too small, pick another seed"
    save_file({"input_ids": ids.numpy().astype(np.int64), "logits": lg.numpy(),
               "greedy_ids": gen.numpy().astype(np.int64)},
              os.path.join(d, "golden.safetensors"))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "greedy_ids": gen.tolist(),
                   "min_greedy_margin": margin, "transformers": transformers.__version__,
                   "torch": torch.__version__, "attn_implementation": "eager"}, f, indent=1)
    print(f"{name}: logits {tuple(lg.shape)}, greedy margin {margin:.4f}")
    return model


# ------------------------------------------------------------------------------------ GGUF --

def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> llama.cpp interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    return f"blk.{parts[2]}." + LAYER[".".join(parts[3:])]


def write_gguf(model_dir, cfg, path, qtype):
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("kvlab golden llama-untied")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope_theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    w.add_rope_freq_base(float(rope_theta))
    w.add_vocab_size(cfg.vocab_size)
    ftype = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[qtype]
    w.add_file_type(ftype)
    # A byte-level tokenizer in GGUF's "llama" (SentencePiece) form, for the tokenizer issue.
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(3, VOCAB)]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([float(-i) for i in range(VOCAB)])
    w.add_token_types([2, 3, 3] + [6] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    expected = {}
    qt = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]
    for hf, t in tensors.items():
        t = t.astype(np.float32)
        if hf.endswith("q_proj.weight"):
            t = permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            t = permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        if t.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            data, dt = t, gguf.GGMLQuantizationType.F32
        elif qt == gguf.GGMLQuantizationType.F16:
            data, dt = t.astype(np.float16), qt
        else:
            data, dt = gguf.quants.quantize(t, qt), qt
        w.add_tensor(gguf_name(hf), data, raw_dtype=dt)
        deq = gguf.quants.dequantize(data, dt).astype(np.float32).reshape(t.shape)
        if hf.endswith("q_proj.weight"):
            deq = unpermute(deq, cfg.num_attention_heads, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            deq = unpermute(deq, cfg.num_attention_heads, cfg.num_key_value_heads)
        expected[hf] = np.ascontiguousarray(deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def write_quant_types(out):
    """Random blocks of every type kvlab dequantises; scales kept finite so NaN never compares."""
    rng = np.random.default_rng(7)
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(os.path.join(out, "quant-types.gguf"), "llama")
    expected = {}
    rows, cols = 3, 512
    for qt in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K):
        name = f"t_{qt.name.lower()}"
        if qt in (Q.F32, Q.F16, Q.BF16):
            x = rng.standard_normal((rows, cols)).astype(np.float32)
            data = x if qt == Q.F32 else (x.astype(np.float16) if qt == Q.F16 else
                                         gguf.quants.quantize(x, Q.BF16))
        else:
            block, nbytes = gguf.GGML_QUANT_SIZES[qt]
            nb = rows * cols // block
            raw = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
            # The f16 scale fields: random finite halves in [-1, 1].
            def put_half(off):
                h = (rng.uniform(-1, 1, nb).astype(np.float16)).view(np.uint8).reshape(nb, 2)
                raw[:, off:off + 2] = h
            if qt in (Q.Q8_0, Q.Q4_0):
                put_half(0)
            elif qt in (Q.Q4_1, Q.Q4_K):
                put_half(0)
                put_half(2)
            elif qt == Q.Q6_K:
                put_half(nbytes - 2)
            data = raw.reshape(rows, -1)
        w.add_tensor(name, data, raw_dtype=qt)
        expected[name] = np.ascontiguousarray(
            gguf.quants.dequantize(data, qt).astype(np.float32).reshape(rows, cols))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(out, "quant-types.expected.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "golden"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.set_grad_enabled(False)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                  attn_implementation="eager")

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    cfg = transformers.LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   rope_theta=10000.0, rope_scaling=llama3, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True, **common)
    make("llama-gqa", transformers.LlamaForCausalLM, cfg, out, seed=1)
    make("llama-bf16", transformers.LlamaForCausalLM, cfg, out, seed=1, dtype=torch.bfloat16,
         logits=False)

    cfg_u = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                     rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                     **common)
    make("llama-untied", transformers.LlamaForCausalLM, cfg_u, out, seed=2)

    cfg_m = transformers.MistralConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                       rope_theta=1000000.0, sliding_window=4096,
                                       tie_word_embeddings=False, **common)
    make("mistral", transformers.MistralForCausalLM, cfg_m, out, seed=3, shard="150KB")

    cfg_q = transformers.Qwen2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     rope_theta=1000000.0, tie_word_embeddings=True,
                                     use_sliding_window=False, **common)
    make("qwen2", transformers.Qwen2ForCausalLM, cfg_q, out, seed=4)

    gd = os.path.join(out, "gguf")
    shutil.rmtree(gd, ignore_errors=True)
    os.makedirs(gd)
    for q in ("f32", "f16", "q8_0", "q4_0"):
        exp = write_gguf(os.path.join(out, "llama-untied"), cfg_u,
                         os.path.join(gd, f"llama-untied-{q}.gguf"), q)
        if q in ("q8_0", "q4_0"):
            save_file(exp, os.path.join(gd, f"llama-untied-{q}.expected.safetensors"))
    write_quant_types(gd)
    print("versions: torch", torch.__version__, "transformers", transformers.__version__,
          "gguf", getattr(gguf, "__version__", "0.19.0"))


if __name__ == "__main__":
    main()
