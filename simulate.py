"""ppp_min's simulated user, from the command line.

  python simulate.py                      serve the rules user on http://127.0.0.1:8765 (same as `serve`)
  python simulate.py serve --backend openai --base-url http://host:port/v1 --model NAME
  python simulate.py vaguenize IN.jsonl OUT.jsonl --base-url http://host:port/v1 --model NAME

`serve` prints one line saying where it listens, then answers the JSON protocol of DESIGN §4
(GET /healthz, GET /v1/preferences, POST /v1/reply, POST /v1/reply:batch) until SIGINT/SIGTERM.
Binding anything but loopback requires --token (every request but /healthz then needs
`Authorization: Bearer TOKEN`). The openai backend reads its key from $OPENAI_API_KEY.

`vaguenize` rewrites each line's precise prompt into a vague one with an LLM (paper §4.1: keep the
intent, keep only partial information and generalise specifics) and writes the line back with
`vague_prompt` set. Input: the tasks JSONL of `ppp_min.userville.tasks.export_jsonl`, or any JSONL
whose objects have a string `precise_prompt` (e.g. {"id": "t1", "precise_prompt": "..."}). Other
fields are kept unchanged: for a tasks file, `kept` and the user's tier-1 facts (written for the generated
vague prompt) are not recomputed, and the new vague prompt is not checked to match 2-4 items: review it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

VAGUENIZE_SYSTEM = (
    "You rewrite a user's precise request to an AI agent into a vague one, as a hurried user would "
    "first type it. Two principles: (1) keep the same intent: the agent must still know what kind of "
    "task it is and what the goal is; (2) keep only partial information and generalise specific "
    "details: drop most concrete identifiers, names, numbers, file paths, years and places, or replace "
    "them with general words. Answer with the vague request only: one or two sentences, no preamble, no "
    "quotes, no markdown."
)


def _serve_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("rules", "openai"), default="rules",
                   help="rules: deterministic offline user (default); openai: an LLM behind an "
                        "OpenAI-compatible /chat/completions (needs --base-url and --model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; anything else requires --token)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token", default=None,
                   help="require `Authorization: Bearer TOKEN` on every request but /healthz (default: none)")
    p.add_argument("--base-url", default=None, help="openai backend: e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="openai backend: the model name the upstream expects")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simulate.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="{serve,vaguenize}")
    _serve_parser(sub.add_parser("serve", help="serve the simulator over HTTP (default)"))
    v = sub.add_parser("vaguenize", help="write vague prompts for a JSONL of precise tasks with an LLM")
    v.add_argument("inp", metavar="IN.jsonl", help="one JSON object per line with a `precise_prompt`")
    v.add_argument("out", metavar="OUT.jsonl", help="written with `vague_prompt` set on every line")
    v.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    v.add_argument("--model", required=True, help="the model name the upstream expects")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM call (default 60)")
    v.add_argument("--retries", type=int, default=2,
                   help="retries per line on connection errors, 5xx and 429, with backoff (default 2)")
    return ap


def serve(args) -> int:
    from ppp_min.userville.server import ConfigError, make_server, make_user
    if args.backend == "openai" and not (args.base_url and args.model):
        print("simulate.py: the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1) and --model",
              file=sys.stderr)
        return 2
    try:
        user = make_user(args.backend, args.base_url, args.model)
        server = make_server(user, args.host, args.port, args.token)
    except (ConfigError, ValueError) as e:
        print(f"simulate.py: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use, bad address
        print(f"simulate.py: cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
              "pick another --port (0 = any free port)", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"ppp_min simulator ({user.name}) listening on {server.url}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


def vaguenize(args) -> int:
    from ppp_min.userville.llm_user import ChatAPI, UpstreamError
    try:
        chat = ChatAPI(args.base_url, args.model, timeout=args.timeout, retries=args.retries)
        src = open(args.inp, encoding="utf-8")
    except (ValueError, OSError) as e:
        print(f"simulate.py vaguenize: {e}", file=sys.stderr)
        return 2
    n = 0
    with src, open(args.out, "w", encoding="utf-8") as out:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            where = f"{args.inp}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                print(f"simulate.py vaguenize: {where}: not valid JSON ({e})", file=sys.stderr)
                return 1
            precise = obj.get("precise_prompt") if isinstance(obj, dict) else None
            if not isinstance(precise, str) or not precise.strip():
                print(f"simulate.py vaguenize: {where}: expected an object with a non-empty string "
                      "`precise_prompt`", file=sys.stderr)
                return 1
            try:
                vague = chat.complete([{"role": "system", "content": VAGUENIZE_SYSTEM},
                                       {"role": "user", "content": f"Precise request:\n{precise}"}])
            except UpstreamError as e:
                print(f"simulate.py vaguenize: {where}: the LLM failed: {e}", file=sys.stderr)
                return 1
            vague = " ".join(vague.split())
            if not vague:
                print(f"simulate.py vaguenize: {where}: the LLM returned an empty rewrite", file=sys.stderr)
                return 1
            obj["vague_prompt"] = vague
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    print(f"vaguenized {n} task(s) -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "vaguenize", "-h", "--help"):
        argv.insert(0, "serve")  # `python simulate.py --port 0` means `serve --port 0`
    args = build_parser().parse_args(argv)
    return vaguenize(args) if args.cmd == "vaguenize" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
