"""``mrsa ask``: one RSA query against a running server, with live progress in the terminal.

Reads the server's SSE stream: a progress bar per round fills as nodes finish, answers are
listed as they land, then the final answer streams in, then usage.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from httpx_sse import EventSource, connect_sse
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text


def _chunks(source: EventSource) -> Iterator[dict]:
    """The stream's chunks, up to the ``[DONE]`` that ends it."""
    for sse in source.iter_sse():
        if sse.data == "[DONE]":
            return
        yield sse.json()


def _error_line(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    return f"[red]{response.status_code}[/red] {message}"


def ask(url: str, question: str, rsa: dict, *, model: str | None = None, api_key: str | None = None) -> int:
    console = Console()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(10.0, read=None)) as client:
        if model is None:  # the server's first model, as the openai SDK examples do
            listed = client.get("/v1/models")
            if listed.status_code != 200:
                console.print(_error_line(listed))
                return 1
            model = listed.json()["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "rsa": rsa,
        }
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        )
        rounds: dict[int, int] = {}
        answers = Text()
        answer = Text()
        population = rsa.get("population")
        with connect_sse(client, "POST", "/v1/chat/completions", json=body) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                console.print(_error_line(response))
                return 1
            with Live(Group(progress, answers, answer), console=console, refresh_per_second=8):
                for chunk in _chunks(source):
                    if "error" in chunk:
                        console.print(f"[red]error:[/red] {chunk['error']['message']}")
                        return 1
                    event = chunk.get("rsa")
                    if event and event.get("event") == "run_started":
                        population = event["population"]  # the server's default if not given
                    if event and event.get("event") == "node_finished":
                        r = event["round"]
                        if r not in rounds:
                            rounds[r] = progress.add_task(f"round {r}", total=population)
                        progress.advance(rounds[r])
                        answers.append(f"r{r}.{event['index']}: {event['answer']}  ")
                    elif event and event.get("event") == "final_started":
                        answer.append(f"\nfinal ({event['mode']}):\n", style="bold")
                    for choice in chunk.get("choices", []):
                        answer.append(choice["delta"].get("content") or "")
                    if event and event.get("event") == "run_completed":
                        summary = {k: event[k] for k in ("stop_reason", "rounds_completed", "calls", "answer")}
                        console.print(f"\n[bold]run:[/bold] {summary}")
                    if chunk.get("usage"):
                        console.print(f"[bold]usage:[/bold] {chunk['usage']}")
    return 0
