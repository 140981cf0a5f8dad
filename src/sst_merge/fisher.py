"""FIMCalculator: Kronecker-factored (K-FAC) Fisher information of each adapted module, in its subspace (DESIGN §3).

For y = W x the per-token gradient of a core C (δW = U C Vᵀ) is g̃ x̃ᵀ with x̃ = Vᵀx (q,) and
g̃ = Uᵀ ∂ℓ/∂y (p,). Forward hooks on the adapted Linear modules record x̃, tensor hooks on their
outputs record g̃, and per module we keep the sums

    Σ x̃x̃ᵀ (q, q),   Σ g̃g̃ᵀ (p, p),   Σ (g̃∘g̃)(x̃∘x̃)ᵀ (p, q)  (the exact per-token diagonal),
    Σ g̃x̃ᵀ (p, q)  (the gradient of the summed loss w.r.t. the core)

and the token count. Sums and counts add, so factors of several passes or processes combine exactly;
Ā = Σx̃x̃ᵀ/n, Ḡ = Σg̃g̃ᵀ/n, g = Σg̃x̃ᵀ/n (the gradient of the per-token loss whose curvature Ā ⊗ Ḡ
approximates). The loss is the summed NLL of the response tokens only (the prompt is context); every
non-padding position contributes x̃ and g̃. The pass also records the data's NLL (nats per response
token), the number that says whether the Fisher is informative there: at a base trained on the very
rows it is ~0, and so are its gradients. The Fisher is taken at the base model, or at the base plus
given low-rank updates (`updates`, e.g. the task-arithmetic merge or a filtered merge), added to the
weights for the pass.

Around the pass: `chat_data` encodes and collates the examples, `fisher_labels` gives the labels and
the loss, `fisher_file` reads and writes the factors, `fisher_cache` keeps them by content hash.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sst_merge.chat_data import IGNORE, Example, collate, encode_chat, read_chat_jsonl
from sst_merge.errors import InputError
from sst_merge.fisher_labels import example_generator, response_nll, sample_labels
from sst_merge.progress import track

FisherKind = Literal["empirical", "true"]


@dataclass
class KFACFactors:
    """Accumulated sums of one module (float64): A_sum (q, q), G_sum (p, p), diag_sum (p, q), grad_sum
    (p, q); tokens (count of positions). loss_sum (nats) and labels (count) are the data's summed NLL
    over its response tokens, for the record."""

    A_sum: torch.Tensor
    G_sum: torch.Tensor
    diag_sum: torch.Tensor
    tokens: float = 0.0
    grad_sum: torch.Tensor | None = None
    loss_sum: float = 0.0
    labels: float = 0.0

    def __post_init__(self) -> None:
        if self.grad_sum is None:
            self.grad_sum = torch.zeros_like(self.diag_sum)

    @classmethod
    def zeros(cls, p: int, q: int) -> KFACFactors:
        """Empty sums for a (p, q) core."""
        f64 = torch.float64
        return cls(torch.zeros(q, q, dtype=f64), torch.zeros(p, p, dtype=f64), torch.zeros(p, q, dtype=f64), 0.0)

    def _mean(self, total: torch.Tensor) -> torch.Tensor:
        return total / self.tokens if self.tokens > 0 else torch.zeros_like(total)

    @property
    def A(self) -> torch.Tensor:
        """Ā = E[x̃x̃ᵀ] (q, q)."""
        return self._mean(self.A_sum)

    @property
    def G(self) -> torch.Tensor:
        """Ḡ = E[g̃g̃ᵀ] (p, p)."""
        return self._mean(self.G_sum)

    @property
    def diag(self) -> torch.Tensor:
        """Diagonal Fisher of the core, E[(g̃∘g̃)(x̃∘x̃)ᵀ] (p, q)."""
        return self._mean(self.diag_sum)

    @property
    def grad(self) -> torch.Tensor:
        """Mean gradient of the loss w.r.t. the core, Σ g̃x̃ᵀ / tokens (p, q): the gradient of the
        per-token loss whose Fisher is Ā ⊗ Ḡ (of the sampled-label loss for the true Fisher)."""
        return self._mean(self.grad_sum)

    @property
    def nll(self) -> float:
        """The data's mean NLL in nats per response token (0 when nothing was accumulated)."""
        return self.loss_sum / self.labels if self.labels > 0 else 0.0

    @property
    def loss_per_position(self) -> float:
        """The summed NLL per position (nats): the loss whose gradient is `grad` and curvature Ā ⊗ Ḡ."""
        return self.loss_sum / self.tokens if self.tokens > 0 else 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every sum and count as a float64 tensor, by name (the file format and the all-reduce use these)."""
        assert self.grad_sum is not None
        scalars = {key: torch.tensor([getattr(self, key)], dtype=torch.float64) for key in SCALARS}
        return {"A_sum": self.A_sum, "G_sum": self.G_sum, "diag_sum": self.diag_sum, "grad_sum": self.grad_sum,
                **scalars}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> KFACFactors:
        """The inverse of `tensors`."""
        return cls(tensors["A_sum"], tensors["G_sum"], tensors["diag_sum"], grad_sum=tensors["grad_sum"],
                   **{key: float(tensors[key][0]) for key in SCALARS})

    def add(self, other: KFACFactors) -> None:
        """Add the sums and counts of `other` (same module) into these."""
        for key, tensor in self.tensors().items():
            if key in SCALARS:
                setattr(self, key, getattr(self, key) + getattr(other, key))
            else:
                tensor += getattr(other, key)


# The float fields of KFACFactors that are counts or sums of numbers, not tensors.
SCALARS = ("tokens", "loss_sum", "labels")


@dataclass(frozen=True)
class FisherOptions:
    """How a Fisher pass runs. `kind`: "empirical" (the data's responses as labels) or "true" (labels
    sampled from the model, one per response position, seeded per example)."""

    kind: FisherKind = "empirical"
    max_examples: int | None = 256
    max_length: int = 512
    batch_size: int = 8
    seed: int = 0

    def key(self) -> dict[str, Any]:
        """The settings that change the result (batch size does not: sums are per token)."""
        return {"kind": self.kind, "max_examples": self.max_examples, "max_length": self.max_length, "seed": self.seed}




class FIMCalculator:
    """Accumulates K-FAC factors of the Linear modules named in `bases` ({name: (U (d_out, p), V (d_in, q))}).

    The model's parameters are frozen; the graph is kept alive by making the embedding output
    require grad, so no parameter gradient is ever computed or stored.
    """

    def __init__(self, model: torch.nn.Module, bases: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model = model
        modules = dict(model.named_modules())
        missing = [name for name in bases if name not in modules]
        if missing:
            raise InputError(f"the model has no module {missing[0]} to take the Fisher of")
        self.modules = {name: modules[name] for name in bases}
        self.bases = {}
        for name, (U, V) in bases.items():
            device = self.modules[name].weight.device
            self.bases[name] = (U.float().to(device), V.float().to(device))
        self.factors = {name: KFACFactors.zeros(U.shape[1], V.shape[1]) for name, (U, V) in bases.items()}
        self._rows: torch.Tensor | None = None  # flat indices of the batch's real (unpadded) tokens

    def _record(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        U, V = self.bases[name]
        rows = self._rows.to(x.device)
        # Only the real tokens are projected, picked by flat indices found once per batch and shared by
        # every module and direction: a boolean mask per module and direction costs about a third of
        # the hooks' time on the testbed.
        xt = (x.detach().reshape(-1, x.shape[-1]).index_select(0, rows).float() @ V).double()  # (tokens, q)
        if not y.requires_grad:
            return

        def on_grad(g: torch.Tensor) -> None:
            gt = (g.reshape(-1, g.shape[-1]).index_select(0, rows).float() @ U).double()  # (tokens, p)
            f = self.factors[name]
            f.A_sum += (xt.T @ xt).cpu()
            f.G_sum += (gt.T @ gt).cpu()
            f.diag_sum += ((gt * gt).T @ (xt * xt)).cpu()
            f.grad_sum += (gt.T @ xt).cpu()
            f.tokens += float(rows.numel())

        y.register_hook(on_grad)

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Install the hooks (and freeze the parameters) for the duration of the block."""
        handles = [
            module.register_forward_hook(lambda _m, inputs, output, name=name: self._record(name, inputs[0], output))
            for name, module in self.modules.items()
        ]
        embeddings = self.model.get_input_embeddings()
        handles.append(embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_()))
        flags = {p: p.requires_grad for p in self.model.parameters()}
        for p in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in flags.items():
                p.requires_grad_(flag)

    def accumulate(
        self, batch: dict[str, torch.Tensor], kind: FisherKind, generators: Sequence[torch.Generator]
    ) -> None:
        """One forward/backward pass over a collated batch (inside `hooks()`); adds to the factor sums."""
        device = self.model.get_input_embeddings().weight.device
        ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        labels = batch["labels"].to(device)
        self._rows = attn.reshape(-1).nonzero().squeeze(1)
        logits = self.model(input_ids=ids, attention_mask=attn).logits
        data_nll = response_nll(logits.detach(), labels) if kind == "true" else None
        count = float((labels[:, 1:] != IGNORE).sum())
        if kind == "true":
            labels = sample_labels(logits, labels, generators)
        loss = response_nll(logits, labels)
        nll = float(loss.detach() if data_nll is None else data_nll)
        for f in self.factors.values():
            f.loss_sum += nll
            f.labels += count
        if loss.requires_grad:
            loss.backward()
        self._rows = None

    def run(
        self,
        examples: Sequence[Example],
        pad_id: int,
        options: FisherOptions,
        indices: Sequence[int] | None = None,
        description: str = "Fisher pass",
    ) -> dict[str, KFACFactors]:
        """Accumulate over `examples` (global indices `indices`, default 0..n-1, seed the true-Fisher
        sampling) in batches; returns the per-module sums."""
        indices = list(range(len(examples))) if indices is None else list(indices)
        order = list(range(len(examples)))
        batches = [order[i : i + options.batch_size] for i in range(0, len(order), options.batch_size)]
        was_training = self.model.training
        self.model.eval()
        with self.hooks():
            for batch in track(batches, description):
                gens = [example_generator(options.seed, indices[i]) for i in batch]
                self.accumulate(collate([examples[i] for i in batch], pad_id), options.kind, gens)
        self.model.train(was_training)
        return self.factors


# Low-rank updates of Linear weights: {module: (B (d_out, r), A (r, d_in))}, ΔW = B @ A.
Updates = dict[str, tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def applied_updates(model: torch.nn.Module, updates: Updates | None) -> Iterator[None]:
    """Add ΔW = B @ A to the named Linear weights for the block (one dense ΔW at a time), then restore them."""
    modules = dict(model.named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name, (B, A) in (updates or {}).items():
                weight = modules[name].weight
                saved[name] = weight.detach().clone()
                weight.add_((B.float() @ A.float()).to(weight.device, weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)


def fisher_pass(
    model: torch.nn.Module,
    tokenizer: Any,
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    data: str | Path,
    options: FisherOptions,
    updates: Updates | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, KFACFactors]:
    """K-FAC sums of every module in `bases` over the first `options.max_examples` rows of the chat
    JSONL `data`, at the base plus `updates`; with `world` > 1 this process takes every world-th
    example from `rank` on (the caller all-reduces: see `sst_merge.distributed`)."""
    rows = read_chat_jsonl(data)[: options.max_examples]
    examples = encode_chat(tokenizer, rows, options.max_length)
    indices = list(range(rank, len(examples), world))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    calc = FIMCalculator(model, bases)
    with applied_updates(model, updates):
        return calc.run([examples[i] for i in indices], pad_id, options, indices, f"Fisher {Path(data).name}")
