"""Reading py-spy's folded stacks (``--format raw``): samples by library, a call tree of our code, and the
hottest functions by self time."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

OURS = ("scheduler/", "crawler_stub/")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
# frames that only say "a thread is running": dropped from the tree
PLUMBING = ("threading.py", "concurrent/futures/thread.py", "<frozen runpy>", "scheduler/__main__.py",
            "scheduler/cli/")  # fmt: skip


def _file(frame: str) -> str:
    match = FRAME.match(frame)
    return match.group("file") if match else frame


def _ours(frame: str) -> bool:
    return _file(frame).startswith(OURS)


def package(frame: str) -> str:
    """``redis/client.py`` → redis; ``threading.py`` → threading; ``<frozen runpy>`` → runpy."""
    path = _file(frame).strip("<>").removeprefix("frozen ")
    return path.split("/", 1)[0].removesuffix(".py")


@dataclass
class Node:
    total: int = 0
    self_: int = 0
    children: dict[str, Node] = field(default_factory=dict)


@dataclass
class Stacks:
    samples: list[tuple[list[str], int]]

    @classmethod
    def load(cls, path: Path) -> Stacks:
        samples = []
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                samples.append((stack.split(";"), int(count)))
        return cls(samples)

    @property
    def total(self) -> int:
        return sum(count for _, count in self.samples)

    def by_library(self) -> Counter[str]:
        """Each sample charged to the library our code was inside: the first frame below our deepest frame
        (or "our code" when the leaf is ours; the frame's package when no frame of ours is on the stack)."""
        owners: Counter[str] = Counter()
        for frames, count in self.samples:
            deepest = max((i for i, f in enumerate(frames) if _ours(f)), default=None)
            if deepest is None:
                owners[f"{package(frames[-1])} (outside our code)"] += count
            elif deepest == len(frames) - 1:
                owners["our code itself"] += count
            else:
                owners[package(frames[deepest + 1])] += count
        return owners

    def tree(self) -> Node:
        """Our frames and the library calls they make (everything under a library call is folded into it)."""
        root = Node()
        for frames, count in self.samples:
            path = [f for f in frames if not _file(f).startswith(PLUMBING)]
            for i, frame in enumerate(path):
                if not _ours(frame) and not any(_ours(f) for f in path[i + 1 :]):
                    path = path[: i + 1]
                    break
            node = root
            node.total += count
            for frame in path:
                node = node.children.setdefault(frame, Node())
                node.total += count
            node.self_ += count
        return root

    def self_time(self) -> Counter[str]:
        leaves: Counter[str] = Counter()
        for frames, count in self.samples:
            leaves[frames[-1]] += count
        return leaves

    def report(self, top: int = 25, min_share: float = 0.015) -> list[str]:
        total = self.total or 1
        out = [f"py-spy: {total} samples with the GIL held (--gil), by where our code was:"]
        for owner, count in self.by_library().most_common():
            out.append(f"  {100 * count / total:5.1f}%  {owner}")
        out += [
            "",
            f"Call tree of our code (inclusive share of GIL-held samples; branches under {100 * min_share:.1f}% cut):",
        ]

        def walk(node: Node, depth: int) -> None:
            for frame, child in sorted(node.children.items(), key=lambda kv: -kv[1].total):
                if child.total / total < min_share:
                    continue
                own = f"  (self {100 * child.self_ / total:.1f}%)" if child.self_ / total >= min_share else ""
                out.append(f"  {100 * child.total / total:5.1f}%  {'  ' * depth}{frame}{own}")
                walk(child, depth + 1)

        walk(self.tree(), 0)
        out += ["", f"Top {top} functions by self time (leaf frame):"]
        for frame, count in self.self_time().most_common(top):
            out.append(f"  {100 * count / total:5.1f}%  {frame}")
        return out
