"""Streaming statistics of the inputs that chosen modules see, and orthonormal bases from them.

For each module the recorder keeps a token count, the sum of inputs and the uncentred second
moment ``X^T X`` in float64 (whatever the model dtype): memory is ``O(d_in^2)`` per module and does
not grow with the number of batches. Padding tokens are excluded through the attention mask.
Under ``torch.distributed`` the sums are added across ranks, so N processes that each see 1/N of
the data produce the statistics of one process that saw all of it.

Modules that receive the very same input tensor in a forward pass (``q_proj``/``k_proj``/``v_proj`` of
one attention block, ``gate_proj``/``up_proj`` of one MLP block) share one :class:`InputStatistics`:
it is accumulated, all-reduced and eigendecomposed once and returned under each of their names.
Sharing is detected at run time by tensor identity, not by names (see :class:`InputRecorder`).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .errors import ConfigError
from .models import eval_mode, model_device, model_inputs


@dataclass
class InputStatistics:
    """Running first and second moments of one module's inputs.

    Attributes:
        count: number of tokens seen (float64 scalar, so it can be all-reduced with the sums).
        total: sum of input vectors, shape ``[d_in]``, float64.
        gram: ``sum_t x_t x_t^T``, shape ``[d_in, d_in]``, float64. Read it through :meth:`flush_`
            (or the methods below, which flush first) after :meth:`update`.

    Each batch's product is added to a buffer in ``compute_dtype`` (float32 by default, the
    speed of the forward pass) holding at most ``flush_tokens`` tokens, which is then added to the
    float64 sums. Only the lower block triangle of the symmetric product is formed per batch, which
    saves about a third of the work for wide layers.
    """

    count: torch.Tensor
    total: torch.Tensor
    gram: torch.Tensor
    compute_dtype: torch.dtype = torch.float32
    flush_tokens: int = 1 << 16
    _buffer: torch.Tensor | None = field(default=None, repr=False)
    _buffered_tokens: int = field(default=0, repr=False)

    @classmethod
    def zeros(
        cls, dim: int, device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32
    ) -> InputStatistics:
        kw: dict[str, Any] = {"dtype": torch.float64, "device": device}
        return cls(torch.zeros((), **kw), torch.zeros(dim, **kw), torch.zeros(dim, dim, **kw), compute_dtype)

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    def _blocks(self) -> list[slice]:
        step = -(-self.dim // max(1, min(8, self.dim // 256)))
        return [slice(i, min(i + step, self.dim)) for i in range(0, self.dim, step)]

    def update(self, x: torch.Tensor) -> None:
        """Add tokens ``x`` of shape ``[n, d_in]``."""
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"expected inputs of shape [tokens, {self.dim}], got {tuple(x.shape)}")
        xc = x.to(self.compute_dtype)
        if self._buffer is None:
            self._buffer = torch.zeros(self.dim, self.dim, dtype=self.compute_dtype, device=self.gram.device)
        xt = xc.T.contiguous()
        for rows in self._blocks():
            self._buffer[rows, : rows.stop].addmm_(xt[rows], xc[:, : rows.stop])
        self.count += x.shape[0]
        self.total += xc.sum(0, dtype=torch.float64)
        self._buffered_tokens += x.shape[0]
        if self._buffered_tokens >= self.flush_tokens:
            self.flush_()

    def flush_(self) -> InputStatistics:
        """Add the buffered lower block triangle, mirrored, to the float64 ``gram``."""
        if self._buffer is not None and self._buffered_tokens:
            lower = self._buffer.to(torch.float64)
            full = lower + lower.T
            for block in self._blocks():
                full[block, block] /= 2  # diagonal blocks were added twice; this also makes them exactly symmetric
            self.gram += full
            self._buffer.zero_()
            self._buffered_tokens = 0
        return self

    def all_reduce_(self) -> InputStatistics:
        """Sum the statistics across ranks in place (call on every rank)."""
        self.flush_()
        distributed.all_reduce_sum_([self.count, self.total, self.gram])
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self._checked_count()

    def second_moment(self, centered: bool = False) -> torch.Tensor:
        """``E[x x^T]``, or the covariance ``E[(x - mu)(x - mu)^T]`` with ``centered=True`` (float64)."""
        moment = self.flush_().gram / self._checked_count()
        if centered:
            mean = self.mean
            moment = moment - torch.outer(mean, mean)
        return (moment + moment.T) / 2

    def _checked_count(self) -> torch.Tensor:
        if self.count.item() == 0:
            raise ValueError("no tokens were recorded: the data was empty or every token was masked as padding")
        return self.count

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        self.flush_()
        return {f"{prefix}count": self.count, f"{prefix}total": self.total, f"{prefix}gram": self.gram}


def eigenbasis(
    moment: torch.Tensor, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal eigenbasis of a symmetric matrix, sorted by decreasing eigenvalue.

    The decomposition runs in ``dtype`` (float64 by default; float32 is about twice as fast and
    orthonormal to ~1e-6, but resolves small eigenvalues less well) on ``device`` if given. Each
    eigenvector's sign is fixed so that its largest-magnitude entry is positive, which makes the
    basis reproducible across runs, ranks and devices.

    Returns:
        ``(U, eigenvalues)``: ``U[:, i]`` is the i-th direction, in ``dtype``, on the matrix's device.
    """
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"eigendecompositions run in float64 or float32, not {dtype}")
    matrix = moment.to(device=device or moment.device, dtype=dtype)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError("the second-moment matrix has non-finite entries: the model produced inf/nan activations")
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1], device=vectors.device)])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors.to(moment.device), eigenvalues.to(moment.device)


def orthonormality_error(basis: torch.Tensor) -> float:
    """``max |U^T U - I|`` in float64: 0 for a basis with exactly orthonormal columns."""
    b = basis.double()
    return (b.T @ b - torch.eye(b.shape[1], dtype=torch.float64, device=b.device)).abs().max().item()


class InputRecorder:
    """Forward pre-hooks that stream the inputs of chosen modules into :class:`InputStatistics`.

    Use as a context manager; call :meth:`set_token_mask` with each batch's attention mask before
    the forward pass so that padding tokens are left out::

        with InputRecorder(select_linear(model, "mlp.down_proj")) as recorder:
            for batch in loader:
                recorder.set_token_mask(batch["attention_mask"])
                model(**batch)
        stats = recorder.statistics  # {module name: InputStatistics}

    Shared inputs: the first module to receive a tensor records it and keeps a weak reference to
    it; a later module whose ``args[0]`` *is* that same tensor object (identity, not equality) is an
    alias: ``statistics[alias]`` is the owner's object and the alias adds nothing. The weak reference
    is replaced each time the owner runs, so sharing is judged within one forward pass, and it keeps no
    activation alive. Which module aliases which is fixed the first time each module runs; a module
    that shares differently on a later call (not seen in practice) raises a ``ValueError``, since
    statistics already merged cannot be split. :attr:`aliases` maps each module that ran to the module
    that owns its statistics (itself for an owner).

    Statistics are created when a module first runs, so modules that share an input never hold
    separate copies; :func:`collect_input_statistics` creates zeros for modules a rank never ran once
    the ranks agree on the sharing, so every rank all-reduces the same tensors.
    """

    def __init__(self, modules: Mapping[str, nn.Module], compute_dtype: torch.dtype = torch.float32):
        if not modules:
            raise ValueError("InputRecorder needs at least one module")
        self.modules = dict(modules)
        self.compute_dtype = compute_dtype
        self.statistics: dict[str, InputStatistics] = {}
        self.aliases: dict[str, str] = {}
        self._mask: torch.Tensor | None = None
        self._handles: list[Any] = []
        # The last input each owner recorded: id -> (weak reference, version, owner name), and owner -> id.
        self._recent: dict[int, tuple[weakref.ref, int | None, str]] = {}
        self._recent_id: dict[str, int] = {}

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """Mask ``[batch, seq]`` (nonzero = real token) applied to the next forward passes; ``None`` keeps all."""
        self._mask = None if mask is None else mask.bool()

    def _sharer(self, x: torch.Tensor) -> str | None:
        """The owner that recorded this very tensor object last, if any."""
        entry = self._recent.get(id(x))
        return entry[2] if entry is not None and entry[0]() is x and entry[1] == _version(x) else None

    def _remember(self, owner: str, x: torch.Tensor) -> None:
        old = self._recent_id.pop(owner, None)
        if old is not None and self._recent.get(old, (None, None, None))[2] == owner:
            del self._recent[old]
        self._recent[id(x)] = (weakref.ref(x), _version(x), owner)
        self._recent_id[owner] = id(x)

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            raw = args[0]
            owner = self._sharer(raw) or name
            known = self.aliases.setdefault(name, owner)
            if known != owner:
                raise ValueError(
                    f"{name} shared its input with {known} in an earlier forward pass but with {owner} now; "
                    "statistics of modules sharing an input are merged, so the sharing must not change"
                )
            if owner != name:  # the owner already recorded this very tensor
                self.statistics[name] = self.statistics[owner]
                return
            x = raw.detach()
            pooled = x.ndim == 2 and self._mask is not None and x.shape[0] == self._mask.shape[0]
            if self._mask is not None and not pooled:  # one row per example (a pooler) has no padding to drop
                if x.shape[:-1] != self._mask.shape:
                    raise ValueError(
                        f"{name} received input of shape {tuple(x.shape)} but the token mask has shape "
                        f"{tuple(self._mask.shape)}; expected inputs [batch, seq, features] matching the mask"
                    )
                x = x[self._mask.to(x.device)]
            x = x.reshape(-1, x.shape[-1])
            if name not in self.statistics:
                weight = getattr(module, "weight", None)
                device = weight.device if isinstance(weight, torch.Tensor) else x.device
                self.statistics[name] = InputStatistics.zeros(x.shape[-1], device, self.compute_dtype)
            self.statistics[name].update(x)
            self._remember(name, raw)

        return record

    def __enter__(self) -> InputRecorder:
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._mask = None
        self._recent, self._recent_id = {}, {}


def _version(x: torch.Tensor) -> int | None:
    """The tensor's in-place modification counter (``None`` for inference-mode tensors, which keep none)."""
    try:
        return x._version
    except RuntimeError:
        return None


@torch.no_grad()
def collect_input_statistics(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Iterable[Mapping[str, Any]],
    *,
    compute_dtype: torch.dtype = torch.float32,
    mask_key: str = "attention_mask",
    max_batches: int | None = None,
    progress: bool = True,
    total: int | None = None,
    stop_after: nn.Module | None = None,
) -> dict[str, InputStatistics]:
    """Run ``model`` over ``batches`` (dicts of model inputs) and return each module's input statistics.

    Labels are dropped so that no loss is computed; the model's device is used for the inputs.
    ``total`` (the number of batches, when ``batches`` has no length) gives the progress bar its ETA.
    ``stop_after``: end each forward pass once this module has run (the rest of the model is not needed).
    Statistics are summed across ranks when a process group exists (every rank must call this).
    Modules that received the same input tensor map to the same :class:`InputStatistics` object.
    """
    device = model_device(model)
    stop = stop_after.register_forward_hook(_stop_forward) if stop_after is not None else None
    try:
        with eval_mode(model), InputRecorder(modules, compute_dtype) as recorder:
            _record_batches(model, recorder, batches, device, mask_key, max_batches, progress, total)
    finally:
        if stop is not None:
            stop.remove()
    return _reduced(recorder.statistics, recorder.modules, compute_dtype)


class _StopForward(Exception):
    """Raised by :func:`_stop_forward` to end a forward pass early."""


def _stop_forward(module: nn.Module, args, output) -> None:
    raise _StopForward


def _record_batches(model, recorder, batches, device, mask_key, max_batches, progress, total) -> None:
    if max_batches is not None:
        total = min(max_batches, total or max_batches)
    bar = tqdm(batches, desc="input statistics", unit="batch", disable=not progress, total=total)
    for index, batch in enumerate(bar):
        if max_batches is not None and index >= max_batches:
            break
        inputs = model_inputs(batch, device)
        recorder.set_token_mask(inputs.get(mask_key))
        try:
            model(**inputs)
        except _StopForward:
            pass


def _agreed_owners(statistics: Mapping[str, InputStatistics], names: list[str]) -> list[int | None]:
    """For each module, the index (in ``names``) of the first module whose statistics it shares, agreed by all
    ranks; ``None`` for a module no rank ran.

    A rank that never ran a module (fewer batches than the others) learns the sharing from the ranks that
    did; ranks that ran a module but disagree on its sharing raise the same error everywhere.
    """
    first: dict[int, int] = {}
    local = torch.zeros(3, len(names), dtype=torch.float64)
    for index, name in enumerate(names):
        if name in statistics:
            owner = first.setdefault(id(statistics[name]), index)
            local[:, index] = torch.tensor([1.0, owner, owner * owner], dtype=torch.float64)
    distributed.all_reduce_sum_([local])
    ran, total, squares = local
    if (squares * ran != total * total).any():
        raise ValueError(
            "the ranks disagree on which modules share an input: "
            + ", ".join(names[i] for i in torch.nonzero(squares * ran != total * total).flatten().tolist()[:3])
        )
    return [int(total[i] / ran[i]) if ran[i] else None for i in range(len(names))]


def _reduced(
    statistics: dict[str, InputStatistics],
    modules: Mapping[str, nn.Module],
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, InputStatistics]:
    """Check that every module ran and saw tokens, and sum the statistics across ranks.

    The ranks first agree on which modules share statistics (:func:`_agreed_owners`); a rank creates zeros for
    an owner it never ran and points aliases at their owner, so every rank all-reduces the same tensors in the
    same order, each shared object once.
    """
    names = list(modules)
    owners = _agreed_owners(statistics, names)
    for index, name in enumerate(names):
        module, owner = modules[name], owners[index]
        if owner is not None and owner != index:
            statistics[name] = statistics[names[owner]]
        elif name not in statistics and isinstance(getattr(module, "in_features", None), int):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):  # a module this rank never ran: its zeros join the all-reduce
                statistics[name] = InputStatistics.zeros(module.in_features, weight.device, compute_dtype)
    missing = [name for name in modules if name not in statistics]
    if missing:
        raise ValueError(
            f"modules {missing} never ran during the forward passes (empty data, or not on the forward path)"
        )
    for stats in _distinct(statistics[name] for name in names):
        stats.all_reduce_()
    empty = [name for name, stats in statistics.items() if stats.count.item() == 0]
    if empty:
        raise ValueError(
            f"no tokens reached {empty[:3]}{' ...' if len(empty) > 3 else ''}: the data was empty, every token "
            "was masked as padding, or the modules are not on the forward path"
        )
    return statistics


def _distinct(statistics: Iterable[InputStatistics]) -> list[InputStatistics]:
    """Each object once, in first-seen order (modules sharing an input share one object)."""
    return list({id(stats): stats for stats in statistics}.values())


def statistics_bytes(module: nn.Module, compute_dtype: torch.dtype = torch.float32) -> int:
    """Memory the input statistics of ``module`` take: the float64 ``X^T X`` plus its ``compute_dtype`` buffer.

    An upper bound when ``module`` shares its input with another module of the same pass, which holds the
    one shared copy.
    """
    width = module.in_features
    return width * width * (8 + torch.finfo(compute_dtype).bits // 8)


def _sibling_runs(modules: Mapping[str, nn.Module]) -> list[list[tuple[str, nn.Module]]]:
    """Consecutive modules with the same parent and input width: those that may share an input (q/k/v, gate/up)."""
    runs: list[list[tuple[str, nn.Module]]] = []
    for name, module in modules.items():
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last[0].rpartition(".")[0] == name.rpartition(".")[0]
            and getattr(last[1], "in_features", None) == getattr(module, "in_features", None)
        ):
            runs[-1].append((name, module))
        else:
            runs.append([(name, module)])
    return runs


def group_by_memory(
    modules: Mapping[str, nn.Module], budget_bytes: float | None, compute_dtype: torch.dtype = torch.float32
) -> list[dict[str, nn.Module]]:
    """Split ``modules`` (in model order) into consecutive groups whose statistics fit ``budget_bytes``
    (``None``: one group).

    The accounting is conservative: every module counts :func:`statistics_bytes`, although modules that turn
    out to share an input (known only after a forward pass) hold one copy. Sharing is detected within a group
    only, so a run of consecutive siblings with the same input width (``q/k/v_proj``, ``gate/up_proj``: the
    candidates) starts a new group rather than being split when it fits in one; a run that does not fit is
    split, which stays correct (its parts are recorded and decomposed once per group).
    """
    if budget_bytes is None:
        return [dict(modules)]
    groups: list[dict[str, nn.Module]] = [{}]
    used = 0
    for run in _sibling_runs(modules):
        sizes = [statistics_bytes(module, compute_dtype) for _, module in run]
        for (name, _), size in zip(run, sizes):
            if size > budget_bytes:
                raise ConfigError(
                    f"the input statistics of {name} take {size / 2**30:.4g} GiB, more than the memory budget of "
                    f"{budget_bytes / 2**30:.4g} GiB; raise the budget (WaRP's basis_memory_gb, LoRA-Null's "
                    "calib_memory_gb)"
                )
        if groups[-1] and used + sum(sizes) > budget_bytes >= sum(sizes):
            groups.append({})
            used = 0
        for (name, module), size in zip(run, sizes):
            if groups[-1] and used + size > budget_bytes:
                groups.append({})
                used = 0
            groups[-1][name] = module
            used += size
    return groups


@torch.no_grad()
def compute_bases(
    model: nn.Module,
    modules: Mapping[str, nn.Linear],
    batches: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
    *,
    centered: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    eigh_dtype: torch.dtype = torch.float64,
    memory_gb: float | None = None,
    progress: bool = True,
    total: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """Eigenbases of each module's input second moment (or covariance, ``centered=True``) over ``batches``.

    The basis of WaRP's phase 1 and of LoRA-Null's null space. Padding tokens are excluded through
    the batches' attention masks and statistics are summed across ranks (every rank must call this).
    Modules that receive the same input tensor (q/k/v of one attention block, gate/up of one MLP) share
    one statistics object, decomposed once; its basis and eigenvalues (the same tensor objects) and token
    count are returned under each of their names. Under several processes each rank decomposes every
    ``world``-th distinct statistics object and broadcasts it, instead of every rank decomposing all of
    them; ``eigh_dtype`` is the decomposition's precision.

    ``memory_gb`` bounds the memory the statistics take at once: the modules are processed in groups
    (:func:`group_by_memory`), one pass over the data per group, each pass stopped after the group's
    last module, and a group's statistics are freed once decomposed. Several groups need the data
    more than once: give ``batches`` as a list, a DataLoader or a function returning a fresh iterable.
    Sharing is detected within a group (the grouping keeps candidate siblings together when they fit).

    Returns:
        ``(bases, eigenvalues, token_counts)``; ``bases[name]`` is float32 of shape (d_in, d_in),
        columns sorted by decreasing eigenvalue.
    """
    bases, eigenvalues, counts = {}, {}, {}
    for name, basis, values, count in iter_bases(
        model,
        modules,
        batches,
        centered=centered,
        compute_dtype=compute_dtype,
        eigh_dtype=eigh_dtype,
        memory_gb=memory_gb,
        progress=progress,
        total=total,
    ):
        bases[name], eigenvalues[name], counts[name] = basis, values, count
    return bases, eigenvalues, counts


def iter_bases(
    model: nn.Module,
    modules: Mapping[str, nn.Linear],
    batches: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
    *,
    centered: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    eigh_dtype: torch.dtype = torch.float64,
    memory_gb: float | None = None,
    progress: bool = True,
    total: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """:func:`compute_bases` one module at a time: ``(name, basis, eigenvalues, token_count)`` in ``out_dtype``,
    group by group. A statistics object and its basis are released once every module sharing them has been
    yielded, so a consumer that keeps only what it needs of each basis (LoRA-Null keeps ``r`` columns) holds one
    basis at a time beside the group's remaining statistics. Every rank must iterate to the end."""
    groups = group_by_memory(modules, None if memory_gb is None else memory_gb * 2**30, compute_dtype)
    if len(groups) > 1 and not callable(batches) and iter(batches) is batches:
        raise ValueError(
            f"{len(groups)} groups of modules need {len(groups)} passes over the data, but batches is a one-pass "
            "iterator; give a list, a DataLoader or a function returning the batches"
        )
    rank, world = distributed.rank(), distributed.world_size()
    index = 0
    for group in groups:
        statistics = collect_input_statistics(
            model,
            group,
            batches() if callable(batches) else batches,
            compute_dtype=compute_dtype,
            progress=progress,
            total=total,
            stop_after=list(group.values())[-1] if len(groups) > 1 else None,
        )
        decomposed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(statistics) -> (basis, eigenvalues)
        names_left = Counter(id(stats) for stats in statistics.values())
        for name in list(statistics):
            stats = statistics.pop(name)  # freed with its last name: what a consumer drops is not held here
            if id(stats) not in decomposed:  # the ranks agree on the sharing, so on this order
                moment = stats.second_moment(centered=centered)
                owner = index % world
                index += 1
                if owner == rank:
                    u, values = eigenbasis(moment, dtype=eigh_dtype)
                    u, values = u.to(out_dtype), values.to(out_dtype)
                else:
                    u = moment.new_empty(moment.shape, dtype=out_dtype)
                    values = moment.new_empty(moment.shape[:1], dtype=out_dtype)
                distributed.broadcast_(u, owner)
                distributed.broadcast_(values, owner)
                decomposed[id(stats)] = u, values
                del moment
            yield name, *decomposed[id(stats)], int(stats.count.item())
            names_left[id(stats)] -= 1
            if not names_left[id(stats)]:
                del decomposed[id(stats)]
