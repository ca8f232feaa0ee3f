"""The HTTP API: JSON over HTTP/1.1 (FastAPI on hypercorn's trio worker).

Theory of operation. Each route validates its input (pydantic models;
identifiers by keys.IDENTIFIER_PATTERN), calls one ChatService operation,
and maps the outcome to a status:

    200/201/202  done (202: a send, durable, delivery under way)
    400          bad input, with a message saying what is wrong
    403          not a member of the group sent to
    404          no such account or group
    409          the id is taken by something else (account, group, message id)
    413          over a size limit
    503          the store could not do it in time; `outcome_unknown` says
                 whether a write may have happened (retry with the same ids)

Every error body is `{"error": {"code": ..., "message": ...}}`. Nothing is
answered 2xx before the store has acknowledged it, so a message reported
sent is in the store. FastAPI serves its OpenAPI description at
`/openapi.json` and a browsable one at `/docs`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from chat_service.keys import IDENTIFIER_PATTERN, BadIdentifier
from chat_service.service import (
    BadInputError,
    ChatService,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    Snapshot,
)
from chat_service.store import StoreUnavailable
from kvsvr.protocol.errors import KvError, TooLarge

Identifier = Field(pattern=IDENTIFIER_PATTERN, description="1-64 of A-Z a-z 0-9 _ -")


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Identifier
    name: str = Field("", max_length=200)
    profile: dict[str, Any] = Field(default_factory=dict)


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    profile: dict[str, Any] | None = None


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str = Identifier
    name: str = Field("", max_length=200)
    owner: str = Identifier
    members: list[str] = Field(default_factory=list, description="the owner is always a member")


class DirectMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sender: str = Field(alias="from", pattern=IDENTIFIER_PATTERN)
    to: str = Identifier
    text: str
    message_id: str | None = Field(
        None, pattern=IDENTIFIER_PATTERN,
        description="idempotency key: a retry with the same id is delivered once",
    )


class GroupMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sender: str = Field(alias="from", pattern=IDENTIFIER_PATTERN)
    text: str
    message_id: str | None = Field(None, pattern=IDENTIFIER_PATTERN)


class SnapshotModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: int = Field(0, ge=0)
    contacts: int = Field(0, ge=0)
    groups: int = Field(0, ge=0)
    inbox: int = Field(0, ge=0)
    presence: float = Field(0.0, ge=0)


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Identifier
    snapshot: SnapshotModel = Field(default_factory=SnapshotModel)
    wait_seconds: float = Field(0.0, ge=0, le=60, description="long-poll: wait for a change")


class PresenceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Identifier
    state: Literal["online", "offline"] = "online"


def error_response(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def build_app(service: ChatService) -> FastAPI:
    app = FastAPI(
        title="KVSvr chat service",
        version="0.1.0",
        description="Accounts, contacts, groups, messages with exactly-once fan-out, "
                    "sync by versions, long-poll push and presence, all stored in KVSvr.",
    )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return error_response(400, "bad_request", problems or "malformed request")

    handlers = [
        (BadIdentifier, 400, "bad_request"),
        (BadInputError, 400, "bad_request"),
        (ForbiddenError, 403, "forbidden"),
        (NotFoundError, 404, "not_found"),
        (ConflictError, 409, "conflict"),
    ]
    for error_class, status, code in handlers:
        app.add_exception_handler(
            error_class,
            lambda request, error, status=status, code=code: error_response(
                status, code, str(error)
            ),
        )

    @app.exception_handler(StoreUnavailable)
    async def on_store_unavailable(request: Request, error: StoreUnavailable):
        message = error.message
        if error.outcome_unknown:
            message += "; the operation may or may not have happened: retry it with the same ids"
        return error_response(503, "unavailable", message, outcome_unknown=error.outcome_unknown)

    @app.exception_handler(KvError)
    async def on_store_error(request: Request, error: KvError):
        if isinstance(error, TooLarge):
            return error_response(413, "too_large", error.message)
        if error.code in ("unavailable", "overloaded", "timeout"):
            return error_response(503, "unavailable", error.message,
                                  outcome_unknown=error.indeterminate)
        return error_response(500, "internal", f"store: {error.code}: {error.message}",
                              outcome_unknown=error.indeterminate)

    @app.get("/health")
    async def health() -> dict:
        """This instance's id and counters."""
        return {"instance": service.instance_id, "statistics": service.statistics()}

    @app.post("/accounts", status_code=201)
    async def create_account(body: AccountCreate) -> dict:
        """Create an account (409 if the id is taken by another)."""
        return await service.create_account(body.user, body.name, body.profile)

    @app.get("/accounts/{user}")
    async def get_account(user: str) -> dict:
        return await service.get_account(user)

    @app.patch("/accounts/{user}")
    async def update_account(user: str, body: AccountUpdate) -> dict:
        return await service.update_account(user, body.name, body.profile)

    @app.get("/accounts/{user}/contacts")
    async def contacts(user: str) -> dict:
        await service.get_account(user)
        return {"user": user, "contacts": await service.contacts(user)}

    @app.put("/accounts/{user}/contacts/{contact}")
    async def add_contact(user: str, contact: str) -> dict:
        return {"contacts_version": await service.add_contact(user, contact)}

    @app.delete("/accounts/{user}/contacts/{contact}")
    async def remove_contact(user: str, contact: str) -> dict:
        return {"contacts_version": await service.remove_contact(user, contact)}

    @app.post("/groups", status_code=201)
    async def create_group(body: GroupCreate) -> dict:
        """Create a group with its members (at most 500, the owner included)."""
        return await service.create_group(body.group, body.name, body.owner, body.members)

    @app.get("/groups/{group}")
    async def get_group(group: str) -> dict:
        return await service.get_group(group)

    @app.put("/groups/{group}/members/{user}")
    async def add_member(group: str, user: str) -> dict:
        """Add a member; it gets the messages sent after it joined."""
        return await service.add_member(group, user)

    @app.delete("/groups/{group}/members/{user}")
    async def remove_member(group: str, user: str) -> dict:
        await service.remove_member(group, user)
        return {"group": group, "user": user, "removed": True}

    @app.post("/messages", status_code=202)
    async def send_direct(body: DirectMessage) -> dict:
        """Send one-to-one. Answered once the message is durable; it reaches both
        inboxes (sender's and recipient's) exactly once, shortly after."""
        message_id = body.message_id or uuid.uuid4().hex
        return await service.send_direct(body.sender, body.to, body.text, message_id)

    @app.post("/groups/{group}/messages", status_code=202)
    async def send_group(group: str, body: GroupMessage) -> dict:
        """Send to a group. Answered once the message and its fan-out job are durable;
        every member's inbox gets it exactly once, in the group's one order."""
        message_id = body.message_id or uuid.uuid4().hex
        return await service.send_group(body.sender, group, body.text, message_id)

    @app.post("/sync")
    async def sync(body: SyncRequest) -> dict:
        """What changed after the snapshot's versions, and the new snapshot. With
        `wait_seconds`, waits for a change first (long-poll)."""
        snapshot = Snapshot(**body.snapshot.model_dump())
        return await service.sync(body.user, snapshot, body.wait_seconds)

    @app.post("/presence")
    async def presence(body: PresenceReport) -> dict:
        """A heartbeat (state online, every `heartbeat_seconds`) or going offline."""
        await service.get_account(body.user)
        return await service.presence.report(body.user, body.state)

    return app
