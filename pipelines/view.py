"""The queue as a table: what ``python -m pipelines stats`` prints."""

from __future__ import annotations

from actors.stats import GroupStats, QueueStats

COLUMNS = (
    "group",
    "kind",
    "limit",
    "active",
    "peak",
    "pending",
    "wait p50",
    "wait p95",
    "budget left",
)


def render(stats: QueueStats) -> str:
    rows = [
        (
            group,
            g.kind.value,
            "-" if g.limit is None else str(g.limit),
            str(g.active),
            str(g.peak_active),
            str(g.pending),
            f"{g.wait_p50_seconds:.2f}s",
            f"{g.wait_p95_seconds:.2f}s",
            budget_left(g),
        )
        for group, g in sorted(stats.groups.items())
    ]
    widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=False)]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in (COLUMNS, *rows)
    ]
    cap = "none" if stats.global_limit is None else str(stats.global_limit)
    lines.append(
        f"total active {stats.total_active}, pending {stats.total_pending}; global cap {cap}"
    )
    return "\n".join(lines)


def budget_left(group: GroupStats) -> str:
    """E.g. "412/600 rpm, 9120/12000 tpm"; "3/250 rpm (learned), paused 1.0 s" after a
    429; "-" without a budget."""
    learned = group.learned_rpm is not None
    sides = [
        f"{left}/{per_minute} {unit}"
        for left, per_minute, unit in (
            (group.requests_left, group.learned_rpm if learned else group.rpm, "rpm"),
            (group.tokens_left, group.tpm, "tpm"),
        )
        if per_minute is not None
    ]
    if learned:
        sides[0] += " (learned)"
    if group.paused_seconds > 0:
        sides.append(f"paused {group.paused_seconds:.1f} s")
    return ", ".join(sides) or "-"
