"""An agent behind any OpenAI-compatible chat endpoint, as a text policy for held-out evaluation.

Contract
- ``APIAgent(base_url, model, api_key=None, temperature=0.0, timeout=60.0, retries=2, max_tokens=64)``: ``agent(state)
  -> str`` sends the episode so far (``EpisodeState.messages``: the system prompt with the tools, the user's
  ``User preference: …`` + request, then every assistant turn and observation, as ChatML roles) to
  ``POST {base_url}/chat/completions`` and returns the reply text as the next assistant turn. The key
  defaults to ``$OPENAI_API_KEY``. ``temperature=None`` leaves the server's default (some models only
  accept theirs); 0 asks for greedy decoding like the model agents' default. ``max_tokens`` is the turn's
  budget (64, the model agents' ``--max-new-tokens``); a turn cut by it is scored like any other turn.
  ``timeout`` bounds each attempt from request to last byte (``ChatAPI``), so a server that never
  finishes an answer costs at most ``(retries + 1) * timeout`` plus the backoff before ``AgentError``.
- Errors (unreachable, HTTP error, a 200 without ``choices[0].message.content``) raise ``AgentError``
  with one line saying what failed: an error is never turned into a made-up assistant turn, so no
  episode is mis-scored.
- Run it with ``evaluation.run_policy(agent, specs, client, max_turns, workers)``: the live episodes' calls of
  each turn are sent ``workers`` at a time (an API call takes seconds, a scripted turn microseconds).

The transport (timeouts, retries with backoff on connection errors / 429 / 5xx, no retry on other 4xx)
is the LLM user's ``ChatAPI``: one client for both sides of UserVille. Deliberately left out: tool-call
(function-calling) APIs — the agent writes the same ``<search>/<ask>/<answer>`` tags as our models, and a
reply without one costs a turn (``agent_env``), exactly as it would for a trained model.
"""

from __future__ import annotations

from ppp_min.userville.agent_env import EpisodeState
from ppp_min.userville.llm_user import ChatAPI, UpstreamError


class AgentError(RuntimeError):
    """The agent's endpoint failed; the message is one line naming the endpoint and the failure."""


class APIAgent:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, temperature: float | None = 0.0,
                 timeout: float = 60.0, retries: int = 2, max_tokens: int = 64):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"agent base URL must look like http://host:port/v1, got {base_url!r}")
        if not model:
            raise ValueError("an openai agent needs a model name: --agent openai:MODEL")
        self.model = model
        self.chat = ChatAPI(base_url, model, api_key=api_key, timeout=timeout, retries=retries,
                            temperature=temperature, max_tokens=max_tokens)

    def __call__(self, state: EpisodeState) -> str:
        messages = [{"role": role, "content": text} for role, text in state.messages]
        try:
            return self.chat.complete(messages)
        except UpstreamError as e:
            line = " ".join(str(e).split())  # the upstream body may hold newlines: keep one line
            raise AgentError(f"agent openai:{self.model}: {line}") from None
