"""What a person sees while the pipeline runs: one view of the whole pipeline (rich), fed by the
runs' own event logs in the Dagster instance.

A line for the pipeline (runs done of runs planned, elapsed time) and one bar per running run: its
stage's assets, its partition, the step it is in, and the step's own count where it logs one ("s2:
30/64 observations written", "step 50/200", "block 7/12") with an ETA. Each finished run leaves one
line: done or FAILED, its time, and for a failure the error and where the run's full log is. On a
terminal that is not interactive (CI, a pipe) only those lines are printed. Failures are repeated
on stderr when the view closes: the asset and partition, the error, the run's log file. With `verbose`, every
message of every run is printed as it comes.
"""

from __future__ import annotations

import re
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

COUNT = re.compile(r"(\d+)/(\d+)")


class PipelineView:
    """Started with `with`; the pipeline's executor calls it as runs start, log and end."""

    def __init__(self, runs_planned: int, verbose: bool = False, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.verbose = verbose
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.pipeline = self.progress.add_task("pipeline: runs", total=runs_planned)
        self.errors = Console(stderr=True, highlight=False)
        self.failures: list[str] = []
        self.tasks: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        self.started = time.perf_counter()

    def __enter__(self) -> "PipelineView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        for failure in self.failures:  # once the live view is gone, on stderr: what failed, why, where the log is
            self.errors.print(failure, markup=False, highlight=False, style="red")

    def stage(self, number: int, total: int, names: list[str], partitions: int) -> None:
        self.progress.update(self.pipeline, description=f"stage {number}/{total}: {', '.join(names)}"
                             + (f" x {partitions} partitions" if partitions > 1 else ""))

    def run_started(self, run_id: str, label: str) -> None:
        self.labels[run_id] = label
        self.tasks[run_id] = self.progress.add_task(f"  {label}", total=None)

    def run_message(self, run_id: str, step: str | None, message: str) -> None:
        """A log line of a run: its count, if it has one, becomes the run's bar."""
        if self.verbose:
            self.progress.console.print(f"[dim]{self.labels.get(run_id, run_id)} {step or ''}:[/dim] {message}",
                                        markup=True, highlight=False)
        task = self.tasks.get(run_id)
        found = COUNT.search(message)
        if task is None or not found:
            return
        done, total = int(found.group(1)), int(found.group(2))
        if 0 < total and done <= total:
            self.progress.update(task, completed=done, total=total,
                                 description=f"  {self.labels[run_id]} [dim]{step or ''} {message[:48]}[/dim]")

    def run_step(self, run_id: str, step: str) -> None:
        task = self.tasks.get(run_id)
        if task is not None:
            self.progress.update(task, description=f"  {self.labels[run_id]} [dim]{step}[/dim]", total=None, completed=0)

    def run_finished(self, run_id: str, success: bool, seconds: float, error: str | None, log: str) -> None:
        task = self.tasks.pop(run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.pipeline)
        label = self.labels.get(run_id, run_id)
        if success:
            self.progress.console.print(f"{label}: done in {seconds:.1f} s", markup=False, highlight=False)
        else:
            self.progress.console.print(f"{label}: FAILED in {seconds:.1f} s", markup=False, highlight=False)
            self.failures.append(f"FAILED {label}: {error}\n  full log: {log}")

    def note(self, text: str, error: bool = False) -> None:
        self.progress.console.print(text, markup=False, highlight=False, style="red" if error else None)
