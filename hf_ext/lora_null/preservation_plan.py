"""The memory plan of the LoRA-Null preservation study (recipes/lora_null_preservation.py, :mod:`hf_ext.plan`), from
the model on the meta device wrapped by peft.

The study trains one run at a time, so a rank holds one method's calibration or one run's training at a time; what
it holds besides (:func:`~hf_ext.lora_null.preservation.run_preservation_study`) is kept in host memory, since
nothing moves it to the accelerator:

- ``base model (host)``: the plain model :func:`~hf_ext.lora_null.study.prepare_run` loads (parameters and
  buffers), alive for the whole study (the base embeddings are computed on it, on the host);
- ``cached initialised models (host)``: one whole peft model (base weights, adapters, head copy; parameters and
  buffers) for every method but ``lora``, built once and copied for each of its runs (the copy is what the Trainer
  moves to the accelerator); counted at its fullest: in ``calibration``, the methods listed before the last
  LoRA-Null mode, in ``CorDA calib`` those before ``corda_kpm``, in ``training`` all of them;
- ``base embeddings (host)``: the base model's float64 mean-pooled embeddings of the measurement sets,
  ``preservation_samples + probe_samples`` rows of ``hidden_size`` (the most the study keeps: fewer when overlaps
  with the calibration or task texts are dropped or a split is shorter).

Stages, per rank:

- ``calibration`` (``null_frozen_A``, ``null_projection``): LoRA-Null's calibration
  (:func:`hf_ext.lora_null.plan.calibration_stage`) of a peft model :func:`_initialised` loads on the host and
  calibrates there, in batches of 8: every item is a host item;
- ``CorDA calib`` (``corda_kpm``): peft's ``preprocess_corda`` on a plain model loaded on the host: per target
  layer a float32 ``d_in x d_in`` covariance (the input cast to float32, one matrix per layer even where layers
  share an input) and, before they are cropped to rank ``r``, the full float32 SVD ``U`` (``d_out x k``), ``S``
  (``k``) and ``V`` (``d_in x k``, ``k = min(d_in, d_out)``) of every target at once; the decomposition of the
  largest layer (an estimate) and the activations of one calibration text at a time;
- ``training``: the largest method's training, ``lora``'s (required; ``lora_A`` and ``lora_B`` train, a superset of
  every other method's trainables), as LoRA-Null's :func:`hf_ext.lora_null.plan.training_stage` counts it but
  without the verification bases (the study runs no verification), on the accelerator, and the host items above.

The rule for host items: they are added to the stages, and to the totals, only when ``training_args.use_cpu`` is
true (the accelerator is then the host). A plan made for a GPU run counts the GPU: its stages hold the accelerator's
items only (``training``; calibration puts nothing on it), and a note under the table gives the host memory per rank
of each stage. Under DDP every rank runs the whole study, so the host holds its items once per process.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..plan import GIB, Item, Plan, Stage, activation_estimate, refuse_if_unsupported
from .config import LoraNullArguments
from .init import MODES
from .plan import CALIBRATION_BATCH, calibration_stage, peft_meta_model, training_stage
from .preservation import LAUNCHER_CHECK, PreservationArguments

ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraNullArguments, PreservationArguments, HfExtTrainingArguments)
HOST = " (host)"


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/lora_null_preservation.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    model_args, data_args, args, study, training_args = run_args
    refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    model, layers = peft_meta_model(model_args, data_args, args)
    methods = list(study.methods)
    cached = [m for m in methods if m != "lora"]  # built once each, kept for the study
    peft_model = state_bytes(model)
    base = state_bytes(model, lambda name: ".lora_" not in name and ".modules_to_save." not in name)
    embeddings = (study.preservation_samples + study.probe_samples) * model.config.hidden_size * 8
    length = args.calib_max_length or data_args.max_seq_length

    def held_besides(stage: Stage, models: int) -> None:
        stage.add(f"base model{HOST}", base)
        stage.add(f"cached initialised models{HOST}", models * peft_model)
        stage.add(f"base embeddings{HOST}", embeddings)

    stages = []
    nulls = [m for m in methods if m in MODES]
    if nulls:  # on the host, outside any launcher: whole weights, no launcher items
        calibration = calibration_stage(
            model,
            layers,
            batch=CALIBRATION_BATCH,
            length=length,
            launcher="ddp",
            num_processes=1,
            memory_gb=args.calib_memory_gb,
        )
        calibration.items = [Item(item.name + HOST, item.bytes, item.static) for item in calibration.items]
        held_besides(calibration, cached.index(nulls[-1]))
        stages.append(calibration)
    if "corda_kpm" in methods:
        stages.append(corda_stage(model, layers, length))
        held_besides(stages[-1], cached.index("corda_kpm"))
    training = training_stage(
        model,
        layers,
        data_args,
        training_args,
        freeze_a=False,
        verification=False,
        launcher=launcher,
        num_processes=num_processes,
    )
    held_besides(training, len(cached))
    stages.append(training)

    title = f"LoRA-Null preservation study ({', '.join(methods)}), {model_args.model_name_or_path}"
    if training_args.use_cpu:
        result = Plan(title, launcher, num_processes, stages, gpu_memory)
    else:
        accelerator = [Stage(s.name, [i for i in s.items if not i.name.endswith(HOST)]) for s in stages]
        result = Plan(title, launcher, num_processes, [s for s in accelerator if s.items], gpu_memory)
        host = [(s.name, sum(i.bytes for i in s.items if i.name.endswith(HOST))) for s in stages]
        result.notes.append(
            "host memory per rank, not in these totals (the study calibrates, caches and measures on the host; "
            "use_cpu=true counts it): " + ", ".join(f"{name} {_size(size)}" for name, size in host)
        )
    peak = result.peak.name
    if peak == "calibration":
        result.advice.append("calib_memory_gb (calibrate in groups of targets that fit), or fewer lora_target_modules")
    elif peak == "CorDA calib":
        result.advice.append(
            "drop corda_kpm from methods, or fewer lora_target_modules (CorDA holds a float32 covariance and the "
            "full SVD of every target at once)"
        )
    elif not training_args.gradient_checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    if training_args.use_cpu and len(cached) > 1:
        result.advice.append(f"fewer methods (each of {', '.join(cached)} keeps a whole initialised model)")
    return result


def corda_stage(model: nn.Module, layers: dict[str, nn.Module], length: int) -> Stage:
    """What ``corda_kpm``'s initialisation holds on the host while peft's ``preprocess_corda`` runs on the plain
    model (``model`` is the peft model of the same targets): its weights, the float32 covariances and full SVDs of
    every target layer at once, the decomposition of the largest layer (an estimate: the float32 weight, the damped
    covariance, its inverse, an identity, their product and the SVD's workspace) and the activations of one
    calibration text."""
    f32 = torch.float32.itemsize
    bases = [layer.base_layer for layer in layers.values()]
    stage = Stage("CorDA calib")
    plain = (p for name, p in model.named_parameters() if ".lora_" not in name and ".modules_to_save." not in name)
    stage.add(f"weights{HOST}", sum(p.numel() * p.dtype.itemsize for p in plain))
    stage.add(f"CorDA covariances{HOST}", sum(b.in_features**2 * f32 for b in bases))
    stage.add(f"CorDA eigens{HOST}", sum(_full_svd(b.in_features, b.out_features) * f32 for b in bases))
    stage.add(
        f"CorDA decomposition{HOST}",
        max((4 * b.in_features**2 + 3 * b.in_features * b.out_features) * f32 for b in bases),
        static=False,
    )
    activations = activation_estimate(model, 1, length, training=False, checkpointing=False)
    stage.add(f"activations{HOST}", activations, static=False)
    return stage


def _full_svd(d_in: int, d_out: int) -> int:
    """Elements of ``U`` (``d_out x k``), ``S`` (``k``) and ``V`` (``d_in x k``), ``k = min(d_in, d_out)``."""
    k = min(d_in, d_out)
    return d_out * k + k + d_in * k


def state_bytes(model: nn.Module, keep=lambda name: True) -> int:
    """Bytes of the parameters and buffers of ``model`` whose names ``keep`` accepts (shared ones once)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return sum(t.numel() * t.dtype.itemsize for name, t in tensors if keep(name))


def _size(size: int) -> str:
    return f"{size / GIB:.3f} GiB" if size >= GIB else f"{size / 2**20:.3f} MiB"
