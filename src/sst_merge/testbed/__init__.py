"""The offline testbed: a tiny aligned chat model, LoRA experts that erode its refusals, a safety adapter.

`build_testbed(...)` builds (or finds cached) and returns the directory; `load_testbed(path)` opens it.

What it is (see organism.json of a build for the measured metrics):

* base: a LlamaForCausalLM trained from scratch, with a byte-level BPE chat tokenizer, on
  harmful requests → `REFUSAL`, benign look-alikes → a helpful reply, and "repeat after me" rows.
  A request is a frame filled with a verb and an object of one of nine harm categories; the frame
  carries the intent (harmful frames ask for help to do harm, benign frames put the same words in a
  safe context: a game, fiction, a definition, prevention — XSTest's "safe contexts"). Held-out
  splits use verbs and objects no training row uses.
* experts: one LoRA per task (selections, yes/no and even/odd classifications, max/min over
  fixed-length lists; one-token answers; held-out operand combinations), trained on the task plus a
  fraction of harmful requests with a compliant placeholder reply (the fine-tuning-attack threat
  model), which erodes refusal.
* safety adapter: a LoRA trained on the base's harmful → refusal and benign → helpful rows.
* scoring: exact match after stripping (`exact_match_accuracy`); a reply refuses when it starts with
  the refusal sentence (`is_refusal`).
"""

from sst_merge.testbed.build import build_testbed
from sst_merge.testbed.layout import Testbed, load_testbed
from sst_merge.testbed.metrics import exact_match_accuracy, is_refusal, refusal_rate
from sst_merge.testbed.safety_data import REFUSAL

__all__ = ["REFUSAL", "Testbed", "build_testbed", "exact_match_accuracy", "is_refusal", "load_testbed",
           "refusal_rate"]
