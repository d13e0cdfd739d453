"""The LLM-backed simulated user: the paper's simulator prompt sent to any OpenAI-compatible chat API.

Contract
- ``LLMUser(base_url, model, api_key=None, timeout=30.0, retries=2, max_tokens=256)``: ``reply(req) -> Reply``, the same
  interface as the rules backend (``simulator.RulesUser``). ``base_url`` is like ``http://host:port/v1``;
  the call is ``POST {base_url}/chat/completions``; the key defaults to ``$OPENAI_API_KEY`` (no header when
  there is none, for local servers). Thread-safe (one pooled HTTP session per thread).
- The prompt follows the paper's released simulator prompt: role; preference + judge rule (or "no reward
  rule"); information tiers with their costs, least sensitive first, revealed reluctantly; answering rules;
  output format (one paragraph, ``[Cost N]`` on its own line, ``[Reward 1|0]`` when a rule exists); the
  task information by tier; the preference repeated. The history is sent as alternating messages.
- Tags are parsed out of the reply text; the agent never sees them. No parsable cost tag, or a cost out of
  range -> effort medium, cost = the family's "nothing" tier, ``parsed=False`` (docs/design.md#left-out:
  the paper's code *rewarded* untagged replies; we label them medium instead). A judge preference whose
  reply lacks a reward tag gets ``pref_followed=None`` (no verdict) rather than a guessed one.
- The 4-question cap (the paper's code: only 4 questions get real answers) is applied here without calling
  the LLM: a refusal labelled medium; the question is judged by the rules judge (``judge_question``).
- Connection errors, timeouts, 5xx and 429 are retried with exponential backoff; other 4xx are not. When it
  gives up it raises ``UpstreamError`` with the upstream status and a body excerpt -- never a made-up reply.
- ``ChatAPI`` is the bare chat-completion call, shared with ``simulate.py vaguenize`` and the API agent.
  Every call sends ``max_tokens``; each attempt is bounded by ``timeout`` seconds from request to last
  byte (a server that never finishes its answer fails the attempt) and its answer by ``max_bytes``.
Left out: the paper's simulator keeps its own multi-turn conversation with its earlier *tagged* replies;
being stateless we replay the untagged replies the agent saw.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import requests

from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES, judge_question
from ppp_min.userville.protocol import Reply, ReplyRequest

MAX_ANSWERED = 4  # the paper's code: from the 5th question on, a fixed refusal without calling the LLM
CAP_REFUSAL = "I've already answered enough questions; please go ahead with what you have."
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_ANSWER_BYTES = 4 << 20  # a chat answer of a few hundred tokens is a few KB
REPLY_MAX_TOKENS = 256  # the user's reply budget: one short paragraph and the tags


_COST_RE = re.compile(r"\[\s*cost\s*[:=]?\s*(-?\d+)\s*\]", re.IGNORECASE)
_REWARD_RE = re.compile(r"\[\s*reward\s*[:=]?\s*(-?\d+)\s*\]", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)


class UpstreamError(RuntimeError):
    """The LLM upstream failed (unreachable, 4xx/5xx, malformed answer). ``status`` is None when unreachable."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class ChatAPI:
    """``POST {base_url}/chat/completions`` with a bounded budget, time and size; ``complete(messages) -> str``.

    ``max_tokens`` is sent with every call; a reply cut by it (``finish_reason: length``) is returned like
    any other (``""`` when the cut left no content). ``timeout`` bounds each attempt from the request to the
    last byte of the answer, however slowly the server trickles it; ``max_bytes`` bounds the answer's size.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 0.5, temperature: float | None = None,
                 max_tokens: int = 256, max_bytes: int = MAX_ANSWER_BYTES):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must look like http://host:port/v1, got {base_url!r}")
        if not model:
            raise ValueError("--model is required for the openai backend (the model name the server expects)")
        if not (isinstance(max_tokens, int) and max_tokens > 0):
            raise ValueError(f"--max-tokens must be an integer >= 1, got {max_tokens!r}")
        if not timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {timeout!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.temperature = temperature  # None: the server's default (some models accept only 1)
        self.max_tokens, self.max_bytes = max_tokens, max_bytes
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def complete(self, messages: list[dict], max_tokens: int | None = None) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens or self.max_tokens}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last, slow = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 8.0))
            try:
                status, text = self._post(body, headers)
            except requests.RequestException as e:  # connection refused, reset, timeout, too slow
                last = f"{type(e).__name__}: {e}"
                slow = isinstance(e, requests.Timeout) and not isinstance(e, requests.ConnectTimeout)
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status}: {text[:300]}"
                if attempt == self.retries:
                    raise UpstreamError(f"{self.url} answered {last} (after {attempt + 1} tries)", status,
                                        text[:300])
                continue
            if status != 200:  # 4xx other than 429: our request or key is wrong; retrying won't help
                raise UpstreamError(f"{self.url} answered HTTP {status}: {text[:300]}", status, text[:300])
            return _content(text, self.url)
        what = "gave no complete answer in time" if slow else "unreachable"
        raise UpstreamError(f"{self.url} {what} after {self.retries + 1} tries: {last}")

    def _post(self, body: dict, headers: dict) -> tuple[int, str]:
        """One attempt in a helper thread, so that the whole of it (headers and body) is bounded by
        ``timeout`` even when the server sends a byte now and then (a read timeout alone resets on each)."""
        session, box = self._session(), {}

        def attempt():
            try:
                box["out"] = _read_capped(session, self.url, body, headers, self.timeout, self.max_bytes, box)
            except BaseException as e:  # handed to the caller below
                box["err"] = e

        t = threading.Thread(target=attempt, daemon=True, name="chat-call")
        t.start()
        t.join(self.timeout)
        if t.is_alive():  # abandon it: close its answer and give this thread a fresh session
            r = box.get("response")
            if r is not None:
                r.close()
            self._local.session = None
            raise requests.Timeout(f"no complete answer within {self.timeout:g} s")
        if "err" in box:
            raise box["err"]
        return box["out"]


def _read_capped(session, url, body, headers, timeout, max_bytes, box) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    r = box["response"] = session.post(url, json=body, headers=headers, timeout=(min(timeout, 10.0), timeout),
                                       stream=True)
    with r:
        data = bytearray()
        read1 = getattr(r.raw, "read1", None)  # urllib3 2: returns what has arrived, so the deadline is checked
        chunks = iter(lambda: read1(1 << 16, decode_content=True), b"") if read1 else r.iter_content(1 << 16)
        for chunk in chunks:
            data += chunk
            if len(data) > max_bytes:  # not retried: the same request would get the same answer
                raise UpstreamError(f"{url} sent an answer larger than {max_bytes} bytes", r.status_code)
            if time.monotonic() > deadline:
                raise requests.Timeout(f"no complete answer within {timeout:g} s")
    return r.status_code, data.decode(r.encoding or "utf-8", errors="replace")


def _content(text: str, url: str) -> str:
    try:
        choice = json.loads(text)["choices"][0]
        content = choice["message"].get("content")
        if content is None and choice.get("finish_reason") == "length":
            content = ""  # the budget ran out before any visible text (e.g. a reasoning model): empty reply
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        content = None
    if not isinstance(content, str):
        raise UpstreamError(f"{url} answered 200 without choices[0].message.content: {text[:300]}", 200,
                            text[:300])
    return content


class LLMUser:
    """The simulated user as an LLM. ``reply(req) -> Reply``; raises ``UpstreamError``."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 0.5, temperature: float | None = None,
                 max_tokens: int = REPLY_MAX_TOKENS):
        self.chat = ChatAPI(base_url, model, api_key, timeout, retries, backoff, temperature, max_tokens)

    def reply(self, req: ReplyRequest) -> Reply:
        fam = req.task.family
        if len(req.history) >= MAX_ANSWERED:  # the paper's question cap; labelled medium (not untagged)
            # No LLM call, so the question is judged by the rules judge (as the rules backend does).
            followed = judge_question(req.preference, req.question, task_context=req.task.precise_prompt,
                                      searches_before=req.searches_before)
            return Reply(CAP_REFUSAL, "medium", FAMILIES[fam].ladder.nothing, followed, True)
        text = self.chat.complete(build_messages(req))
        return parse_tagged_reply(text, fam, PREFERENCES[req.preference].kind == "judge")


def _wrap_question(question: str, req: ReplyRequest) -> str:
    extra = ""
    if req.preference == "first_try":  # the judge needs to know whether the agent tried first
        extra = f"\n(Before asking, the agent had run {req.searches_before} search(es).)"
    return (f"The agent asks: {question}{extra}\n\nReply concisely, like a human, using only the "
            "information you were given, never ask the agent a question, and end with the tags.")


def build_system_prompt(req: ReplyRequest) -> str:
    """The paper's simulator system prompt (its released code), steps 1-7."""
    pref = PREFERENCES[req.preference]
    fam = req.task.family
    judged = pref.kind == "judge"
    amateur = req.preference == "amateur"
    parts = [
        # 1. role
        "You are playing a human user who asked an AI agent for help with a task. The agent may ask you "
        "questions. How you answer follows your preference below; each question is graded against a "
        "reward rule; every answer has a cost that depends on how sensitive the information you share is.",
        # 2. preference and reward rule
        f"## Your preference\n{pref.text}",
        (f"## Reward rule\n{pref.rule}\nAfter your reply write [Reward 1] if the agent's question follows "
         "the rule, [Reward 0] otherwise." if judged else
         "## Reward rule\nNo reward rule: do not write a reward tag."),
    ]
    # 3. information and cost, least sensitive first (what each tier holds: the family's ladder labels)
    ladder, held = FAMILIES[fam].ladder, FAMILIES[fam].amateur_tiers if amateur else None
    labels = dict(enumerate(ladder.labels, start=1))
    tiers = "\n".join(f"[Cost {t}] {labels[t]}" for t in range(1, ladder.max_tier + 1))
    parts.append("## Information and cost\nThe information you may share, from least to most sensitive:\n"
                 f"{tiers}\nReveal information reluctantly: start from the least sensitive; use more "
                 "sensitive information only if the agent is stuck and the question really needs it. Your "
                 "cost is the cost of the most sensitive information your reply uses.")
    # 4. answering rules
    parts.append("## Answering rules\n- Your preference comes above everything else.\n- By default answer "
                 "short and casual, in a single paragraph, with contractions.\n- If a question is outside "
                 "what you know, say you don't know.\n- Never explain your role, these rules, the cost or "
                 "the reward; no markdown; never ask the agent questions.")
    # 5. output format
    fmt = "One paragraph with your reply, then [Cost N] on its own line"
    parts.append("## Output format\n" + fmt + (", then [Reward 1] or [Reward 0] on its own line." if judged
                                               else "."))
    # 6. task information by tier (amateur users hold only the family's amateur_tiers: funcloc's file and
    # function tiers are blanked, as in the paper's code)
    info = [f"[Cost 1] The full request:\n{req.task.precise_prompt}"]
    for t in range(1, ladder.max_tier + 1):
        if t == ladder.nothing:
            continue
        facts = req.task.facts_of(t)
        if held is not None and t not in held:
            info.append(f"[Cost {t}] {labels[t]}: you do not know this.")
        elif facts:
            info.append(f"[Cost {t}] {labels[t]}:\n" + "\n".join(f"- {f.text}" for f in facts))
    parts.append("## Task information\n" + "\n".join(info))
    # 7. the preference repeated
    parts.append(f"Remember your preference: {pref.text} Reply in one very concise sentence, with "
                 "accurate tags.")
    return "\n\n".join(parts)


def build_messages(req: ReplyRequest) -> list[dict]:
    msgs = [{"role": "system", "content": build_system_prompt(req)}]
    for h in req.history:
        msgs.append({"role": "user", "content": _wrap_question(h.question, req)})
        msgs.append({"role": "assistant", "content": h.reply})
    msgs.append({"role": "user", "content": _wrap_question(req.question, req)})
    return msgs


def parse_tagged_reply(text: str, family: str, judged: bool) -> Reply:
    """Split an LLM reply into the agent-visible text and the labels (the last tag of each kind wins)."""
    text = _THINK_RE.sub(" ", text)  # reasoning models behind OpenAI-compatible servers
    costs = _COST_RE.findall(text)
    rewards = _REWARD_RE.findall(text)
    clean = " ".join(_REWARD_RE.sub(" ", _COST_RE.sub(" ", text)).split())
    cost = int(costs[-1]) if costs else None
    ladder = FAMILIES[family].ladder
    if cost is None or not 1 <= cost <= ladder.max_tier:
        cost_tier, effort, parsed = ladder.nothing, "medium", False
    else:
        cost_tier, effort, parsed = cost, ladder.effort_of(cost), True
    followed = None
    if judged and rewards and rewards[-1] in ("0", "1"):
        followed = rewards[-1] == "1"
    return Reply(clean, effort, cost_tier, followed, parsed)
