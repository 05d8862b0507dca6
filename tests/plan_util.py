"""What a run really allocates, to check the memory plans' static items against (test helper)."""

import torch


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts its whole storage; None is skipped)."""
    seen = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def optimizer_bytes(optimizer) -> int:
    """Bytes of an optimizer's state tensors (AdamW: both moments and, fused, the steps)."""
    return storage_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
