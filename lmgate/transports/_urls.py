"""Putting a request's path onto an endpoint's base URL.

Callers configure clients with a placeholder base (``http://lmgate/v1``)
and endpoints are configured with whatever base their server documents
(``http://gpu:8080``, ``http://gpu:8080/v1``, ``https://api.groq.com/openai/v1``).
The overlap between the end of the base path and the start of the request
path is joined once, so ``/v1`` never doubles or goes missing; native
routes (``/api/chat``, ``/tokenize``) go under the server's root.
"""

from __future__ import annotations

import httpx

__all__ = ["rebase"]

#: First path segments of OpenAI-style routes that a client may send
#: without their ``/v1`` prefix.
_OPENAI_FIRST = frozenset(
    {"chat", "completions", "embeddings", "models", "responses", "moderations", "audio", "images"}
)


def rebase(base: str, path: str, query: bytes = b"") -> httpx.URL:
    """The URL for request ``path`` (and raw ``query``) on endpoint ``base``."""
    b = httpx.URL(base)
    bsegs = [s for s in b.path.split("/") if s]
    rsegs = [s for s in path.split("/") if s]
    trailing = path.endswith("/") and bool(rsegs)
    if rsegs and rsegs[0] in _OPENAI_FIRST:
        rsegs = ["v1", *rsegs]
    if rsegs and rsegs[0] != "v1" and bsegs and bsegs[-1] == "v1":
        bsegs = bsegs[:-1]  # a native route lives at the server root, not under /v1
    for k in range(min(len(bsegs), len(rsegs)), 0, -1):
        if bsegs[-k:] == rsegs[:k]:
            rsegs = rsegs[k:]
            break
    new_path = "/" + "/".join(bsegs + rsegs) + ("/" if trailing else "")
    return b.copy_with(path=new_path, query=query or None)
