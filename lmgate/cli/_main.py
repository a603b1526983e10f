"""The ``lmgate`` command: ``demo``, ``probe``, ``sim`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from functools import partial

import anyio

from lmgate.sim.http import HTTP_DIALECTS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="drive simulated endpoints and show a live table")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long to run (default 10)")
    demo.add_argument("--clients", type=int, default=6, help="simulated clients (default 6)")
    demo.add_argument("--no-live", action="store_true", help="print only the summary")
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    demo.add_argument(
        "--policy",
        choices=["adaptive", "fixed"],
        default="adaptive",
        help="limit policy: lmgate's Adaptive (default) or Fixed(12)",
    )

    probe = sub.add_parser("probe", help="identify the model server at URL")
    probe.add_argument("url")
    probe.add_argument("--json", action="store_true", help="print JSON")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds per probe round")

    sim = sub.add_parser("sim", help="serve a simulated model server on a local port")
    sim.add_argument("--kind", choices=list(HTTP_DIALECTS), default="llamacpp")
    sim.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    sim.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    sim.add_argument("--model", action="append", dest="models", help="a model it serves")
    sim.add_argument("--slots", type=int, default=4, help="requests it runs at once")
    sim.add_argument("--n-ctx", type=int, default=4096, help="context window in tokens")
    sim.add_argument("--token-time", type=float, default=0.02, help="seconds per token")
    sim.add_argument("--max-tokens", type=int, default=64, help="default completion length")
    sim.add_argument("--api-key", help="require this bearer key")

    bench = sub.add_parser("bench", help="run the overload benchmark in virtual time")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The benchmark parses its own options (argparse's REMAINDER would
        # not take leading ones such as --quick).
        from lmgate.bench._suite import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.seconds <= 0 or args.clients < 1:
            print("lmgate demo: --seconds must be > 0 and --clients >= 1", file=sys.stderr)
            return 2
        from lmgate.cli._demo import run_demo

        live = not args.no_live and sys.stdout.isatty()
        return anyio.run(
            lambda: run_demo(
                seconds=args.seconds, clients=args.clients, live=live, policy=args.policy
            ),
            backend=args.backend,
        )
    if args.command == "probe":
        from lmgate.cli._probe import probe_command

        return anyio.run(partial(probe_command, args.url, args.json, timeout=args.timeout))
    if args.command == "sim":
        return _sim(args)
    if args.command == "bench":
        from lmgate.bench._suite import main as bench_main

        return bench_main(args.args)
    return 2  # pragma: no cover


def _sim(args: argparse.Namespace) -> int:
    from lmgate._errors import InvalidParameter
    from lmgate.cli._sim import run_sim, sim_config

    if not 0 <= args.port <= 65535:
        print("lmgate sim: --port must be 0..65535", file=sys.stderr)
        return 2
    try:
        config = sim_config(
            kind=args.kind,
            models=args.models,
            slots=args.slots,
            n_ctx=args.n_ctx,
            token_time=args.token_time,
            max_tokens=args.max_tokens,
            api_key=args.api_key,
        )
    except InvalidParameter as exc:
        print(f"lmgate sim: {exc}", file=sys.stderr)
        return 2
    try:
        return anyio.run(partial(run_sim, config, host=args.host, port=args.port))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
