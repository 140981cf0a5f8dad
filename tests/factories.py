"""Test helpers re-exported from `sst_merge.synthetic` (tiny random Llama models and LoRA adapters)."""

from __future__ import annotations

from sst_merge.synthetic import make_random_adapter, make_random_llama, tiny_llama_config

make_tiny_llama = make_random_llama

__all__ = ["make_random_adapter", "make_random_llama", "make_tiny_llama", "tiny_llama_config"]
