"""Read what a run wrote to TensorBoard (test helper)."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_events(run_dir) -> EventAccumulator:
    """All event files under ``run_dir`` merged, as TensorBoard would show them in one run."""
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event files under {run_dir}"
    accumulator = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator
