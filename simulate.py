"""ppp_min's simulated user, from the command line.

  python simulate.py                      serve the rules user on http://127.0.0.1:8765 (same as `serve`)
  python simulate.py serve --backend openai --base-url http://host:port/v1 --model NAME
  python simulate.py vaguenize IN.jsonl OUT.jsonl --base-url http://host:port/v1 --model NAME

`serve` prints one line saying where it listens, then answers the JSON protocol (docs/design.md)
(GET /healthz, GET /v1/preferences, POST /v1/reply, POST /v1/reply:batch) until SIGINT/SIGTERM.
Binding anything but loopback requires --token (every request but /healthz then needs
`Authorization: Bearer TOKEN`). The openai backend reads its key from $OPENAI_API_KEY.

`vaguenize` rewrites each line's precise prompt into a vague one with an LLM (paper §4.1: keep the
intent, keep only partial information and generalise specifics) and writes the line back with
`vague_prompt` set. Input: the tasks JSONL of `ppp_min.userville.tasks.export_jsonl`, or any JSONL
whose objects have a string `precise_prompt` (e.g. {"id": "t1", "precise_prompt": "..."}). Other
fields are kept unchanged: for a tasks file, `kept` and the user's tier-1 facts (written for the generated
vague prompt) are not recomputed, and the new vague prompt is not checked to match 2-4 items: review it.
A rewrite that is empty, much longer than the precise prompt, repetitive, or still states a detail the
vague prompt must drop (a tasks line's attributes outside `kept`, or a line's own `precise_only` list)
is reported on stderr and not written (`--keep-flagged` writes it with `vaguenize_flags`); the last
line counts kept and flagged rewrites. Every LLM call sends `max_tokens` and is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time

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
    p.add_argument("--max-tokens", type=int, default=256,
                   help="openai backend: max_tokens of each user reply (default 256)")
    # set by client.start_local_simulator: exit when the process that started this server dies
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--watch-fd", type=int, default=None, help=argparse.SUPPRESS)


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
    v.add_argument("--max-tokens", type=int, default=None,
                   help="max_tokens per rewrite (default: about twice the precise prompt's tokens, >= 32)")
    v.add_argument("--keep-flagged", action="store_true",
                   help="also write rewrites that fail the checks (empty, much longer than the precise "
                        "prompt, repetitive, still stating a dropped detail), marked `vaguenize_flags`")
    return ap


def serve(args) -> int:
    from ppp_min.userville.server import ConfigError, make_server, make_user
    if args.backend == "openai" and not (args.base_url and args.model):
        print("simulate.py: the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1) and --model",
              file=sys.stderr)
        return 2
    try:
        user = make_user(args.backend, args.base_url, args.model, max_tokens=args.max_tokens)
        server = make_server(user, args.host, args.port, args.token)
    except (ConfigError, ValueError) as e:
        print(f"simulate.py: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use, bad address
        print(f"simulate.py: cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
              "pick another --port (0 = any free port)", file=sys.stderr)
        return 2
    # SIGINT / SIGTERM only append to a list: a handler runs in the main thread, possibly while that thread
    # holds an Event's lock inside wait(), and Event.set() would then block on it forever (seen once: a
    # simulator deadlocked in stop.set() outlived its parent). ``stop`` is set by the parent-watch thread.
    stop, signalled = threading.Event(), []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: signalled.append(True))
    try:
        _die_with_parent(args.parent_pid, args.watch_fd, stop)
    except OSError as e:
        print(f"simulate.py: --watch-fd {args.watch_fd}: {e.strerror or e}", file=sys.stderr)
        return 2
    server.start()
    print(f"ppp_min simulator ({user.name}) listening on {server.url}", flush=True)
    while not (signalled or stop.is_set()):
        time.sleep(0.1)
    server.stop()
    return 0


def _die_with_parent(parent_pid: int | None, watch_fd: int | None, stop: threading.Event) -> None:
    """Stop when the starting process dies, however it dies (SIGKILL included): on Linux the kernel sends
    SIGTERM at its death (PR_SET_PDEATHSIG); on any POSIX system, our end of its pipe reads EOF then."""
    if parent_pid is not None and sys.platform.startswith("linux"):
        import ctypes
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # no prctl here: the pipe below still works
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            stop.set()
    if watch_fd is not None:
        os.fstat(watch_fd)  # a bad fd fails here, with one line, not in the thread

        def watch():
            try:
                while os.read(watch_fd, 4096):
                    pass
            except OSError:
                pass
            stop.set()  # EOF: the parent closed its end or died
            hard = threading.Timer(5.0, os._exit, (0,))  # if a stuck request blocks the clean stop
            hard.daemon = True
            hard.start()

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def precise_only(obj: dict) -> list[str]:
    """The details the vague prompt must not state: an explicit ``precise_only`` list, or for a tasks
    line the gold item's attribute values the generated vague prompt left out (its ``kept`` misses them;
    the user's tier-1 facts hold them, so a rewrite stating one makes the user's answers redundant)."""
    given = obj.get("precise_only")
    if isinstance(given, list):
        return [x for x in given if isinstance(x, str) and x.strip()]
    gold, catalog, kept = obj.get("gold"), obj.get("catalog"), obj.get("kept")
    if not (isinstance(gold, list) and gold and isinstance(catalog, list) and isinstance(kept, list)):
        return []
    for item in catalog:
        if isinstance(item, dict) and item.get("key") == gold[0]:
            attrs = item.get("attrs") or []
            return [a[1] for a in attrs if isinstance(a, list) and len(a) == 2 and a[0] not in kept
                    and isinstance(a[1], str)]
    return []


def check_rewrite(precise: str, vague: str, dropped: list[str]) -> list[str]:
    """Why a vague rewrite is unusable ([] = fine): empty, much longer than the precise prompt,
    repetitive (a sentence or phrase repeated), or still stating a detail it was meant to drop."""
    words, n_precise = vague.lower().split(), len(precise.split())
    if not words:
        return ["empty"]
    flags = []
    if len(words) > max(1.5 * n_precise, n_precise + 8):
        flags.append(f"longer than the precise prompt ({len(words)} vs {n_precise} words)")
    sentences = [" ".join(x.split()) for x in re.split(r"(?<=[.!?])\s+", vague.lower()) if x.strip()]
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if (len(sentences) >= 2 and len(set(sentences)) / len(sentences) <= 0.5) or \
            (len(grams) >= 8 and len(set(grams)) / len(grams) < 0.5):
        flags.append("repetitive")
    leaked = [d for d in dropped if re.search(rf"(?<!\w){re.escape(d.lower())}(?!\w)", vague.lower())]
    if leaked:
        flags.append("still states " + ", ".join(repr(d) for d in leaked))
    return flags


def vaguenize_budget(precise: str) -> int:
    """max_tokens of one rewrite: about twice the precise prompt's tokens (~4 characters each), >= 32."""
    return max(32, min(1024, len(precise) // 2))


def vaguenize(args) -> int:
    from ppp_min.userville.llm_user import ChatAPI, UpstreamError
    try:
        if args.max_tokens is not None and args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        chat = ChatAPI(args.base_url, args.model, timeout=args.timeout, retries=args.retries)
        src = open(args.inp, encoding="utf-8")
    except (ValueError, OSError) as e:
        print(f"simulate.py vaguenize: {e}", file=sys.stderr)
        return 2
    kept = flagged = 0
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
                                       {"role": "user", "content": f"Precise request:\n{precise}"}],
                                      max_tokens=args.max_tokens or vaguenize_budget(precise))
            except UpstreamError as e:
                print(f"simulate.py vaguenize: {where}: the LLM failed: {e}", file=sys.stderr)
                return 1
            vague = " ".join(vague.split())
            flags = check_rewrite(precise, vague, precise_only(obj))
            if flags:
                flagged += 1
                print(f"simulate.py vaguenize: {where}: flagged ({'; '.join(flags)}): {vague[:120]!r}",
                      file=sys.stderr)
                if not args.keep_flagged:
                    continue
                obj["vaguenize_flags"] = flags
            else:
                kept += 1
            obj["vague_prompt"] = vague
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    fate = "written, marked `vaguenize_flags`" if args.keep_flagged else "not written; --keep-flagged writes them"
    print(f"vaguenized {kept + flagged} task(s): {kept} kept, {flagged} flagged ({fate}) -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "vaguenize", "-h", "--help"):
        argv.insert(0, "serve")  # `python simulate.py --port 0` means `serve --port 0`
    args = build_parser().parse_args(argv)
    return vaguenize(args) if args.cmd == "vaguenize" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
