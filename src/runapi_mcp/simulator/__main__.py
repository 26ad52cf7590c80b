"""``python -m runapi_mcp.simulator``: serve the simulator in the foreground."""

from __future__ import annotations

import argparse

from runapi_mcp.simulator import SimulatorConfig, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runapi_mcp.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any bearer key)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every task duration")
    parser.add_argument("--balance-cents", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        api_key=args.api_key,
        time_scale=args.time_scale,
        initial_balance_cents=args.balance_cents,
        seed=args.seed,
    )
    serve(args.host, args.port, config)


if __name__ == "__main__":
    main()
