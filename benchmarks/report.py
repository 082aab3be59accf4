"""What each benchmark hands to the report, and the Markdown of BENCHMARKS.md."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Goal:
    what: str
    wanted: str
    measured: str
    met: bool | None  # None: could not be measured
    why: str = ""  # for a missed goal: what the figures show about the cause
    judged: bool = True  # False: a figure shown beside the goals (wanted "-"), not judged

    @classmethod
    def reported(cls, what: str, measured: str) -> Goal:
        """A figure beside the goals that no goal judges, so that none is taken for another."""
        return cls(what, "-", measured, None, judged=False)


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        self.lines.extend("| " + " | ".join(row) + " |" for row in rows)
        self.lines.append("")

    def text(self, *paragraph: str) -> None:
        self.lines.append(" ".join(paragraph))
        self.lines.append("")


def verdict(goal: Goal) -> str:
    if not goal.judged:
        return "reported"
    return {True: "met", False: "**missed**", None: "not measured"}[goal.met]


def render(title: str, preamble: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *preamble, "", "## Goals", ""]
    goals = [goal for section in sections for goal in section.goals]
    out += ["| goal | wanted | measured | |", "|---|---|---|---|"]
    out += [f"| {g.what} | {g.wanted} | {g.measured} | {verdict(g)} |" for g in goals]
    missed = [g for g in goals if g.met is False and g.why]
    if missed:
        out += ["", "Why the missed goals were missed:", ""]
        out += [f"- **{g.what}**: {g.why}" for g in missed]
    for section in sections:
        out += ["", f"## {section.title}", "", *section.lines]
    return "\n".join(out).rstrip() + "\n"
