"""``lmgate probe URL [--json]``: what the server is, by evidence.

Prints the kind, version, whether it is self-hosted and why, its models
with their context windows and where each figure came from, the slot
count, and every signal the decision rests on.  Exit status: 0 when the
server answered, 1 when it did not, 2 for a URL that cannot be probed.
"""

from __future__ import annotations

import sys
from typing import TextIO

import msgspec

from lmgate._errors import InvalidParameter
from lmgate.detect import ServerInfo, probe

__all__ = ["probe_command", "render_probe"]


async def probe_command(
    url: str,
    as_json: bool,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109 -- passed to probe() as its per-round bound
    out: TextIO | None = None,
) -> int:
    """Probe ``url`` and print the result; returns the process exit status."""
    stream = out if out is not None else sys.stdout
    try:
        info = await probe(url, timeout=timeout, refresh=True)
    except InvalidParameter as exc:
        if as_json:
            stream.write(msgspec.json.encode({"url": url, "error": str(exc)}).decode() + "\n")
        else:
            stream.write(f"lmgate probe: {exc}\n")
        return 2
    if as_json:
        stream.write(msgspec.json.format(msgspec.json.encode(info)).decode() + "\n")
    else:
        render_probe(info, stream)
    return 0 if info.reachable else 1


def _local(info: ServerInfo) -> str:
    if info.local is None:
        return "unknown"
    return "yes (self-hosted)" if info.local else "no (cloud API)"


def render_probe(info: ServerInfo, out: TextIO) -> None:
    """Human-readable report; uses rich tables when rich is installed."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is optional
        _plain(info, out)
        return
    console = Console(file=out, highlight=False, soft_wrap=True)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("url", info.url)
    head.add_row("server", info.kind + (f" {info.version}" if info.version else ""))
    head.add_row("local", _local(info))
    head.add_row("locality", info.locality.value)
    head.add_row("decision", info.reason)
    if info.slots is not None:
        head.add_row("slots", str(info.slots))
    if info.health_route:
        head.add_row("health", info.health_route + (" (loading)" if info.loading else ""))
    if info.error:
        head.add_row("error", info.error)
    console.print(head)
    if info.models:
        models = Table(title="models", title_justify="left")
        for col in ("model", "window", "source", "trained max"):
            models.add_column(col)
        for m in info.models:
            trained = info.trained_windows.get(m)
            models.add_row(
                m,
                str(info.context_windows.get(m, "")),
                info.window_sources.get(m, ""),
                "" if trained is None else str(trained),
            )
        console.print(models)
    if info.evidence:
        ev = Table(title="evidence", title_justify="left")
        for col in ("source", "signal", "points to", "weight"):
            ev.add_column(col)
        for e in info.evidence:
            ev.add_row(e.source, e.signal, e.points_to, str(e.weight))
        console.print(ev)


def _plain(info: ServerInfo, out: TextIO) -> None:  # pragma: no cover - without rich
    out.write(f"url       {info.url}\nserver    {info.kind} {info.version or ''}\n")
    out.write(f"local     {_local(info)}\nlocality  {info.locality.value}\n")
    out.write(f"decision  {info.reason}\n")
    for m in info.models:
        out.write(f"model     {m}  window={info.context_windows.get(m)}\n")
    for e in info.evidence:
        out.write(f"evidence  {e.source}: {e.signal} -> {e.points_to} ({e.weight})\n")
