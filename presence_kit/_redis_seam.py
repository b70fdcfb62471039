"""The typed seam between the Redis stores and redis-py: replies, scripts, failures.

What the stores use of a redis-py client is declared as Protocols in
:mod:`presence_kit._async.redis_types` (and its blocking twin); what is the same on
both sides lives here:

* :data:`Reply`, the one alias for what Redis answers (RESP2 or RESP3, as redis-py
  hands it over), and the checks that narrow a reply to the shape a caller expects
  (:func:`array`, :func:`mapping`, :func:`integer`), raising :class:`UnexpectedReplyError`
  otherwise;
* :class:`RegisteredScript`, what we use of a redis-py ``Script``, and
  :class:`ScriptSet`, our scripts (each a :class:`Lua`) registered with one client;
* :func:`store_error`, the one translation of a failure into
  :class:`~presence_kit.StoreError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeAlias, Union

from redis.exceptions import RedisError

from ._errors import StoreError
from ._redis_scripts import INDEX_LUA, Invocation, _batched, _lua, indexed

__all__ = [
    "Arg",
    "Key",
    "Lua",
    "PipelineReply",
    "RegisteredScript",
    "Reply",
    "ScriptCall",
    "ScriptSet",
    "UnexpectedReplyError",
    "array",
    "integer",
    "mapping",
    "replied",
    "store_error",
]

Reply: TypeAlias = Union[  # a recursive alias: the quoted parts need Union
    int, float, bytes, str, "list[Reply]", "tuple[Reply, ...]", "dict[Key, Reply]", None
]
"""What a Redis command answers, as redis-py hands it over.

RESP2 and RESP3, with ``decode_responses`` on or off: ``None`` (a nil), an integer, a
double (RESP3, or a score redis-py converted), ``bytes`` (or ``str`` when decoded),
arrays (``list``; ``tuple`` where a redis-py callback pairs them, as ``ZRANGE ...
WITHSCORES`` on RESP2) and maps (``dict``: RESP3, or ``HGETALL`` through redis-py's
callback). An error reply is raised (``ResponseError``), except in a pipeline sent
with ``raise_on_error=False``, whose replies are :data:`PipelineReply`. Our scripts
return only integers, strings and arrays of them, so RESP2 and RESP3 read the same."""

Key: TypeAlias = Union[bytes, str, int]  # noqa: UP007  (with Reply)
"""A map key in a reply: a field or member name."""

PipelineReply: TypeAlias = Union[Reply, Exception]  # noqa: UP007  (with Reply)
"""One command's reply in a pipeline that hands failures back instead of raising."""

Arg: TypeAlias = Union[str, int, bytes]  # noqa: UP007  (with Reply)
"""A command argument of ours: keys, fields and values are text, counts integers."""


class UnexpectedReplyError(RedisError):
    """Redis (or something posing as it) answered with a reply of another shape than
    the command's; a store raises it as a :class:`~presence_kit.StoreError`."""


def replied(reply: PipelineReply) -> Reply:
    """A pipeline's reply, its failure raised."""
    if isinstance(reply, Exception):
        raise reply
    return reply


def array(reply: Reply) -> list[Reply] | tuple[Reply, ...]:
    """``reply`` if it is an array (a script's reply, a pipeline's), else raise."""
    if isinstance(reply, (list, tuple)):
        return reply
    raise UnexpectedReplyError(f"expected an array, got {type(reply).__name__}")


def mapping(reply: Reply) -> dict[Key, Reply]:
    """``reply`` if it is a map (``HGETALL``), else raise."""
    if isinstance(reply, dict):
        return reply
    raise UnexpectedReplyError(f"expected a map, got {type(reply).__name__}")


def integer(reply: Reply) -> int:
    """``reply`` as an integer (RESP2 may give one as a string), else raise."""
    if isinstance(reply, int):
        return reply
    if isinstance(reply, (bytes, str)):
        try:
            return int(reply)
        except ValueError:
            pass
    raise UnexpectedReplyError(f"expected an integer, got {type(reply).__name__}")


class RegisteredScript(Protocol):
    """What the stores use of a redis-py ``Script`` (``client.register_script``): its
    SHA1, as the client computes it (with its own encoding)."""

    @property
    def sha(self) -> str: ...


class Lua(NamedTuple):
    """One of our scripts as registered with a client: called with ``EVALSHA sha``,
    and loaded from ``source`` when Redis answers ``NOSCRIPT``."""

    sha: str
    source: str


ScriptCall: TypeAlias = tuple[Lua, Invocation]
"""One call of a script: the script, and the call's keys and args."""


class ScriptSet:
    """Our scripts (``lua/*.lua``) registered with one client, and the batched form of
    those that handler calls send in bursts (``lua/batch.lua``), by the plain one's sha."""

    def __init__(self, register: Callable[[str], RegisteredScript]) -> None:
        def lua(source: str) -> Lua:
            return Lua(register(source).sha, source)

        connect, disconnect = _lua("connect"), _lua("disconnect")
        self.connect, self.disconnect = lua(INDEX_LUA + connect), lua(INDEX_LUA + disconnect)
        self.update = lua(indexed("update"))
        self.finish, self.due = lua(indexed("finish_leave")), lua(_lua("due_leaves"))
        self.heartbeat, self.claim = lua(_lua("heartbeat")), lua(_lua("claim_node"))
        self.renew = lua(_lua("renew_claim"))
        self.org_index, self.rebuild = lua(indexed("org_index")), lua(indexed("rebuild_counts"))
        self.unpend = lua(_lua("feed_unpend"))
        self.batched = {
            self.connect.sha: lua(_batched(connect, INDEX_LUA)),
            self.disconnect.sha: lua(_batched(disconnect, INDEX_LUA)),
            self.update.sha: lua(_batched(_lua("update"), INDEX_LUA)),
        }


def store_error(operation: str, exc: BaseException) -> StoreError:
    """The :class:`~presence_kit.StoreError` a store raises for a failure of
    ``operation`` (whatever failed: the connection, the deadline, Redis, the reply);
    the caller raises it ``from exc``."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return StoreError(f"Redis failed during {operation}: {detail}")
