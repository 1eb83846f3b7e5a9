"""The queue as a table: what ``python -m pipelines stats`` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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


FLOW_COLUMNS = ("flow", "waiting", "running", "held", "service", "share")
MODEL_COLUMNS = ("model", "servers", "granted", "fallbacks", "fell back")


def render(stats: QueueStats) -> str:
    """The groups, one row each, the totals and the groups out of rotation, the models of
    several servers or with fallbacks, then the flows of each group where one waits or
    runs now."""
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
    lines = table(COLUMNS, rows, left=2)
    cap = "none" if stats.global_limit is None else str(stats.global_limit)
    lines.append(
        f"total active {stats.total_active}, pending {stats.total_pending}; global cap {cap}"
    )
    for group, g in sorted(stats.groups.items()):
        if g.probing:
            lines.append(f"probing (one call let in): {group}: {g.out_reason}")
        elif g.out_reason is not None:
            lines.append(f"out of rotation for {g.out_seconds:.1f} s more: {group}: {g.out_reason}")
    if stats.models:
        lines.extend(
            table(MODEL_COLUMNS, [model_row(m, stats) for m in sorted(stats.models)], left=2)
        )
    for group, g in sorted(stats.groups.items()):
        if any(flow.waiting or flow.running for flow in g.flows.values()):
            lines.append(f"flows of {group}")
            flows = [
                (
                    name,
                    str(flow.waiting),
                    str(flow.running),
                    f"{flow.served_seconds:.1f}s",
                    f"{flow.service:,.0f}",
                    f"{flow.share:.0%}",
                )
                for name, flow in sorted(g.flows.items(), key=lambda f: -f[1].service)
            ]
            lines.extend(table(FLOW_COLUMNS, flows, left=1))
    return "\n".join(lines)


def model_row(model: str, stats: QueueStats) -> tuple[str, ...]:
    """E.g. ("llama", "gpu-a, gpu-b", "57 / 43", "gpt after 2.0 s", "12: WaitTooLong 12")."""
    m = stats.models[model]
    granted = [stats.groups[g].granted if g in stats.groups else 0 for g in m.groups]
    after = "" if m.fallback_after_seconds is None else f" after {m.fallback_after_seconds} s"
    why: Counter[str] = Counter()
    for reasons in m.fallbacks_taken.values():
        why.update(reasons)
    fell = ", ".join(f"{reason} {n}" for reason, n in why.most_common())
    return (
        model,
        ", ".join(m.groups),
        " / ".join(map(str, granted)),
        ", ".join(m.fallbacks) + after if m.fallbacks else "-",
        f"{why.total()}: {fell}" if why else "0" if m.fallbacks else "-",
    )


def table(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, left: int) -> list[str]:
    """``rows`` under ``columns``, each column as wide as its widest cell; the first
    ``left`` columns aligned left, the others right."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=False)]
    return [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in (columns, *rows)
    ]


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
