"""SST-Merge: safety-subspace-targeted merging of LoRA adapters."""

__version__ = "0.1.0"
