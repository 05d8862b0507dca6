"""Gradient importance: a running accumulator over optimizer steps (the masks built from it: :mod:`.masking`).

Importance of a coefficient is a mean of ``|dL/dC|`` (``kind="abs"``) or ``(dL/dC)^2``
(``kind="squared"``, the square of a gradient, not a Fisher estimate) over

- ``statistic="micro_batch"`` (default, as the WaRP references sum per-batch ``|gradient|``): the
  gradient of every backward pass, read by a tensor hook before it is added to ``.grad``, times the
  loss divisor (the gradient-accumulation steps the Trainer divides each micro-batch loss by), so
  it is the gradient of the micro-batch's mean loss whatever the accumulation or the number of
  processes (under DDP each rank adds its own micro-batches; :meth:`~ImportanceAccumulator.mean`
  sums across ranks). A loss the Trainer normalises by the step's token count instead (causal LMs)
  weights each micro-batch by its share of those tokens;
- ``statistic="step"``: the gradient of each optimizer step (averaged over its micro-batches and,
  under DDP, ranks). Averaging before the absolute value cancels opposite signs, so this one
  depends on gradient accumulation x number of processes.

``kind="empirical_fisher"`` (:class:`EmpiricalFisher`, built from the reparameterized modules, not
the coefficients) is the empirical Fisher: the mean over EXAMPLES of the squared per-example gradient
``(dl_i/dC)^2``, read from each linear layer's input and output gradient (see the class for the exact
definition, its cost, and padding, accumulation and checkpointing). Unlike ``"squared"`` it does not
let the examples of a micro-batch cancel before squaring. :func:`make_accumulator` builds either kind.

With ``granularity="input"`` each gradient is summed over the output dimension first, giving one
score per input direction (column); as the mean is linear this equals summing the element-wise
importance afterwards, but needs only ``d_in`` floats (``r``, the basis rank, for coefficients).

Parameters sharded by rows (FSDP2's DTensors, :mod:`hf_ext.sharding`) take ``statistic="step"``: FSDP2
reduce-scatters each backward's gradient, so the per-rank micro-batch gradient that ``"micro_batch"`` and the
empirical Fisher read never exists whole and is refused. Each rank accumulates its rows; :meth:`mean` gives
element importance sharded as the parameter and input importance summed over every rank's rows.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed, sharding
from ..errors import TrainingDivergedError
from .masking import _check_choice
from .reparam import coefficients, is_reparameterized

KINDS = ("abs", "squared")
EMPIRICAL_FISHER = "empirical_fisher"
ALL_KINDS = (*KINDS, EMPIRICAL_FISHER)  # every kind :func:`make_accumulator` builds
STATISTICS = ("micro_batch", "step")
GRANULARITIES = ("element", "input")


class ImportanceAccumulator:
    """Running sum of gradient magnitudes of named parameters, per micro-batch or per step; memory is fixed.

    Call :meth:`update` once per optimizer step, after the gradients are complete (accumulated
    and, under DDP, averaged) and before clipping. ``grad_scale`` is the loss scale of fp16 mixed
    precision, divided out so importance does not depend on it. With ``statistic="micro_batch"``
    the backward passes of the step were already read by tensor hooks; :meth:`update` then checks
    them and adds them (a step with a non-finite gradient is skipped whole). Set ``loss_divisor`` to
    the gradient-accumulation steps the training loop divides each micro-batch loss by.
    """

    _kinds = KINDS
    _counters = ("micro_batches",)  # counts saved, gathered and restored with the sums
    _mean_over = "micro_batches"  # the count the micro-batch sums are divided by

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        *,
        kind: str = "abs",
        granularity: str = "element",
        statistic: str = "micro_batch",
    ):
        if kind == EMPIRICAL_FISHER and kind not in self._kinds:
            raise ValueError(
                "kind 'empirical_fisher' needs per-example gradients, which the coefficients' gradient does not "
                "hold: use EmpiricalFisher(modules) or make_accumulator(modules, kind='empirical_fisher')"
            )
        _check_choice("kind", kind, self._kinds)
        _check_choice("granularity", granularity, GRANULARITIES)
        _check_choice("statistic", statistic, STATISTICS)
        if not params:
            raise ValueError("no parameters to accumulate importance for")
        sharded = sorted(name for name, p in params.items() if sharding.is_sharded(p))
        if sharded and statistic != "step":
            raise ValueError(
                f"{sharded[0]!r} is sharded (FSDP2): its gradient is reduce-scattered in each backward, so the "
                f"per-rank micro-batch gradient that statistic {statistic!r} reads never exists; use statistic "
                "'step' (importance_statistic: step), or DDP"
            )
        self.params = dict(params)
        self._group = sharding.group(self.params.values())
        self.kind, self.granularity, self.statistic = kind, granularity, statistic
        self.sums = {name: self._zeros(p) for name, p in self.params.items()}
        self.steps = 0
        self.skipped_steps = 0
        for counter in self._counters:
            setattr(self, counter, 0)
        self.loss_divisor = 1.0
        self._pending = {name: self._zeros(p) for name, p in self.params.items()} if statistic == "micro_batch" else {}
        self._clear_pending()
        self._hooks = self._register_readers() if statistic == "micro_batch" else []

    def _register_readers(self) -> list:
        """Hooks that read every backward pass into ``_pending`` (``statistic="micro_batch"``)."""
        return [p.register_hook(functools.partial(self._read_micro_batch, name)) for name, p in self.params.items()]

    def _zeros(self, param: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self._score_shape(param), dtype=torch.float32, device=sharding.local(param).device)

    def _score_shape(self, param: torch.Tensor) -> tuple[int, ...]:
        if self.granularity == "input":
            if param.ndim != 2:
                raise ValueError(f"granularity 'input' needs 2-D parameters, got shape {tuple(param.shape)}")
            return (param.shape[1],)
        return tuple(sharding.local(param).shape)

    def _score(self, grad: torch.Tensor, scale: float) -> torch.Tensor:
        g = grad.float()
        if scale != 1.0:
            g = g * scale
        score = g.abs() if self.kind == "abs" else g.square()
        return score.sum(dim=0) if self.granularity == "input" else score

    @torch.no_grad()
    def _read_micro_batch(self, name: str, grad: torch.Tensor) -> None:
        self._pending[name] += self._score(grad, self.loss_divisor)
        self._pending_passes[name] += 1

    @torch.no_grad()
    def update(self, grad_scale: float = 1.0) -> bool:
        """Add this step's gradients; returns False (and adds nothing) if any gradient is non-finite."""
        if self.statistic == "micro_batch":
            return self._add_pending(grad_scale)
        grads = {}
        for name, param in self.params.items():
            if param.grad is None:
                raise RuntimeError(f"parameter {name!r} has no gradient: is it trainable and on the loss path?")
            grads[name] = sharding.local(param.grad)
        if not self._finite(grads.values()):
            return False
        for name, grad in grads.items():
            self.sums[name] += self._score(grad, 1.0 / grad_scale)
        self.steps += 1
        return True

    def _add_pending(self, grad_scale: float) -> bool:
        if max(self._pending_passes.values()) == 0:
            raise RuntimeError(
                f"parameters {sorted(self.params)[:3]} got no gradient in this step: are they trainable and on the "
                "loss path?"
            )
        finite = self._finite(self._pending.values())
        if finite:
            divisor = grad_scale if self.kind == "abs" else grad_scale**2
            for name, pending in self._pending.items():
                self.sums[name] += pending / divisor
            self.steps += 1
            self._count_pending()
        for pending in self._pending.values():
            pending.zero_()
        self._clear_pending()
        return finite

    def _count_pending(self) -> None:
        self.micro_batches += max(self._pending_passes.values())

    def _clear_pending(self) -> None:
        self._pending_passes = dict.fromkeys(self.params, 0)

    def _finite(self, tensors) -> bool:
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all().to(torch.int32).reshape(1)
        sharding.all_reduce_([finite], self._group, op=torch.distributed.ReduceOp.MIN)  # skip on every rank or none
        if finite.item():
            return True
        self.skipped_steps += 1
        warnings.warn(
            f"non-finite gradient at importance step {self.steps + self.skipped_steps}: step skipped", stacklevel=3
        )
        return False

    def mean(self, *, across_ranks: bool = True) -> dict[str, torch.Tensor]:
        """The importance (float32): the mean over micro-batches (over examples for :class:`EmpiricalFisher`) of
        every rank (``statistic="micro_batch"``; every rank must call it unless ``across_ranks=False``, which
        gives this rank's own mean) or over optimizer steps."""
        if self.steps == 0 and self.skipped_steps:
            raise TrainingDivergedError(
                f"no importance accumulated: {self.skipped_steps} step(s) had non-finite gradients and none was "
                "finite; lower learning_rate, use bf16 instead of fp16, or check the safety data"
            )
        if self.steps == 0:
            raise RuntimeError("no importance accumulated: no optimizer step ran")
        if self.statistic == "step":
            means = {name: total / self.steps for name, total in self.sums.items()}
            if self.granularity == "element":
                return {name: sharding.shard_like(mean, self.params[name]) for name, mean in means.items()}
            sharded = [mean for name, mean in means.items() if sharding.is_sharded(self.params[name])]
            sharding.all_reduce_(sharded, self._group)  # each rank summed its own rows
            return means
        totals = {name: total.clone() for name, total in self.sums.items()}
        count = torch.tensor(float(getattr(self, self._mean_over)), device=next(iter(totals.values())).device)
        if across_ranks:
            distributed.all_reduce_sum_([*totals.values(), count])
        return {name: total / count for name, total in totals.items()}

    def gather_(self) -> None:
        """Sum the micro-batch sums across ranks into rank 0 (the others keep zero), so rank 0 can save the
        whole state; every rank must call it. A no-op for ``statistic="step"`` (the ranks agree)."""
        self._refuse_sharded("gathered onto rank 0")
        if self.statistic != "micro_batch" or distributed.world_size() == 1:
            return
        device = next(iter(self.sums.values())).device
        counts = torch.tensor([float(getattr(self, c)) for c in self._counters], device=device)
        distributed.all_reduce_sum_([*self.sums.values(), counts])
        if not distributed.is_main_process():
            for total in self.sums.values():
                total.zero_()
            counts.zero_()
        for counter, value in zip(self._counters, counts.tolist(), strict=True):
            setattr(self, counter, int(value))

    def remove_hooks(self) -> None:
        """Stop reading micro-batch gradients (the accumulated sums stay)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _refuse_sharded(self, what: str) -> None:
        if self._group is not None:
            raise ValueError(
                f"sharded importance sums cannot be {what}: each rank holds its own rows (checkpointing importance "
                "under FSDP2 is not supported yet; train the phase without resuming)"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._refuse_sharded("saved from one rank")
        state = {f"{name}.sum": total for name, total in self.sums.items()}
        state["steps"] = torch.tensor(self.steps)
        state["skipped_steps"] = torch.tensor(self.skipped_steps)
        for counter in self._counters:
            state[counter] = torch.tensor(getattr(self, counter))
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a saved state (rank 0's, which holds every rank's sums; the other ranks start from zero)."""
        for name, total in self.sums.items():
            saved = state[f"{name}.sum"]
            if saved.shape != total.shape:
                raise ValueError(
                    f"saved importance for {name!r} has shape {tuple(saved.shape)}, expected {tuple(total.shape)}"
                )
            total.copy_(saved)
        self.steps, self.skipped_steps = int(state["steps"]), int(state["skipped_steps"])
        for counter in self._counters:
            setattr(self, counter, int(state[counter]) if counter in state else 0)
        if self.statistic == "micro_batch" and not distributed.is_main_process():
            for total in self.sums.values():
                total.zero_()
            for counter in self._counters:
                setattr(self, counter, 0)


def _graph_task_id() -> int | None:
    """Id of the backward pass (autograd graph task) running now, if this torch exposes it."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current() if current is not None else None


def _basis(module: nn.Module, name: str) -> torch.Tensor:
    """``U`` of a module reparameterized as ``W = C @ U.T`` (+ frozen residual) and nothing else."""
    if not isinstance(module, nn.Linear) or not is_reparameterized(module):
        raise ValueError(
            f"module {name!r} ({type(module).__name__}) is not a reparameterized nn.Linear: the empirical Fisher "
            "reads W = C @ U.T layers; call hf_ext.warp.reparam.reparameterize() first"
        )
    chain = list(module.parametrizations.weight)
    if len(chain) != 1:
        raise ValueError(
            f"module {name!r} has {len(chain)} weight parametrizations; the empirical Fisher needs W = C @ U.T alone"
        )
    return chain[0].basis


class EmpiricalFisher(ImportanceAccumulator):
    """Empirical Fisher of the coefficients ``C`` of reparameterized linear layers, from per-example gradients.

    Importance is ``mean_i (dl_i/dC)^2`` over all examples ``i`` seen (``granularity="element"``, shape
    ``d_out x r``) or that summed over the output dimension (``"input"``: one score per basis direction,
    shape ``r``). Same protocol as :class:`ImportanceAccumulator` (``statistic="micro_batch"``, ``kind=
    "empirical_fisher"``): :meth:`update` once per optimizer step (``grad_scale``: the fp16 loss scale, divided
    out squared; a step with a non-finite score is skipped whole), :meth:`mean` (sums over examples and the
    example count across ranks), :meth:`gather_`, :meth:`state_dict` / :meth:`load_state_dict` (which adds
    an ``examples`` count), :meth:`remove_hooks`; ``params`` are the coefficients ``C``.

    How: for ``y = x W^T`` with ``W = C U^T (+ R)``, example ``i``'s gradient is
    ``dL/dC_i = sum_t g_{i,t}^T (x_{i,t} U) = g_i^T z_i``, with ``g`` the gradient at the layer's output and
    ``z = x U`` (tokens ``t``). A forward hook keeps ``x`` (a detached alias of the input autograd already
    saves for the weight gradient: no extra memory) and puts a tensor hook on the output; in the backward
    that hook gets ``g`` and adds ``sum_i (s G_i)^2`` to the step's pending sum, in float32 with autocast off.
    The first dimension of the input is the example (batch-first layouts; a layer fed flattened tokens
    would treat tokens as examples).

    Definition of "per-example gradient": ``s G_i`` with ``s = B x loss_divisor``, i.e. B (the micro-batch
    size) x ``loss_divisor`` (the gradient-accumulation steps the loss is divided by) x the gradient of
    example ``i``'s share of the micro-batch loss. For a loss that is the mean over examples (sequence
    classification) this is exactly ``dl_i/dC``. For a loss that is a token mean over the micro-batch (or over
    the step, as the Trainer does for causal LMs), it is ``B x n_i / N`` times the gradient of example i's
    token-mean loss (``n_i`` its tokens, ``N`` those of the loss): examples are weighted by their token share.
    It assumes examples do not interact (no batch norm, no in-batch contrastive loss), so the output gradient
    of row ``i`` comes from ``l_i`` alone.

    Padding needs no mask: the decomposition above is exact over all positions, and a padding position
    contributes its true gradient, which is zero where the attention mask keeps it out of every real token
    (the tests compare padded batches with each example run alone).

    Gradient checkpointing: with reentrant checkpointing the first forward runs without gradients (the hook
    skips it) and the recomputation's output hook fires once in the backward; with non-reentrant
    checkpointing the recomputation's output hook never fires (its graph only refills saved tensors), so
    nothing is counted twice either way; but the kept input ``x`` then stays alive from the forward to the
    backward, losing checkpointing's saving on these layers' inputs. A module whose output gradient arrives
    twice in one backward pass (a layer called twice per forward, e.g. shared weights) is an error: its
    per-example gradient would be the sum of both calls before squaring. Not for ``nn.DataParallel``.

    Cost per micro-batch and layer (``B`` examples of ``T`` tokens): ``z = x U`` takes ``2 B T d_in r`` flops
    and ``G = g^T z`` ``2 B T d_out r``, i.e. ``(1 + d_in/d_out) r/d_in`` times the layer's weight-gradient
    matmul ``2 B T d_in d_out`` (2x for a square full-rank layer). For ``"input"`` with ``T (d_out + r) <
    d_out r`` the norms come from the token Gram ``g_i g_i^T`` instead (``2 B T^2 (d_out + r)`` flops, no
    ``B x d_out x r`` tensor). The per-example gradients take ``B d_out r`` float32: for Llama-3-8B's
    ``down_proj`` (d_out 4096, d_in = r = 14336) and ``B = 4`` that is 4 x 4096 x 14336 x 4 bytes = 0.94 GB, so
    examples are processed in chunks of at most ``max_chunk_elements`` float32 working values (default 2^26,
    256 MiB; at least one example, 235 MB here). The accumulated sums are ``d_out x r`` (or ``r``) float32.
    """

    _kinds = (EMPIRICAL_FISHER,)
    _counters = ("micro_batches", "examples")
    _mean_over = "examples"

    def __init__(
        self, modules: Mapping[str, nn.Module], *, granularity: str = "element", max_chunk_elements: int = 2**26
    ):
        if not modules:
            raise ValueError("no modules to accumulate the empirical Fisher for")
        self.modules = dict(modules)
        self._bases = {name: _basis(module, name) for name, module in self.modules.items()}
        self.max_chunk_elements = int(max_chunk_elements)
        self._last_backward: dict[str, int | None] = dict.fromkeys(self.modules)
        super().__init__(
            {name: coefficients(module) for name, module in self.modules.items()},
            kind=EMPIRICAL_FISHER,
            granularity=granularity,
            statistic="micro_batch",
        )

    def _register_readers(self) -> list:
        return [
            module.register_forward_hook(functools.partial(self._capture, name), with_kwargs=True)
            for name, module in self.modules.items()
        ]

    def _count_pending(self) -> None:
        super()._count_pending()
        self.examples += max(self._pending_examples.values())

    def _clear_pending(self) -> None:
        super()._clear_pending()
        self._pending_examples = dict.fromkeys(self.params, 0)

    def _capture(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return  # no backward will come (eval, or the first forward of reentrant checkpointing)
        x = (args[0] if args else kwargs["input"]).detach()
        output.register_hook(functools.partial(self._read_examples, name, x))

    @torch.no_grad()
    def _read_examples(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        if not self._hooks:  # removed between this forward and its backward
            return
        backward = _graph_task_id()
        if backward is not None and backward == self._last_backward[name]:
            raise RuntimeError(
                f"module {name!r} got two output gradients in one backward pass (is it called twice per forward, "
                "e.g. shared weights?): the empirical Fisher would square each call's share of the per-example "
                "gradient separately"
            )
        self._last_backward[name] = backward
        with torch.autocast(grad.device.type, enabled=False):
            self._add_example_scores(self._pending[name], x, grad, self._bases[name])
        self._pending_passes[name] += 1
        self._pending_examples[name] += x.shape[0] if x.ndim > 1 else 1

    def _add_example_scores(self, out: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, basis: torch.Tensor) -> None:
        """Add ``sum_i (s G_i)^2`` (summed over outputs for ``"input"``) of one micro-batch to ``out``."""
        examples = x.shape[0] if x.ndim > 1 else 1
        x = x.reshape(examples, -1, x.shape[-1])
        grad = grad.reshape(examples, -1, grad.shape[-1])
        tokens, d_in, d_out, rank = x.shape[1], x.shape[2], grad.shape[2], basis.shape[1]
        basis = basis.float()
        scale = examples * self.loss_divisor
        gram = self.granularity == "input" and _use_gram(tokens, d_out, rank)
        per_example = tokens * (d_in + rank + d_out) + (tokens * tokens if gram else d_out * rank)
        chunk = max(1, self.max_chunk_elements // per_example)
        for start in range(0, examples, chunk):
            z = x[start : start + chunk].float() @ basis  # (c, T, r)
            z *= scale
            g = grad[start : start + chunk].float()  # (c, T, d_out)
            if gram:  # ||G_i[:, k]||^2 = z_k^T (g_i g_i^T) z_k, >= 0 up to rounding
                out += ((g @ g.transpose(1, 2)) @ z).mul_(z).sum(dim=1).clamp_(min=0).sum(dim=0)
            else:
                squares = (g.transpose(1, 2) @ z).square_()  # (c, d_out, r)
                out += squares.sum(dim=(0, 1)) if self.granularity == "input" else squares.sum(dim=0)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "examples" not in state:
            raise ValueError("the saved importance state has no 'examples' count: it is not an empirical-Fisher state")
        super().load_state_dict(state)


def _use_gram(tokens: int, d_out: int, rank: int) -> bool:
    """Whether per-direction norms are cheaper from the ``T x T`` token Gram than from ``G_i`` (``d_out x r``)."""
    return tokens * (d_out + rank) < d_out * rank


def make_accumulator(
    modules: Mapping[str, nn.Module],
    *,
    kind: str = "abs",
    granularity: str = "element",
    statistic: str = "micro_batch",
) -> ImportanceAccumulator:
    """The accumulator for ``kind`` over reparameterized ``modules`` (``{name: module}``): an
    :class:`ImportanceAccumulator` of their coefficients, or an :class:`EmpiricalFisher` for
    ``kind="empirical_fisher"`` (per micro-batch only)."""
    _check_choice("kind", kind, ALL_KINDS)
    if kind == EMPIRICAL_FISHER:
        if statistic != "micro_batch":
            raise ValueError(
                f"importance 'empirical_fisher' reads per-example gradients of each micro-batch; statistic "
                f"{statistic!r} does not apply (use 'micro_batch')"
            )
        return EmpiricalFisher(modules, granularity=granularity)
    params = {name: coefficients(module) for name, module in modules.items()}
    return ImportanceAccumulator(params, kind=kind, granularity=granularity, statistic=statistic)


def importance_after_training(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor] | None,
    batches,
    *,
    kind: str = "abs",
    granularity: str = "element",
    keep_training=(),
    modules: Mapping[str, nn.Module] | None = None,
) -> ImportanceAccumulator:
    """Importance from a separate pass over ``batches`` (dicts the model takes, with labels) on the trained
    model, as the Safety-WaRP reference now measures it: eval mode (no dropout), one backward per batch,
    no optimizer step, per-micro-batch statistic. ``keep_training``: modules left in training mode (a
    head whose class restriction acts only there). Under DDP give each rank its shard of the data;
    ``.mean()`` (every rank) sums across ranks. Gradients are cleared afterwards.

    ``kind="empirical_fisher"`` needs the reparameterized ``modules`` (``{name: module}``); ``params`` may then
    be ``None`` or must be their coefficients under the same names."""
    if kind == EMPIRICAL_FISHER:
        if modules is None:
            raise ValueError(
                "importance 'empirical_fisher' after training needs modules= (the reparameterized layers)"
            )
        accumulator = EmpiricalFisher(modules, granularity=granularity)
        if params is not None and (
            set(params) != set(accumulator.params) or any(params[n] is not accumulator.params[n] for n in params)
        ):
            raise ValueError("params are not the coefficients of modules under the same names")
    else:
        if params is None:
            if modules is None:
                raise ValueError("give params (or modules) to measure importance for")
            params = {name: coefficients(module) for name, module in modules.items()}
        accumulator = ImportanceAccumulator(params, kind=kind, granularity=granularity, statistic="micro_batch")
    device = next(iter(accumulator.params.values())).device
    was_training = model.training
    model.eval()
    for module in keep_training:
        module.train()
    try:
        for batch in tqdm(batches, desc="importance after training", leave=False):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model(**batch).loss.backward()
            accumulator.update()
            model.zero_grad(set_to_none=True)
    finally:
        accumulator.remove_hooks()
        model.train(was_training)
    return accumulator


def importance_vs_eigenvalues(
    importance: Mapping[str, torch.Tensor], eigenvalues: Mapping[str, torch.Tensor], keep_ratio: float
) -> dict[str, dict[str, float]]:
    """How far gradient importance ranks the basis directions like the eigenvalues already do, per layer.

    Importance per direction is the score (summed over output rows for element scores); the basis
    is sorted by eigenvalue, so direction ``i`` has the ``i``-th largest. Returns, per layer, the
    Spearman correlation of the two rankings, the overlap of their top ``k = round(keep_ratio * n)``
    directions and that overlap's chance level ``k^2 / n`` (two random k-sets of n).
    """
    from scipy.stats import spearmanr

    out = {}
    for name, score in importance.items():
        per_direction = (score.sum(dim=0) if score.ndim == 2 else score).double().cpu()
        n = per_direction.numel()
        values = eigenvalues[name][:n].double().cpu()
        k = max(1, round(keep_ratio * n))
        top_importance = set(torch.topk(per_direction, k).indices.tolist())
        top_eigenvalue = set(torch.topk(values, k).indices.tolist())
        rho = spearmanr(per_direction.numpy(), values.numpy()).statistic
        out[name] = {
            "spearman": float(rho),
            "top_k": k,
            "overlap": len(top_importance & top_eigenvalue),
            "chance_overlap": k * k / n,
        }
    return out
