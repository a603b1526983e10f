"""HTTP/1.1 on the wire for the simulated servers: just what clients send.

Requests with ``Content-Length`` or chunked bodies; responses with a
length or, for streams, chunked, each chunk sent as soon as the dialect
yields it so a client sees tokens arrive (and sees the stream cut when the
server "crashes").
"""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from lmgate.sim.http._base import SimResponse

__all__ = ["read_chunked", "write_response"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.receive_until(b"\r\n", 1024)).split(b";")[0], 16)
        if size == 0:
            await reader.receive_until(b"\r\n", 65536)
            return bytes(out)
        out += await reader.receive_exactly(size)
        await reader.receive_exactly(2)
        if len(out) > 64 << 20:
            raise anyio.IncompleteRead


async def write_response(stream: anyio.abc.ByteStream, response: SimResponse, keep: bool) -> None:
    status = response.status
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    head += [f"{k}: {v}" for k, v in response.headers]
    head.append("connection: " + ("keep-alive" if keep else "close"))
    if response.stream is None:
        head.append(f"content-length: {len(response.body)}")
        await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        return
    head.append("transfer-encoding: chunked")
    await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    async for chunk in response.stream:
        if chunk:
            await stream.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await stream.send(b"0\r\n\r\n")
