"""Local fakes of the outside clouds' documented wire contracts, as real HTTP servers:
the WhatsApp Graph API (``POST /{phone_number_id}/messages``) and Twilio's REST API
(``POST /2010-04-01/Accounts/{sid}/Messages.json``). They record what they receive."""

from __future__ import annotations

import base64
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.processes import free_port, wait_for

_BSUID = re.compile(r"[A-Z]{2}\.")
THROUGHPUT_LIMIT = {
    "error": {
        "code": 130429,
        "message": "(#130429) Rate limit hit",
        "type": "OAuthException",
        "error_data": {"details": "Cloud API message throughput has been reached."},
    }
}

# Meta's answer to a request whose Bearer token was invalidated (a new one was generated, the
# system user's token revoked): HTTP 401, OAuthException code 190.
TOKEN_INVALIDATED = {
    "error": {
        "message": "Error validating access token: The session has been invalidated.",
        "type": "OAuthException",
        "code": 190,
        "error_subcode": 460,
    }
}

TWILIO_AUTHENTICATE = {  # Twilio's answer to a wrong Account SID / Auth Token pair
    "code": 20003,
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
}

TWILIO_NO_BODY = {  # a message with neither Body nor MediaUrl
    "code": 21602,
    "message": "Message body is required.",
    "more_info": "https://www.twilio.com/docs/errors/21602",
    "status": 400,
}

TWILIO_TOO_LONG = {
    "code": 21617,
    "message": "The concatenated message body exceeds the 1600 character limit.",
    "more_info": "https://www.twilio.com/docs/errors/21617",
    "status": 400,
}


@dataclass
class Received:
    kind: str  # "graph" or "twilio"
    path: str
    authorization: str
    body: dict[str, Any]
    time: float = field(default_factory=time.time)
    peer: int = 0  # the sender's local port: which process's connection it came on

    @property
    def basic_auth(self) -> tuple[str, str]:
        raw = base64.b64decode(self.authorization.removeprefix("Basic ")).decode()
        user, _, password = raw.partition(":")
        return user, password


class FakeClouds:
    """Both fakes on one port; ``failures`` queues (status, json) answers to give first
    (``None``: answer as usual, to fail a later message). Messages from a phone number id in
    ``throttled`` are refused as Meta refuses a number over its throughput (130429), and
    requests with a Bearer token in ``revoked_tokens`` as Meta refuses an invalidated token
    (401, code 190). With
    ``twilio_accounts`` (SID → auth token) set, Twilio requests whose Basic credentials are not
    one of those pairs are refused as Twilio refuses them (401, error 20003)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self.failures: list[tuple[int, dict[str, Any]] | None] = []
        self.throttled: set[str] = set()
        self.revoked_tokens: set[str] = set()
        self.twilio_accounts: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        app = Starlette(
            routes=[
                Route("/{pnid}/messages", self._graph, methods=["POST"]),
                Route("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio, methods=["POST"]),
                Route("/_received", self._dump, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeClouds:
        self._thread.start()
        assert wait_for(lambda: self._server.started, 10)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def _failure(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            return self.failures.pop(0) if self.failures else None

    async def _graph(self, request: Request) -> JSONResponse:
        body = await request.json()
        failure: tuple[int, dict[str, Any]] | None = None  # never fail read receipts
        if body.get("type"):
            throttled = request.path_params["pnid"] in self.throttled
            failure = (400, THROUGHPUT_LIMIT) if throttled else self._failure()
        authorization = request.headers.get("authorization", "")
        if authorization.removeprefix("Bearer ") in self.revoked_tokens:
            failure = (401, TOKEN_INVALIDATED)  # read receipts too: Meta checks every call
        peer = request.client.port if request.client else 0
        self.received.append(Received("graph", request.url.path, authorization, body, peer=peer))
        if failure:
            return JSONResponse(failure[1], status_code=failure[0])
        if body.get("status") == "read":
            return JSONResponse({"success": True})
        # `to` is a phone number; a business-scoped user id (BSUID: country, period, digits,
        # "US.1349…") goes in `recipient`, and `to` wins when both are there. Meta documents no
        # code for a BSUID in `to`: any refusal will do, so the fake answers what a bad
        # parameter gets. (Other odd `to` values are let through: the hostile tests send some.)
        to, recipient = body.get("to"), body.get("recipient")
        if to is not None and _BSUID.match(str(to)):
            error = {"code": 100, "message": "(#100) Invalid parameter", "type": "OAuthException"}
            return JSONResponse({"error": error}, status_code=400)
        contact = {"input": to, "wa_id": to} if to else {"input": recipient, "user_id": recipient}
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [contact],
                "messages": [{"id": f"wamid.out.{next(self._ids)}"}],
            }
        )

    async def _dump(self, request: Request) -> JSONResponse:
        """What was received (for a fake running in its own process, e.g. the benchmark)."""
        return JSONResponse(
            [
                {"kind": r.kind, "path": r.path, "body": r.body, "time": r.time}
                for r in self.received
            ]
        )

    async def _twilio(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        received = Received(
            "twilio", request.url.path, request.headers.get("authorization", ""), form
        )
        accounts = self.twilio_accounts
        failure = self._failure()
        if accounts and accounts.get(received.basic_auth[0]) != received.basic_auth[1]:
            failure = (401, TWILIO_AUTHENTICATE)
        elif not form.get("Body") and not form.get("MediaUrl"):
            failure = (400, TWILIO_NO_BODY)
        elif len(form.get("Body", "").encode("utf-16-le")) // 2 > 1600:
            failure = (400, TWILIO_TOO_LONG)  # emoji count twice
        self.received.append(received)
        if failure:
            return JSONResponse(failure[1], status_code=failure[0])
        return JSONResponse({"sid": f"SM{next(self._ids):032d}", "status": "queued"}, 201)

    # --- what tests ask -------------------------------------------------------------------

    def replies(self, to: str) -> list[Received]:
        """Messages (not read receipts) sent to ``to`` (a phone number or a BSUID)."""
        out = []
        for item in list(self.received):
            address = item.body.get("to", item.body.get("recipient"))  # `to` wins, as at Meta
            graph = item.kind == "graph" and address == to and item.body.get("type")
            twilio = item.kind == "twilio" and item.body.get("To") == f"whatsapp:{to}"
            if graph or twilio:
                out.append(item)
        return out

    def texts(self, to: str) -> list[str]:
        texts = []
        for item in self.replies(to):
            if item.kind == "twilio":
                texts.append(item.body.get("Body", ""))  # a form leaves an empty one out
            elif item.body["type"] == "text":
                texts.append(item.body["text"]["body"])
            else:
                texts.append(item.body["interactive"]["body"]["text"])
        return texts

    def read_receipts(self, message_id: str) -> list[Received]:
        return [
            r
            for r in list(self.received)
            if r.kind == "graph"
            and r.body.get("status") == "read"
            and r.body.get("message_id") == message_id
        ]


if __name__ == "__main__":
    import sys

    FakeClouds(int(sys.argv[1]))._server.run()
