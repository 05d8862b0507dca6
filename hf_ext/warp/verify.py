"""``hf-ext warp verify``: re-check a finished WaRP run from its files.

- the basis is orthonormal;
- reparameterizing reproduces the weights at the start of phases 2 and 3;
- the masks freeze ``keep_ratio`` of the coefficients (within one entry per layer, or in total
  for a global threshold);
- each swept importance arm's masks freeze its keep_ratio, and are the masks phase 2's importance gives;
- each control arm's masks freeze as many coefficients per layer as the importance masks of its keep_ratio and
  layout (none for ``none``);
- the frozen coefficients after each masked arm equal, bit for bit, those at its start;
- head 'shared': the other task's rows of the shared classifier head (no gradient in a phase) changed at most
  by a uniform weight-decay shrink in phase 2 and every arm; head 'prototypes': the utility rows are phase 2's
  saved prototypes, and every arm's head is phase 2's bit for bit;
- the basis, masks and phase-2 model that the arms used are the files phase 2 recorded (SHA-256),
  and they are still the files on disk;
- phases 2 and 3 have run: a missing phase is a failed check, not a silent pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..activations import orthonormality_error
from ..io import file_sha256, load_tensors, read_json
from ..models import classifier_head
from . import lineage
from .arms import layout_masks
from .layout import WarpLayout
from .reparam import coefficient_parameters, reparameterize
from .run import WarpRun, load_basis, load_masks

ORTHONORMALITY_TOL = 1e-4
RECONSTRUCTION_TOL = 1e-4  # relative to max |W|


@dataclass
class Check:
    what: str
    module: str
    value: str
    ok: bool


def _frozen(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return mask.expand(shape)


@torch.no_grad()
def verify_run(run_dir: str | Path) -> list[Check]:
    run = WarpRun.from_dir(run_dir, use_cpu=True)
    bases, _, _ = load_basis(run.dir)
    rank = run.warp_args.basis_rank
    checks = _missing_phases(run.layout, run.arms[0].name)
    if run.layout.metadata("phase2").is_file():
        checks.append(_phase2_basis_check(run.layout))
    for name, u in bases.items():
        error = orthonormality_error(u[:, :rank] if rank else u)
        checks.append(Check("U orthonormal: max |U^T U - I|", name, f"{error:.2e}", error < ORTHONORMALITY_TOL))

    heads = {}
    starts = {}
    for label, phase in (("phase 2", None), ("phase 3", "phase2")):
        if phase and not run.layout.model(phase).is_dir():
            continue
        model = run.load_model(phase)
        heads[phase] = _head(model)
        originals = {name: model.get_submodule(name).weight.detach().clone() for name in bases}
        modules = reparameterize(model, bases, rank=rank)
        for name, module in modules.items():
            error = ((module.weight - originals[name]).abs().max() / originals[name].abs().max()).item()
            checks.append(
                Check(f"{label} start: max |C U^T - W| / max |W|", name, f"{error:.2e}", error < RECONSTRUCTION_TOL)
            )
        starts[label] = {name: c.detach().clone() for name, c in coefficient_parameters(modules).items()}

    checks += _prototype_head_checks(run, heads) if run.uses_prototypes else _other_task_rows_checks(run, heads)

    if run.layout.masks.is_file():
        masks = load_masks(run.dir)
        info = read_json(run.layout.metadata("phase2"))
        keep = info["keep_ratio"]
        if info["threshold"] == "per_layer":
            for name, mask in masks.items():
                frozen, n = int(mask.sum()), mask.numel()
                checks.append(
                    Check(
                        f"mask ratio (keep_ratio {keep})",
                        name,
                        f"{frozen / n:.4f} ({frozen}/{n})",
                        abs(frozen - keep * n) <= 1,
                    )
                )
        else:
            frozen, n = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
            checks.append(
                Check(
                    f"mask ratio, global (keep_ratio {keep})",
                    "all",
                    f"{frozen / n:.4f} ({frozen}/{n})",
                    abs(frozen - keep * n) <= 1,
                )
            )

        importance = load_tensors(run.layout.importance)[0] if run.layout.importance.is_file() else None
        for arm in run.arms:
            if run.layout.metadata(arm.name).is_file():
                checks += _lineage_checks(run.layout, arm.name, arm.lineage)
            arm_masks = masks
            if arm.kind == "masked" and run.layout.arm_masks(arm.name).is_file():
                arm_masks, _ = load_tensors(run.layout.arm_masks(arm.name))
                checks += _arm_mask_checks(arm, arm_masks, importance)
            coefficients = run.layout.arm_coefficients(arm.name)
            if arm.kind != "masked" or not coefficients.is_file() or "phase 3" not in starts:
                continue
            final, _ = load_tensors(coefficients)
            for name, start in starts["phase 3"].items():
                frozen = _frozen(arm_masks[name], start.shape)
                deviation = (final[name][frozen] - start[frozen]).abs().max().item() if frozen.any() else 0.0
                moved = (final[name][~frozen] - start[~frozen]).norm().item()
                checks.append(
                    Check(
                        f"{arm.name}: frozen coefficients bit-identical",
                        name,
                        f"max dev {deviation:.1e}, trainable moved {moved:.3g}",
                        torch.equal(final[name][frozen], start[frozen]),
                    )
                )
    return checks


def _arm_mask_checks(arm, arm_masks: dict, importance: dict | None) -> list[Check]:
    """An arm's own masks: nothing frozen (``none``), else the importance masks of its keep_ratio and layout
    (importance arms: the same entries; controls: as many per layer)."""
    if arm.masks == "none":
        return [
            Check(f"{arm.name}: nothing frozen", name, f"{int(m.sum())} frozen", not m.any())
            for name, m in arm_masks.items()
        ]
    if importance is None:
        return [Check(f"{arm.name}: masks from phase 2's importance", "-", "importance.safetensors missing", False)]
    expected, _ = layout_masks(importance, arm.keep_ratio, arm.layout)
    checks = []
    for name, mask in arm_masks.items():
        if arm.masks == "importance":
            ok = torch.equal(mask, expected[name])
            what, value = f"{arm.name}: masks are phase 2's importance, keep {arm.keep_ratio:g}", "same entries"
        else:
            ok = int(mask.sum()) == int(expected[name].sum())
            what, value = (
                f"{arm.name}: as many frozen as importance",
                f"{int(mask.sum())} / {int(expected[name].sum())}",
            )
        checks.append(Check(what, name, value if ok else "differ", ok))
    return checks


def _prototype_head_checks(run: WarpRun, heads: dict) -> list[Check]:
    """head 'prototypes': phase 2's utility rows are its saved prototypes, and no arm moved the head."""
    if heads.get("phase2") is None or not run.layout.prototypes.is_file():
        return (
            [Check("prototype head saved", "phase2", "missing", False)]
            if run.layout.metadata("phase2").is_file()
            else []
        )
    prototypes = load_tensors(run.layout.prototypes)[0]["prototypes"]
    rows = torch.tensor(run.classes("utility"))
    checks = [
        Check(
            "phase 2: utility rows are the class-mean prototypes",
            "head.weight",
            "bit-identical" if torch.equal(heads["phase2"]["weight"][rows], prototypes) else "differ",
            torch.equal(heads["phase2"]["weight"][rows], prototypes),
        )
    ]
    for arm in run.arms:
        if not (run.layout.model(arm.name).is_dir() or run.layout.delta(arm.name).is_file()):
            continue
        after = _head(run.load_model(arm.name))
        same = all(torch.equal(after[n], heads["phase2"][n]) for n in after)
        checks.append(Check(f"{arm.name}: head frozen", "head", "bit-identical" if same else "moved", same))
    return checks


SHRINK_TOL = 1e-5  # spread of after/before ratios allowed for "moved only by a uniform weight decay"


def _head(model) -> dict[str, torch.Tensor] | None:
    """The classifier head's weight and bias (``None`` for a causal LM)."""
    head = classifier_head(model)
    if head is None:
        return None
    return {name: t.detach().float().cpu().clone() for name, t in head.named_parameters()}


def _other_task_rows_checks(run: WarpRun, heads: dict) -> list[Check]:
    """Each phase trains one task's rows of the shared head; the other task's rows get no gradient and may
    change only by AdamW's weight decay, a uniform shrink of each tensor (ratio after/before alike for all)."""
    if heads.get(None) is None:
        return []
    steps = [("phase 2", None, "phase2", "utility")]
    steps += [(arm.name, "phase2", arm.name, "safety") for arm in run.arms]
    checks = []
    for label, before_phase, after_phase, other in steps:
        saved = run.layout.model(after_phase).is_dir() or (
            after_phase != "phase2" and run.layout.delta(after_phase).is_file()
        )
        if before_phase not in heads or not saved:
            continue
        after = heads.get(after_phase) or _head(run.load_model(after_phase))
        heads[after_phase] = after
        rows = torch.tensor(run.classes(other))
        for name, before in heads[before_phase].items():
            b, a = before[rows], after[name][rows]
            keep = b.abs() > 1e-6 * b.abs().max()
            ratio = a[keep] / b[keep]
            spread = (ratio.max() - ratio.min()).item() if ratio.numel() else 0.0
            factor = ratio.median().item() if ratio.numel() else 1.0
            tiny_moved = (a[~keep] - factor * b[~keep]).abs().max().item() if (~keep).any() else 0.0
            ok = spread <= SHRINK_TOL and 0.5 < factor <= 1.0 + SHRINK_TOL and tiny_moved <= 1e-6 * b.abs().max()
            checks.append(
                Check(
                    f"{label}: {other} rows of the head moved only by weight decay",
                    f"head.{name}",
                    f"x{factor:.6f} (spread {spread:.1e})",
                    ok,
                )
            )
    return checks


def _missing_phases(layout: WarpLayout, first_arm: str) -> list[Check]:
    """A failed check per phase whose files are missing (phase 3: the first importance arm's): a partial run must
    not read as verified."""
    expected = {
        "phase 2": [layout.model("phase2"), layout.masks, layout.metadata("phase2")],
        "phase 3": [layout.delta(first_arm), layout.arm_coefficients(first_arm), layout.metadata(first_arm)],
    }
    checks = []
    for label, paths in expected.items():
        missing = [str(p.relative_to(layout.root)) for p in paths if not p.exists()]
        if missing:
            checks.append(Check(f"{label} files present", "-", f"missing: {', '.join(missing)}", False))
    return checks


def _phase2_basis_check(layout: WarpLayout) -> Check:
    """The basis on disk is the one phase 2 trained in (and built its masks in)."""
    recorded = read_json(layout.metadata("phase2")).get("lineage", {}).get("basis")
    found = file_sha256(layout.basis)
    value = "matches phase 2's record" if recorded == found else f"recorded {str(recorded)[:12]}, found {found[:12]}"
    return Check("phase 2 trained in this basis", "phase1/basis.safetensors", value, recorded == found)


def _lineage_checks(layout: WarpLayout, phase: str, kind: str) -> list[Check]:
    """The files arm ``phase`` used are those phase 2 recorded, and those ``phase`` recorded are still there;
    ``kind`` names what it reads (:data:`hf_ext.warp.lineage.INPUTS`)."""
    used = read_json(layout.metadata(phase)).get("lineage", {})
    checks = []
    for link in lineage.links(layout, kind):
        ok = link.ok and used.get(link.name) == link.found
        value = (
            "matches phase 2's record"
            if ok
            else link.describe()
            + ("" if used.get(link.name) == link.found else f"; {phase} recorded {str(used.get(link.name))[:12]}")
        )
        checks.append(Check(f"{phase} input is phase 2's file", link.name, value, ok))
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.what) for c in checks)
    lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.what:<{width}}  {c.value:<34}  {c.module}" for c in checks]
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed}/{len(checks)} checks passed")
    return "\n".join(lines)
