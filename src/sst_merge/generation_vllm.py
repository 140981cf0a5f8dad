"""Optional vLLM backend for greedy chat generation (a GPU server engine; never required).

vLLM is imported only when `generate_chat_vllm` is called; without it the call fails with a clear
message and the transformers backend (`sst_merge.generation.generate_chat`) is the one to use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sst_merge.chat_data import chat_prompts


class VLLMChat:
    """A vLLM engine for one base model (and optional PEFT adapter, served as a LoRA), built once.

    `generate(prompts, max_new_tokens, system, stop_strings)` gives greedy replies through the chat
    template, cut before the first stop string and stripped, like the transformers backend's.
    """

    def __init__(self, base: str | Path, adapter: str | Path | None = None, dtype: str = "auto",
                 tensor_parallel_size: int = 1, max_lora_rank: int = 64) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise RuntimeError("the vLLM backend needs the `vllm` package (pip install vllm); "
                               "the default transformers backend needs nothing more") from exc
        self.llm = LLM(model=str(base), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       enable_lora=adapter is not None, max_lora_rank=max_lora_rank)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter is not None else None

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 256, system: str | None = None,
                 stop_strings: Sequence[str] = ()) -> list[str]:
        """Greedy replies to the user messages `prompts`, in order."""
        from vllm import SamplingParams

        texts = chat_prompts(self.llm.get_tokenizer(), prompts, system)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop_strings) or None)
        outputs = self.llm.generate(texts, params, lora_request=self.lora)
        return [out.outputs[0].text.strip() for out in outputs]
