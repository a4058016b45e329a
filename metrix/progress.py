"""One progress bar for every long loop (training epochs, caching, decoding, embedding a gallery):
rich's, showing the rate and whatever running values the loop reports, or nothing when disabled."""

from __future__ import annotations


class ProgressBar:
    """`with ProgressBar(enabled, "epoch 3/20", total, unit=None, values={"loss": "loss {:.4f}"}) as
    advance:` then `advance(n=1, loss=0.31)` once per step. A rate column counts `unit` per second
    (none when unit is None); each value shows as its format string makes it."""

    def __init__(
        self,
        enabled: bool,
        description: str,
        total: int,
        unit: str | None = "images",
        values: dict[str, str] | None = None,
    ):
        self.enabled = enabled and total > 0
        self.description, self.total, self.unit, self.values = description, total, unit, values or {}

    def __enter__(self):
        if not self.enabled:
            return lambda n=1, **values: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        unit = self.unit

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed or 0:.1f} {unit}/s")

        shown = [TextColumn(f"{{task.fields[{name}]}}") for name in self.values]
        rate = [Rate()] if unit else []
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            *shown,
            *rate,
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task(self.description, total=self.total, **{name: "" for name in self.values})

        def advance(n: int = 1, **values) -> None:
            formatted = {k: self.values[k].format(v) for k, v in values.items()}
            self.bar.update(task, advance=n, **formatted)

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False
