"""py-spy's collapsed stacks → where the time goes: ranked functions and a flame graph SVG.

A frame reads ``function (path:line)``; paths are shortened to the repository
(``streams/timeline/state.py``), the package (``aiokafka/producer/producer.py``) or the
standard library (``stdlib/asyncio/events.py``), and lines are dropped, so a function is
counted once however many lines of it were sampled. Self time is where the sample's stack
ends; total time is every function on the stack (once per stack).
"""

from __future__ import annotations

import html
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The flow of a batch: the engine's transaction, the worker's handlers, a tick's fires.
BREAKDOWN = ("streams/kafka/engine.py:_process", "streams/processes/worker.py:process",
             "streams/timeline/state.py:tick", "streams/kafka/engine.py:decode_all")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def short_path(path: str) -> str:
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    for ours in ("/streams/", "/schemas/", "/bench/", "/tests/"):
        if ours in path:
            return ours[1:] + path.rsplit(ours, 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return f"stdlib/{match[1]}" if match else path


def frame_name(frame: str) -> str:
    """``path:function`` of one collapsed frame."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{short_path(match['path'])}:{match['func']}"


def area(name: str) -> str:
    """The package or layer a function belongs to (streams.timeline, pydantic, asyncio…)."""
    path = name.split(":", 1)[0]
    parts = path.split("/")
    if parts[0] == "streams":
        return "streams." + parts[1].removesuffix(".py") if len(parts) > 1 else "streams"
    if parts[0] == "stdlib":
        return parts[1].removesuffix(".py") if len(parts) > 1 else "stdlib"
    return parts[0].removesuffix(".py")


@dataclass
class Stacks:
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)

    @classmethod
    def read(cls, path: Path) -> Stacks:
        stacks = cls()
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or " " not in line:
                continue
            frames, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            stacks.counts[tuple(frame_name(f) for f in frames.split(";"))] += int(count)
        return stacks

    @property
    def samples(self) -> int:
        return sum(self.counts.values())

    def ranking(self, top: int = 15) -> dict[str, Any]:
        """The functions with most self and most total time, and time per area, in % of
        the samples (py-spy samples only while the process runs Python, not while idle)."""
        total = self.samples or 1
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        areas: Counter[str] = Counter()
        for stack, count in self.counts.items():
            own[stack[-1]] += count
            areas[area(stack[-1])] += count
            for name in set(stack):
                inclusive[name] += count

        def pct(counter: Counter[str], keep: Callable[[str, int], bool]) -> list[dict[str, Any]]:
            rows = [(k, v) for k, v in counter.most_common() if keep(k, v)]
            return [{"function": k, "percent": round(100 * v / total, 1)} for k, v in rows[:top]]

        def ours(name: str, count: int) -> bool:
            # The process's entry frames hold every sample and say nothing: left out.
            return name.startswith(("streams/", "schemas/")) and count < 0.9 * total

        return {"samples": self.samples, "self": pct(own, lambda k, v: True),
                "total_ours": pct(inclusive, ours),
                "breakdown": {parent: self.children(parent, top=8) for parent in BREAKDOWN
                              if inclusive[parent]},
                "areas": [{"area": k, "percent": round(100 * v / total, 1)}
                          for k, v in areas.most_common(top)]}


    def children(self, parent: str, top: int = 8) -> list[dict[str, Any]]:
        """Where ``parent``'s time goes: its callees' shares (and its own) of all samples."""
        total = self.samples or 1
        kids: Counter[str] = Counter()
        for stack, count in self.counts.items():
            if parent in stack:
                i = len(stack) - 1 - stack[::-1].index(parent)
                kids[stack[i + 1] if i + 1 < len(stack) else "(self)"] += count
        return [{"function": k, "percent": round(100 * v / total, 1)}
                for k, v in kids.most_common(top)]


def svg(stacks: Stacks, title: str, width: int = 1400, row_px: int = 16) -> str:
    """An icicle-style flame graph (roots on top), one rectangle per function per path."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, count in stacks.counts.items():
        node = tree
        node["n"] += count
        for name in stack:
            node = node["kids"].setdefault(name, {"n": 0, "kids": {}})
            node["n"] += count
    total = tree["n"] or 1
    rects: list[str] = []
    depth_max = [0]

    def draw(node: dict[str, Any], x: float, depth: int) -> None:
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.5:
                depth_max[0] = max(depth_max[0], depth)
                y = 30 + depth * row_px
                hue = 10 + zlib.crc32(area(name).encode()) % 50
                fits = int(w / 6.5)  # characters of 11 px monospace
                label = html.escape(name if len(name) <= fits
                                    else name[:fits - 2] + ".." if fits > 3 else "")
                tip = html.escape(f"{name} ({kid['n']} samples, {100 * kid['n'] / total:.1f}%)")
                rects.append(
                    f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row_px - 1}" fill="hsl({hue},85%,60%)"/>'
                    f'<text x="{x + 2:.1f}" y="{y + row_px - 4}">{label}</text></g>')
                draw(kid, x, depth + 1)
            x += w

    draw(tree, 0.0, 0)
    height = 40 + (depth_max[0] + 1) * row_px
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="monospace" font-size="11">'
            f'<text x="4" y="18" font-size="14">{html.escape(title)} — {stacks.samples} samples; '
            f'hover for names and shares</text>{"".join(rects)}</svg>\n')


def render(raw: Path, title: str) -> dict[str, Any]:
    """Write ``raw``'s flame graph beside it (.svg) and return its ranking."""
    stacks = Stacks.read(raw)
    target = raw.with_suffix(".svg")
    target.write_text(svg(stacks, title))
    return {"raw": str(raw), "svg": str(target), **stacks.ranking()}
