#!/usr/bin/env python3
"""A small switchboard agent in Python, speaking the wire protocol directly.

It shows everything a client needs (see docs/PROTOCOL.md): the `hello` handshake, printing
pushed `msg` frames, `ack`ing them, marking them read, sending with a client-chosen ULID so a
retry can never duplicate a message, and reconnecting with exponential backoff and jitter.

Run it:

    # 1. A node must be running: either a standalone one ...
    cargo run -- node                        # listens on ws://127.0.0.1:8765
    #    ... or any running `switchboard mcp`, which hosts the local node in-process.

    # 2. The WebSocket library (version 13 or newer):
    pip install websockets

    # 3. Agents. The token defaults to the node's local secret, read from the data dir
    #    (~/.local/share/switchboard/local.secret unless --data-dir / SWITCHBOARD_DATA_DIR).
    python3 examples/python_agent.py --as echo --echo
    python3 examples/python_agent.py --as alice --send echo "hello there"
    python3 examples/python_agent.py --as alice --send echo "ping" --wait-reply 10  # then exit

Options: --node URL (or SWITCHBOARD_NODE, default ws://127.0.0.1:8765); --token TOKEN (or
SWITCHBOARD_TOKEN) to use an agent token from `switchboard token issue NAME` instead of the
local secret; --json to print raw frames. Stop with Ctrl-C. With --send it exits 1 if the node
refuses the message, or does not answer within --send-timeout seconds (default 10).

TLS: a `wss://` node is verified against the system's roots, plus --tls-ca FILE (or
SWITCHBOARD_TLS_CA; a PEM bundle, e.g. a --tls-self-signed node's DATA_DIR/tls/cert.pem), plus
the data dir's own node's certificate. As the Rust clients do, it refuses to send the token over
plain `ws://` to a host that is not this machine unless --allow-plaintext is given.

    python3 examples/python_agent.py --as alice --node wss://vps.example.com:8765 \
        --token-file alice.token --tls-ca ca.pem --send bob "hello over TLS"

"""

import argparse
import asyncio
import ipaddress
import itertools
import json
import os
import random
import secrets
import ssl
import sys
import time
import urllib.parse
from collections import OrderedDict
from pathlib import Path

try:
    import websockets
    from websockets.asyncio.client import connect  # the asyncio API of websockets >= 13
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
except ImportError:  # older websockets, or none at all
    sys.exit("this example needs websockets >= 13: pip install -U websockets")

PROTOCOL_VERSION = 1
DEFAULT_NODE = "ws://127.0.0.1:8765"
# Errors that reconnecting cannot fix: give up instead of retrying forever.
FATAL_CODES = {"unauthorized", "unsupported_version", "invalid_argument", "forbidden"}
# Message types the echo mode never answers, so that two echo agents cannot ping-pong forever.
NO_REPLY_TYPES = {"result", "event"}


class Fatal(Exception):
    """The node refused us for a reason that retrying will not fix."""


# --- small helpers -----------------------------------------------------------------------------

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_last_ulid = 0


def new_ulid() -> str:
    """A ULID: 48-bit millisecond timestamp + 80 random bits, Crockford base32, 26 chars.

    Sends carry a client-chosen id so that re-sending after a reconnect is idempotent: the node
    stores a message once however often the same id arrives. Inboxes are ordered by id, so ids
    are monotonic: within one millisecond the random part counts up instead of being redrawn.
    """
    global _last_ulid
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    if value >> 80 <= _last_ulid >> 80:  # same (or an earlier) millisecond as the last id
        value = _last_ulid + 1
    _last_ulid = value
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def default_data_dir() -> Path:
    """Where switchboard keeps its data when --data-dir is not given (like Rust's `dirs`)."""
    if os.environ.get("SWITCHBOARD_DATA_DIR"):
        return Path(os.environ["SWITCHBOARD_DATA_DIR"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "switchboard"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "switchboard"


def resolve_token(args) -> str:
    """--token, --token-file, then SWITCHBOARD_TOKEN, then the local secret of the data dir."""
    token = args.token or os.environ.get("SWITCHBOARD_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text()
        except OSError as e:
            sys.exit(f"--token-file {args.token_file}: {e.strerror}")
    if token:
        return token.strip()
    path = Path(args.data_dir or default_data_dir()) / "local.secret"
    try:
        return path.read_text().strip()
    except OSError as e:
        sys.exit(f"no token: pass --token (or SWITCHBOARD_TOKEN), or start a node so that "
                 f"{path} exists ({e.strerror})")


def ws_endpoint(url: str) -> str:
    """The node serves WebSocket at /ws; add it when the URL has no path (as the Rust client)."""
    url = url.rstrip("/")
    return url if "/" in url.split("://", 1)[-1] else url + "/ws"


def is_loopback(host: str) -> bool:
    """This machine for certain: a loopback address (IPv4-mapped too) or the name localhost.
    Decided on the text, as the Rust clients do: another name may resolve anywhere."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".").lower() == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def check_plaintext(url: str, allow: bool):
    """Never send the token in clear text to another machine unless told to."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "ws" and not allow and not is_loopback(parts.hostname or ""):
        sys.exit(f"refusing to send a token in clear text to {parts.hostname} over {url}: use "
                 f"the node's wss:// URL (a node with --tls-cert/--tls-key or --tls-self-signed), "
                 f"or pass --allow-plaintext if the network is trusted")


def tls_context(args):
    """What a wss:// node is verified against: the system's roots, --tls-ca (or
    SWITCHBOARD_TLS_CA), and the data dir's own node's certificate if it has one."""
    ctx = ssl.create_default_context()
    ca = args.tls_ca or os.environ.get("SWITCHBOARD_TLS_CA")
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            sys.exit(f"--tls-ca {ca}: {e}")
    own = Path(args.data_dir or default_data_dir()) / "tls" / "cert.pem"
    if own.is_file():
        try:
            ctx.load_verify_locations(cafile=str(own))
        except (OSError, ssl.SSLError):
            pass  # unreadable: the handshake will say what is missing
    return ctx


def backoff(attempt: int, cap: float = 5.0) -> float:
    """100 ms, 200 ms, 400 ms, ... capped at `cap`, each with ±50 % jitter so that many agents of
    a restarted node do not all reconnect at the same instant."""
    return min(cap, 0.1 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.5)


# --- the agent ---------------------------------------------------------------------------------

class Agent:
    def __init__(self, args):
        self.args = args
        self.url = ws_endpoint(args.node or os.environ.get("SWITCHBOARD_NODE") or DEFAULT_NODE)
        check_plaintext(self.url, args.allow_plaintext)
        self.ssl = tls_context(args) if self.url.startswith("wss://") else None
        self.token = resolve_token(args)
        self.reqs = itertools.count(1)  # request numbers; answers echo them back
        # Requests not answered yet, in sending order: re-sent after a reconnect. Every request
        # is safe to repeat (sends carry their id; mark_read is idempotent).
        self.unanswered: "OrderedDict[int, dict]" = OrderedDict()
        # Ids of messages already handled. Delivery is at-least-once: the same message can be
        # pushed again (replay of unread mail on reconnect), so deduplicate by id.
        self.seen: "OrderedDict[str, None]" = OrderedDict()
        self.ws = None
        self.sent_id = None           # id of the --send message
        self.sent_req = None          # and its request number
        self.finished = asyncio.Event()  # --wait-reply: the reply came, or the send failed
        self.failed = asyncio.Event()    # the --send message was refused: exit non-zero
        self.answered = asyncio.Event()  # the node answered the --send message (sent or error)
        self.exit_code = 0

    # Frames out ---------------------------------------------------------------------------------

    async def request(self, frame: dict) -> int:
        """Sends a request frame with a fresh `req`; it is remembered until answered."""
        req = next(self.reqs)
        frame = {"op": frame.pop("op"), "req": req, **frame}
        self.unanswered[req] = frame
        if self.ws is not None:
            try:
                await self.ws.send(json.dumps(frame))
            except ConnectionClosed:
                pass  # re-sent after the reconnect
        return req

    async def send_message(self, to: str, body: str, **fields) -> "tuple[int, str]":
        """Sends a message; returns its request number and id."""
        # The id is chosen here, once, so a re-send after a reconnect is deduplicated by the node.
        msg_id = new_ulid()
        req = await self.request({"op": "send", "id": msg_id, "to": to, "body": body, **fields})
        return req, msg_id

    # Frames in ----------------------------------------------------------------------------------

    async def on_frame(self, frame: dict):
        op = frame.get("op")
        if self.args.json:
            print(json.dumps(frame), flush=True)
        req = frame.get("req")
        if req is not None:
            self.unanswered.pop(req, None)  # answered (or refused): never re-send it

        if op == "msg":
            await self.on_message(frame["message"])
        elif op == "sent":
            if req is not None and req == self.sent_req:
                self.answered.set()
            if not self.args.json:
                print(f"sent {frame['id']}: {frame['status']} to {frame['recipients']} "
                      f"recipient(s), thread {frame['thread_id']}", flush=True)
        elif op == "error":
            # `code` is stable and machine-readable; `message` is for people.
            where = f" (request {req})" if req is not None else ""
            print(f"error{where}: {frame['code']}: {frame['message']}", file=sys.stderr, flush=True)
            refused = {req} if req is not None else set()
            if req is None and frame["code"] in ("frame_too_large", "bad_frame"):
                # The node closes the connection over a frame we sent; it cannot say which.
                # Re-sending would only be refused again, in a loop: drop them all.
                refused = set(self.unanswered)
                self.unanswered.clear()
            if self.sent_req in refused:
                self.exit_code = 1  # the --send message was refused: nothing will answer it
                self.answered.set()
                self.failed.set()
                self.finished.set()
        elif op == "bye":
            print(f"node says bye: {frame['reason']}", file=sys.stderr, flush=True)
        # `marked`, `pong` and the other answers need nothing more here.

    async def on_message(self, m: dict):
        # 1. Ack at once: this is what lets the sender's `sent` say `delivered`. Ack repeats too.
        await self.ws.send(json.dumps({"op": "ack", "ids": [m["id"]]}))
        if m["id"] in self.seen:
            return
        self.seen[m["id"]] = None
        if len(self.seen) > 10_000:
            self.seen.popitem(last=False)

        # 2. Show it.
        if not self.args.json:
            subject = f" [{m['subject']}]" if m.get("subject") else ""
            reply = f" (reply to {m['reply_to']})" if m.get("reply_to") else ""
            print(f"{m['created_at']} {m['from']} -> {m['to']} {m['type']}/{m['priority']} "
                  f"{m['id']}{reply}{subject}\n    {m['body']}", flush=True)
        if self.sent_id and m.get("reply_to") == self.sent_id:
            self.finished.set()

        # 3. Echo mode: answer with reply_to set. Replies are of type `result`, and results and
        #    events are never answered, so two echo agents cannot loop.
        #    The reply goes to the sender, also for topic and broadcast messages.
        if (self.args.echo and m["type"] not in NO_REPLY_TYPES
                and m["from"] != self.args.agent):
            await self.send_message(m["from"], f"echo: {m['body']}", type="result",
                                    reply_to=m["id"])

        # 4. Mark it read, so it is not replayed the next time this agent connects.
        await self.request({"op": "mark_read", "ids": [m["id"]]})

    # The connection -----------------------------------------------------------------------------

    async def session(self):
        """One connection: handshake, then read frames until it closes."""
        kwargs = {"open_timeout": 5, "max_size": 16 * 2**20}
        if int(websockets.__version__.split(".")[0]) >= 15:
            kwargs["proxy"] = None  # don't route a (usually local) node through HTTP(S)_PROXY
        if self.ssl is not None:
            kwargs["ssl"] = self.ssl
        async with connect(self.url, **kwargs) as ws:
            # The first frame must be hello. The token may instead go in an
            # `Authorization: Bearer` header (connect(..., additional_headers=...)).
            await ws.send(json.dumps({"op": "hello", "agent": self.args.agent,
                                      "token": self.token, "v": PROTOCOL_VERSION,
                                      "role": "agent"}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if first.get("op") == "error":  # the node closes the connection after this
                msg = f"{first['code']}: {first['message']}"
                if first["code"] in FATAL_CODES:
                    raise Fatal(msg)
                raise ConnectionError(msg)
            if first.get("op") != "welcome":
                raise ConnectionError(f"unexpected first frame {first}")
            print(f"connected to node {first['node']} as {first['agent']} "
                  f"(max frame {first['max_frame_bytes']} bytes)", file=sys.stderr, flush=True)
            self.ws = ws
            try:
                # Re-send whatever the last connection left unanswered, in the original order.
                for frame in list(self.unanswered.values()):
                    await ws.send(json.dumps(frame))
                # Right after welcome the node pushes every unread message; then new ones live.
                # websockets answers the node's keep-alive pings by itself.
                async for text in ws:
                    await self.on_frame(json.loads(text))
            finally:
                self.ws = None

    async def run(self):
        if self.args.send:
            to, body = self.args.send
            # Queued now; it goes out once connected.
            self.sent_req, self.sent_id = await self.send_message(to, body)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self.session()
                why = "closed by the node"
            except InvalidURI as e:
                raise Fatal(f"bad node URL: {e}") from e
            except ssl.SSLCertVerificationError as e:
                # Retrying cannot fix a certificate: say which host and why, and stop.
                host = urllib.parse.urlsplit(self.url).hostname
                raise Fatal(f"TLS with {host} failed: {e.verify_message}; pass --tls-ca FILE "
                            f"with the CA that signed its certificate") from e
            except (OSError, ConnectionClosed, InvalidHandshake, ConnectionError,
                    asyncio.TimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() - started > 10:
                attempt = 0  # the connection had been up a while: start over from short pauses
            pause = backoff(attempt)
            attempt += 1
            print(f"disconnected ({why}); reconnecting in {pause:.2f} s", file=sys.stderr,
                  flush=True)
            await asyncio.sleep(pause)


async def until(tasks, timeout=None):
    """Waits for the first of `tasks` to finish (or the timeout); returns the finished ones."""
    done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return done


async def main(args):
    agent = Agent(args)
    runner = asyncio.create_task(agent.run())
    failed = asyncio.create_task(agent.failed.wait())
    waits = [failed]
    try:
        if args.send:
            # A send nobody answers (no node there, or none that takes it) fails too, rather
            # than retrying forever.
            answered = asyncio.create_task(agent.answered.wait())
            waits.append(answered)
            done = await until({runner, answered}, args.send_timeout)
            if runner in done:
                runner.result()  # raises Fatal
            if not done:
                print(f"no answer to the send within {args.send_timeout} s from {agent.url}",
                      file=sys.stderr)
                return 1
            if agent.failed.is_set():
                return agent.exit_code
        if args.wait_reply is None:
            # Until Ctrl-C, or until the --send message is refused (then exit 1, not hang).
            done = await until({runner, failed})
            if runner in done:
                runner.result()  # raises Fatal
            return agent.exit_code
        # --wait-reply: run until a reply to the --send message arrives, or give up.
        finished = asyncio.create_task(agent.finished.wait())
        waits.append(finished)
        done = await until({runner, finished}, args.wait_reply)
        if runner in done:
            runner.result()  # raises Fatal
        if finished in done:
            return agent.exit_code
        print(f"no reply within {args.wait_reply} s", file=sys.stderr)
        return 1
    except Fatal as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    finally:
        for t in [runner, *waits]:
            t.cancel()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--as", dest="agent", default=os.environ.get("SWITCHBOARD_AGENT"),
                   required="SWITCHBOARD_AGENT" not in os.environ, metavar="NAME",
                   help="agent name to act as (or SWITCHBOARD_AGENT)")
    p.add_argument("--node", help=f"node URL (or SWITCHBOARD_NODE; default {DEFAULT_NODE})")
    p.add_argument("--token", help="agent token or local secret (or SWITCHBOARD_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the token")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="PEM bundle of extra roots for wss:// (or SWITCHBOARD_TLS_CA)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="send the token over ws:// to another machine (refused otherwise)")
    p.add_argument("--data-dir", help="data dir holding local.secret "
                   "(or SWITCHBOARD_DATA_DIR; default ~/.local/share/switchboard)")
    p.add_argument("--send", nargs=2, metavar=("TO", "BODY"),
                   help="send one message (TO: agent, #topic or *) and print the answer")
    p.add_argument("--send-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="with --send: exit 1 if the node has not answered it within SECONDS "
                   "(default 10)")
    p.add_argument("--wait-reply", type=float, metavar="SECONDS",
                   help="with --send: exit 0 once a reply arrives, 1 if none within SECONDS")
    p.add_argument("--echo", action="store_true",
                   help="reply to every message (except results and events)")
    p.add_argument("--json", action="store_true", help="print every frame from the node as JSON")
    args = p.parse_args()
    if args.wait_reply is not None and not args.send:
        p.error("--wait-reply needs --send")
    return args


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
