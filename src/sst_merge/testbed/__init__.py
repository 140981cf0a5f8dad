"""The offline testbed: a tiny aligned chat model, LoRA experts that erode its refusals, a safety adapter.

`build_testbed(...)` builds (or finds cached) and returns the directory; `load_testbed(path)` opens it.
"""

from sst_merge.testbed.build import build_testbed
from sst_merge.testbed.layout import Testbed, load_testbed
from sst_merge.testbed.metrics import exact_match_accuracy, is_refusal, refusal_rate
from sst_merge.testbed.safety_data import REFUSAL

__all__ = ["REFUSAL", "Testbed", "build_testbed", "exact_match_accuracy", "is_refusal", "load_testbed",
           "refusal_rate"]
