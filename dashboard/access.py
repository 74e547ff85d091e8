"""Who can reach the dashboard and what they may do there: loopback or shared, full or teaching mode.

No Streamlit import: `python -m dashboard.access --address A --port P` prints the start-up message
(`make run` / `make share`), and the app asks the same functions with the address it listens on.

- `make run` listens on 127.0.0.1: only this machine can open it; every page, the folder box and
  training are on (mode "full").
- `make share` (or METRICLENS_ADDRESS=0.0.0.0) listens on every interface, and then defaults to the
  read-only teaching mode ("demo"): no Train page, no folder boxes, only the runs under the run roots
  configured at start; uploads stay on. METRICLENS_MODE=full|demo overrides the default either way.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = REPO / "checkpoints"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODES = ("full", "demo")


def is_shared(address: str | None) -> bool:
    """True when the server listens beyond this machine. Streamlit's unset address ("") means every
    interface, so it counts as shared: a server started without the repo's config is not trusted."""
    return (address or "").strip() not in LOOPBACK


def mode(address: str | None) -> str:
    """'full' or 'demo' (teaching): METRICLENS_MODE when set, else demo exactly when shared."""
    wanted = os.environ.get("METRICLENS_MODE", "").strip().lower()
    if wanted and wanted not in MODES:
        raise ValueError(f"METRICLENS_MODE={wanted!r} is not a mode; use one of {', '.join(MODES)} "
                         f"(demo = read-only teaching mode, the default when the server is shared)")
    return wanted or ("demo" if is_shared(address) else "full")


def configured_roots() -> list[Path]:
    """The run roots fixed at start: checkpoints/ and METRICLENS_RUNS (os.pathsep-separated)."""
    roots = [DEFAULT_RUNS] + [Path(p).expanduser() for p in os.environ.get("METRICLENS_RUNS", "").split(os.pathsep)
                              if p.strip()]
    return list(dict.fromkeys(r.resolve() for r in roots))


def max_jobs() -> int:
    """Training jobs the server runs at once: METRICLENS_MAX_JOBS, else one per two cores (1 on 2 cores)."""
    value = os.environ.get("METRICLENS_MAX_JOBS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"METRICLENS_MAX_JOBS={value!r}: give a whole number ≥ 1")
        return int(value)
    return max(1, (os.cpu_count() or 2) // 2)


def startup_message(address: str, port: int) -> str:
    import socket
    url_host = socket.gethostname() if address in ("", "0.0.0.0", "::") else address
    current = mode(address)
    lines = [f"MetricLens: http://{url_host}:{port}"]
    if not is_shared(address):
        lines.append(f"  Listening on {address} only: nobody else can open it. `make share` serves the network.")
    else:
        lines += [f"  SHARED: listening on {address or 'every interface'}:{port}; anyone who can reach this machine "
                  f"on port {port} can open the dashboard (or use this machine's IP address).",
                  "  There is no login: share it only on a network you trust."]
    roots = ", ".join(str(r) for r in configured_roots())
    if current == "demo":
        lines += [f"  Teaching mode (read-only): visitors see the runs under {roots} and may upload query images "
                  f"(≤ 10 MB, kept in their session only).",
                  "  Not exposed: the Train page, folder boxes, any other server folder."]
    else:
        lines += [f"  Full mode: the runs under {roots}, a folder box that opens any folder this user can read, "
                  f"and the Train page ({max_jobs()} training job(s) at a time)."]
        if is_shared(address):
            lines.append("  WARNING: METRICLENS_MODE=full on a shared server lets every visitor browse this "
                         "user's folders and start training.")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("METRICLENS_ADDRESS", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args()
    try:
        print(startup_message(args.address, args.port), flush=True)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
