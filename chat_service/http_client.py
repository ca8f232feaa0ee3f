"""A small async client of the chat HTTP API (httpx on trio), for chat-bench,
tests and fault workloads.

Its one piece of policy is how a send is retried: with the *same*
`message_id`, on another instance if one is given, until a deadline. The
service makes that safe (a message id is delivered once however often it is
sent), so a send ends either acknowledged (2xx) or unknown, never as a
duplicate.
"""

from __future__ import annotations

import dataclasses
import itertools

import httpx
import trio

SEND_RETRY_DEADLINE_SECONDS = 30.0
RETRY_PAUSE_SECONDS = 0.1
REQUEST_TIMEOUT_SECONDS = 15.0


class ChatError(Exception):
    def __init__(self, status: int, body: dict | str):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = error.get("code", "")
        self.message = error.get("message", str(body))
        super().__init__(f"{status} {self.code}: {self.message}")


@dataclasses.dataclass
class SendOutcome:
    message_id: str
    acknowledged: bool
    answer: dict | None
    attempts: int
    last_error: str | None = None


class ChatClient:
    """Talks to one or more chat_service instances; `instance` picks one per call."""

    def __init__(self, urls: list[str], *, connections_max: int = 200,
                 timeout_seconds: float = REQUEST_TIMEOUT_SECONDS):
        assert urls
        self.urls = [url.rstrip("/") for url in urls]
        self.http = httpx.AsyncClient(
            timeout=timeout_seconds,
            limits=httpx.Limits(max_connections=connections_max,
                                max_keepalive_connections=connections_max),
        )
        self._round_robin = itertools.cycle(range(len(self.urls)))

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.aclose()

    def url(self, instance: int | None) -> str:
        index = next(self._round_robin) if instance is None else instance % len(self.urls)
        return self.urls[index]

    async def request(self, method: str, path: str, *, instance: int | None = None,
                      json: dict | None = None, timeout: float | None = None) -> dict:
        options = {} if timeout is None else {"timeout": timeout}
        answer = await self.http.request(method, self.url(instance) + path, json=json, **options)
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        if answer.status_code >= 400:
            raise ChatError(answer.status_code, body)
        return body

    # -- the API -------------------------------------------------------------------------

    async def create_account(self, user: str, name: str = "", *, instance=None) -> dict:
        return await self.request("POST", "/accounts", instance=instance,
                                  json={"user": user, "name": name})

    async def add_contact(self, user: str, contact: str, *, instance=None) -> dict:
        return await self.request("PUT", f"/accounts/{user}/contacts/{contact}",
                                  instance=instance)

    async def create_group(self, group: str, owner: str, members: list[str], *,
                           name: str = "", instance=None) -> dict:
        return await self.request("POST", "/groups", instance=instance, json={
            "group": group, "name": name, "owner": owner, "members": members})

    async def presence(self, user: str, state: str = "online", *, instance=None) -> dict:
        return await self.request("POST", "/presence", instance=instance,
                                  json={"user": user, "state": state})

    async def sync(self, user: str, snapshot: dict | None = None, *, wait_seconds: float = 0.0,
                   instance=None) -> dict:
        return await self.request(
            "POST", "/sync", instance=instance,
            json={"user": user, "snapshot": snapshot or {}, "wait_seconds": wait_seconds},
            timeout=REQUEST_TIMEOUT_SECONDS + wait_seconds,
        )

    async def send_direct(self, sender: str, recipient: str, text: str, message_id: str, *,
                          instance=None, deadline_seconds=SEND_RETRY_DEADLINE_SECONDS):
        body = {"from": sender, "to": recipient, "text": text, "message_id": message_id}
        return await self._send("/messages", body, instance, deadline_seconds)

    async def send_group(self, sender: str, group: str, text: str, message_id: str, *,
                         instance=None, deadline_seconds=SEND_RETRY_DEADLINE_SECONDS):
        body = {"from": sender, "text": text, "message_id": message_id}
        return await self._send(f"/groups/{group}/messages", body, instance, deadline_seconds)

    async def _send(self, path: str, body: dict, instance, deadline_seconds: float) -> SendOutcome:
        """Send until acknowledged, retrying unavailability and lost connections with the
        same message id, moving to the next instance each time."""
        deadline = trio.current_time() + deadline_seconds
        start = next(self._round_robin) if instance is None else instance
        last_error = None
        for attempt in itertools.count():
            try:
                answer = await self.request("POST", path, json=body, instance=start + attempt)
                return SendOutcome(body["message_id"], True, answer, attempt + 1)
            except ChatError as error:
                if error.status < 500:
                    raise  # a definite refusal: nothing was sent
                last_error = str(error)
            except httpx.HTTPError as error:  # refused, reset, timed out: outcome unknown
                last_error = f"{type(error).__name__}: {error}"
            if trio.current_time() + RETRY_PAUSE_SECONDS >= deadline:
                return SendOutcome(body["message_id"], False, None, attempt + 1, last_error)
            await trio.sleep(RETRY_PAUSE_SECONDS)
        raise AssertionError("unreachable")
