"""Merge LoRA adapters: validate everything up front, merge module by module, write atomically.

The flow is one way: config → adapters (validated against the base) → method.prepare (optional
whole-model work) → per-module kernel → writer → provenance record.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sst_merge.atomic import atomic_output_dir, check_output, write_json_atomic
from sst_merge.base_model import adapted_module_shapes
from sst_merge.devices import compute_device
from sst_merge.errors import InputError, require_finite, validation_message
from sst_merge.lora import load_adapter, validate_against_base
from sst_merge.lowrank import SVDFactors, svd_of_dense, svd_of_factored, svd_of_orthonormal
from sst_merge.methods import get_method
from sst_merge.methods.base import (
    Dense,
    Factored,
    MergedDelta,
    MergeJob,
    MergeMethod,
    MethodParams,
    ModuleInputs,
    Prepared,
)
from sst_merge.methods.base import module_generator as make_generator
from sst_merge.progress import make_progress, track
from sst_merge.provenance import provenance_record
from sst_merge.writers import base_shard_files, copy_model_files, stream_full_shard, write_peft_adapter

PROVENANCE_NAME = "sst_merge_provenance.json"

COMMON_KEYS = ("base", "adapters", "method", "weights", "format", "rank", "output", "force", "dry_run")


# One weight per adapter; NaN and ±Infinity are refused (pydantic would accept "nan" and "inf").
Weights = list[Annotated[float, Field(allow_inf_nan=False)]]


def parse_weights(text: str) -> list[float]:
    """The --weights flag (comma-separated numbers) as finite floats; anything else is an InputError."""
    try:
        return TypeAdapter(Weights).validate_python([part.strip() for part in text.split(",") if part.strip()])
    except ValidationError as exc:
        raise InputError(f"--weights {text!r}: {validation_message(exc)}") from exc


class MergeConfig(BaseModel):
    """A merge as data: the CLI flags and the YAML file both become one of these.

    Keys beyond the common ones are the method's parameters, validated by its own schema.
    """

    model_config = ConfigDict(extra="allow")

    base: Path
    adapters: list[Path] = Field(min_length=1)
    method: str
    weights: Weights | None = None
    format: Literal["peft", "full"] = "peft"
    rank: int | None = Field(None, ge=1, description="rank of a PEFT output; default: exact")
    output: Path
    force: bool = False
    dry_run: bool = False

    def method_params(self) -> dict[str, Any]:
        """The keys that belong to the method (everything not common)."""
        return dict(self.model_extra or {})


def load_merge_config(path: str | Path, overrides: dict[str, Any] | None = None) -> MergeConfig:
    """Read a YAML merge config; `overrides` (e.g. --force from the command line) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputError("expected a mapping of merge settings", path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return build_merge_config(data)
    except InputError as exc:
        raise InputError(exc.problem, path) from exc


def build_merge_config(values: dict[str, Any]) -> MergeConfig:
    """Validate merge settings (common keys and the method's own); problems become one InputError."""
    try:
        config = MergeConfig(**values)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from exc
    resolve_params(config)
    return config


def resolve_params(config: MergeConfig) -> tuple[MergeMethod, MethodParams]:
    """The method and its validated parameters; unknown keys and out-of-range values are InputErrors."""
    method = get_method(config.method)
    try:
        return method, method.params(**config.method_params())
    except ValidationError as exc:
        raise InputError(f"method {method.name}: {validation_message(exc)}") from exc


@dataclass
class MergeReport:
    """What a merge did: the resolved inputs, each module's truncation error, timings, the output.

    `params` are the method's parameters as given (β None: to be calibrated); `resolved` what the
    method actually used and found (the calibrated β, AGL's critical directions, Safe LoRA's
    projected modules, …; see `MergeMethod.resolve`), empty for a dry run.
    """

    output: Path | None
    method: str
    params: dict[str, Any]
    weights: list[float]
    modules: list[str]
    adapter_ranks: list[int]
    resolved: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None
    rel_error: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error.values(), default=0.0)


@dataclass
class LoadedInputs:
    """The validated inputs of a merge, reusable across a sweep."""

    job: MergeJob
    method: MergeMethod
    params: MethodParams


def load_job(base: Path, adapter_paths: list[Path], weights: list[float] | None) -> MergeJob:
    """Read every adapter and the base's shapes, check they fit; the modules come in the base's natural order."""
    weights = weights if weights is not None else [1.0] * len(adapter_paths)
    if len(weights) != len(adapter_paths):
        raise InputError(f"{len(weights)} weights given for {len(adapter_paths)} adapters")
    adapters = [load_adapter(path) for path in adapter_paths]
    adapted = set().union(*(a.modules for a in adapters))
    shapes = adapted_module_shapes(base, adapted)
    for adapter in adapters:
        validate_against_base(adapter, shapes)
    modules = [name for name in shapes if name in adapted]
    return MergeJob(base=Path(base), adapters=adapters, weights=list(weights), modules=modules, shapes=shapes)


def load_inputs(config: MergeConfig) -> LoadedInputs:
    """Validate the config, read the base's shapes and every adapter, check they fit (no heavy work)."""
    method, params = resolve_params(config)
    job = load_job(config.base, config.adapters, config.weights)
    return LoadedInputs(job=job, method=method, params=params)


def prepare(loaded: LoadedInputs) -> Prepared:
    """The method's whole-model work (a Fisher pass, say), or nothing for a method without any."""
    return loaded.method.prepare(loaded.job, loaded.params) if loaded.method.prepare else Prepared()


def merge_module(loaded: LoadedInputs, name: str, context: Prepared) -> MergedDelta:
    """Run the method's kernel on module `name`."""
    job, params = loaded.job, loaded.params
    inputs = ModuleInputs(
        name=name,
        shape=job.shapes[name],
        experts=[a.modules.get(name) for a in job.adapters],
        weights=job.weights,
        generator=make_generator(getattr(params, "seed", 0), name),
        context=context.modules.get(name),
        device=compute_device(params.device),
    )
    merged = loaded.method.merge_module(inputs, params)
    # Finite inputs can still overflow float32 (weights of 1e38, a huge lora_alpha): refuse before an SVD
    # or a writer sees the result.
    require_finite((merged.delta,) if isinstance(merged, Dense) else (merged.B, merged.A), _overflow(name))
    return merged


def _overflow(name: str) -> str:
    """The problem of a merged update of module `name` that is not finite."""
    return f"the merged update of {name} has NaN or Inf values (weights or LoRA scales too large?)"


def merge_adapters(
    config: MergeConfig,
    loaded: LoadedInputs | None = None,
    context: Prepared | None = None,
    into: Path | None = None,
) -> MergeReport:
    """Merge the adapters of `config` and write the output it names.

    `loaded` and `context` let a sweep reuse validated inputs and the method's `prepare` result
    (e.g. Fisher factors) across several outputs; `into`, an empty directory inside the sweep's own
    temporary one, is written instead of `config.output`. Returns the report; with `dry_run`,
    validates and plans without merging or writing anything.
    """
    started = time.perf_counter()
    if not config.dry_run and into is None:
        check_output(config.output, config.force)
    loaded = loaded or load_inputs(config)
    job = loaded.job
    report = MergeReport(
        output=None if config.dry_run else config.output,
        method=loaded.method.name,
        params=loaded.params.model_dump(mode="json"),
        weights=job.weights,
        modules=job.modules,
        adapter_ranks=[max((f.rank for f in a.modules.values()), default=0) for a in job.adapters],
        dry_run=config.dry_run,
    )
    report.seconds["validate"] = time.perf_counter() - started
    if config.dry_run:
        return report
    if context is None:
        tick = time.perf_counter()
        context = prepare(loaded)
        report.seconds["prepare"] = time.perf_counter() - tick
    report.resolved = loaded.method.resolved(context, loaded.params)
    tick = time.perf_counter()
    with nullcontext(into) if into is not None else atomic_output_dir(config.output, force=config.force) as tmp:
        if config.format == "peft":
            _write_peft(config, loaded, context, tmp, report)
        else:
            _write_full(config, loaded, context, tmp, report)
        report.seconds["merge_write"] = time.perf_counter() - tick
        write_json_atomic(tmp / PROVENANCE_NAME, provenance_record(config, report, job))
    return report


def sweep_of(params: MethodParams) -> tuple[str, list[Any]] | None:
    """(field, values) when a method parameter `<field>_sweep` holds a list of values for `<field>`."""
    for name, value in params:
        if name.endswith("_sweep") and value and name.removesuffix("_sweep") in type(params).model_fields:
            return name.removesuffix("_sweep"), list(value)
    return None


def merge_sweep(config: MergeConfig) -> list[MergeReport]:
    """Merge once, or, when the method's parameters hold a `<field>_sweep` list, once per value into
    `<output>/<field>=<value>/`, reusing one validation and one `prepare` (e.g. one Fisher pass)."""
    loaded = load_inputs(config)
    sweep = sweep_of(loaded.params)
    if sweep is None:
        return [merge_adapters(config, loaded)]
    field_name, values = sweep
    # Every value is validated before anything is computed or written.
    points = []
    for value in values:
        point = build_merge_config({
            **config.model_dump(), field_name: value, f"{field_name}_sweep": None,
            "output": config.output / f"{field_name}={value:g}",
        })
        points.append((point, LoadedInputs(loaded.job, loaded.method, resolve_params(point)[1])))
    if config.dry_run:
        return [merge_adapters(point, point_inputs) for point, point_inputs in points]
    check_output(config.output, config.force)
    context = prepare(loaded)
    # One output for the whole sweep: a failure at the last value leaves none of them behind.
    with atomic_output_dir(config.output, force=config.force) as tmp:
        reports = []
        for point, point_inputs in points:
            into = tmp / point.output.name
            into.mkdir()
            reports.append(merge_adapters(point, point_inputs, context, into=into))
    return reports


def _write_peft(
    config: MergeConfig, loaded: LoadedInputs, context: Prepared, out: Path, report: MergeReport
) -> None:
    job = loaded.job
    svds: dict[str, SVDFactors] = {}
    any_dense = False
    for name in track(job.modules, f"merging ({loaded.method.name})"):
        merged = merge_module(loaded, name, context)
        if isinstance(merged, Factored):
            svds[name] = svd_of_orthonormal(*merged.bases) if merged.bases else svd_of_factored(merged.B, merged.A)
        else:
            any_dense = True
            svds[name] = svd_of_dense(merged.delta, compute_device(loaded.params.device))
    # Default rank: exact for low-rank results; a dense result (TIES, DARE) is cut to the inputs' total rank.
    if config.rank:
        rank = config.rank
    elif any_dense:
        rank = max(sum(f.rank for a in job.adapters if (f := a.modules.get(name))) for name in job.modules)
    else:
        rank = max(max(s.exact_rank() for s in svds.values()), 1)
    factors = {}
    for name in list(svds):
        svd = svds.pop(name)  # each SVD is freed once cut: a whole model's SVDs and factors are GBs each
        factors[name] = svd.factors(rank)
        require_finite(factors[name], _overflow(name))
        report.rel_error[name] = svd.rel_error(rank)
    report.rank = rank
    write_peft_adapter(out, factors, rank, str(job.base), list(job.shapes), job.adapters[0].config)


def _write_full(
    config: MergeConfig, loaded: LoadedInputs, context: Prepared, out: Path, report: MergeReport
) -> None:
    job = loaded.job
    shards = base_shard_files(job.base)
    if shards is None:
        raise InputError("no model.safetensors or model.safetensors.index.json (full output needs safetensors)",
                         job.base)
    copy_model_files(job.base, out)
    module_of = {f"{m}.weight": m for m in job.modules}
    # Low-rank results are expanded into one buffer reused for every module, because fresh memory for
    # each ΔW is paid in page faults: for a 14336 x 4096 module (235 MB) they cost twice the matmul.
    workspace = torch.empty(max((job.shapes[m][0] * job.shapes[m][1] for m in job.modules), default=0))
    device = compute_device(loaded.params.device)
    with make_progress() as progress:
        bar = progress.add_task(f"merging ({loaded.method.name})", total=len(job.modules))
        def delta_of(tensor: str) -> torch.Tensor | None:
            if tensor not in module_of:
                return None
            progress.advance(bar)
            name = module_of[tensor]
            rows, cols = job.shapes[name]
            merged = merge_module(loaded, name, context)
            return merged.dense(out=workspace[: rows * cols].view(rows, cols), device=device)

        for shard in shards:
            # Stream tensor by tensor: one base tensor and its ΔW are held in memory at a time.
            changed = stream_full_shard(job.base, out, shard, delta_of)
            report.rel_error.update({module_of[t]: 0.0 for t in changed})
    missing = set(job.modules) - set(report.rel_error)
    if missing:
        raise InputError(f"base weights lack {len(missing)} adapted modules, e.g. {sorted(missing)[0]}", job.base)
