"""Reading token usage out of a response body as it streams past.

OpenAI-style servers put ``usage`` in a JSON body or the last SSE event;
Ollama puts ``prompt_eval_count`` and ``eval_count`` in its final NDJSON
object.  The sniffer is fed the chunks the caller reads, keeps at most one
line (or, for plain JSON, one body) of at most 1 MiB, and decodes only the
lines that can carry usage, so it costs almost nothing on long streams.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["UsageSniffer", "usage_of"]

_MAX = 1 << 20


def usage_of(obj: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, output_tokens) from a decoded response object."""
    if not isinstance(obj, dict):
        return None, None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    if "eval_count" in obj or "prompt_eval_count" in obj:
        return _int(obj.get("prompt_eval_count")), _int(obj.get("eval_count"))
    return None, None


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**40 else None


class UsageSniffer:
    """Feed it body chunks; read ``prompt_tokens`` / ``output_tokens`` after."""

    __slots__ = ("_buf", "_mode", "_overflow", "output_tokens", "prompt_tokens")

    def __init__(self, content_type: str) -> None:
        ct = content_type.lower()
        self._mode = "sse" if "event-stream" in ct else "lines" if "ndjson" in ct else "json"
        self._buf = bytearray()
        self._overflow = False
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            if self._mode == "json":
                return
            nl = chunk.find(b"\n")
            if nl < 0:
                return
            self._overflow = False
            chunk = chunk[nl + 1 :]
        self._buf += chunk
        if self._mode != "json":
            self._lines()
        if len(self._buf) > _MAX:
            self._buf.clear()
            self._overflow = True

    def _lines(self) -> None:
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return
            line = bytes(self._buf[:nl]).strip()
            del self._buf[: nl + 1]
            if self._mode == "sse":
                if not line.startswith(b"data:"):
                    continue
                line = line[5:].strip()
            if b"usage" in line or b"eval_count" in line:
                self._take(line)

    def _take(self, data: bytes) -> None:
        try:
            obj = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return
        prompt, output = usage_of(obj)
        if prompt is not None:
            self.prompt_tokens = prompt
        if output is not None:
            self.output_tokens = output

    def close(self) -> None:
        """Flush what is buffered (a whole JSON body, or a last unterminated line)."""
        if self._overflow:
            return
        data = bytes(self._buf).strip()
        self._buf.clear()
        if self._mode == "sse" and data.startswith(b"data:"):
            data = data[5:].strip()
        if data:
            self._take(data)
