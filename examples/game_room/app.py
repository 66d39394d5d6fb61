"""A multiplayer word game: game rooms, matchmaking and tournaments.

    pyobjects serve examples.game_room.app:worker

Routes:

    GET  /game/<id>/ws?playerId=<who>            play (a WebSocket upgrade)
    GET  /game/<id>                              the stored game (JSON)
    POST /match?playerId=<who>&lang=en&rating=1234
                                                 find a game: waiting or matched
    POST /tournament/<name>/games?game=<id>      add a game to a tournament
    POST /tournament/<name>/announce             relay the body to its games

Three object classes:

- ``GameRoom``, one per game. Players join over hibernatable WebSockets
  (tagged with their player id); each gets the full state, and the others a
  ``join``. Players take turns in the order they joined; a move places tiles
  from the player's rack on the board, in one line, touching the tiles
  already there. Moves change the state in memory and are written on a short
  timer (the alarm, ``FLUSH_MS`` later), so that quick moves cost one write:
  the game and the stats of every player who moved, in one transaction. When
  the last player leaves, the alarm is set 5 minutes ahead; if nobody is back
  by then, it deletes the game's storage.
- ``WaitingRoom``, one per language and rating bucket (``waiting:en:1200``):
  the first player waits, the second gets a new game with them.
- ``Tournament``: a list of games, and a relay of announcements to all of
  them at once, reporting which ones failed instead of failing itself.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from collections import Counter
from typing import Any, TypedDict
from urllib.parse import parse_qs, unquote, urlencode

import anyio

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectState,
    Env,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
)

#: The board is SIZE x SIZE; the first word covers the centre.
SIZE = 9
CENTRE = SIZE // 2
RACK = 7
MAX_PLAYERS = 4
#: How long moves wait in memory before they are written together.
FLUSH_MS = 500
#: How long an abandoned game is kept for its players to come back.
ABANDON_MS = 5 * 60 * 1000
#: The tiles of a game, shuffled per game.
TILES = (
    "AAAAAAAAABBCCDDDDEEEEEEEEEEEEFFGGGHHIIIIIIIIIJKLLLLMMNNNNNNOOOOOOOOPPQRRRRRR"
    "SSSSTTTTTTUUUUVVWWXYYZ"
)
VALUES = {
    **dict.fromkeys("AEILNORSTU", 1),
    **dict.fromkeys("DG", 2),
    **dict.fromkeys("BCMP", 3),
    **dict.fromkeys("FHVWY", 4),
    "K": 5,
    **dict.fromkeys("JX", 8),
    **dict.fromkeys("QZ", 10),
}
#: Ratings are grouped in buckets this wide for matchmaking.
RATING_BUCKET = 100


class Game(TypedDict):
    """The stored state of a game (``game``)."""

    players: list[str]  # in turn order
    turn: int  # index into players
    board: dict[str, str]  # "x,y" -> letter
    bag: list[str]
    racks: dict[str, list[str]]
    moves: int


class Stats(TypedDict):
    """The stored stats of one player in one game (``stats:<player>``)."""

    moves: int
    score: int
    best: str  # the highest-scoring word


class MoveError(ValueError):
    """A move that is refused (the message goes to its player only)."""


def new_game(seed: str) -> Game:
    bag = list(TILES)
    random.Random(hashlib.sha256(seed.encode()).digest()).shuffle(bag)
    return {"players": [], "turn": 0, "board": {}, "bag": bag, "racks": {}, "moves": 0}


def place(game: Game, player: str, tiles: Any) -> tuple[str, int]:
    """Check a move of *player*; return the word it makes and its points.

    Does not change *game*.
    """
    if not isinstance(tiles, list) or not 1 <= len(tiles) <= RACK:
        raise MoveError(f"a move places 1 to {RACK} tiles")
    board = game["board"]
    cells: dict[tuple[int, int], str] = {}
    for tile in tiles:
        if not isinstance(tile, dict):
            raise MoveError("a tile is {x, y, letter}")
        x, y, letter = tile.get("x"), tile.get("y"), tile.get("letter")
        if type(x) is not int or type(y) is not int or not isinstance(letter, str):
            raise MoveError("a tile is {x, y, letter}")
        if not (0 <= x < SIZE and 0 <= y < SIZE):
            raise MoveError(f"({x}, {y}) is off the board")
        if f"{x},{y}" in board or (x, y) in cells:
            raise MoveError(f"({x}, {y}) is taken")
        cells[x, y] = letter
    missing = Counter(cells.values()) - Counter(game["racks"][player])
    if missing:
        raise MoveError(f"not in your rack: {''.join(sorted(missing.elements()))}")
    xs, ys = {x for x, _ in cells}, {y for _, y in cells}
    if len(xs) > 1 and len(ys) > 1:
        raise MoveError("the tiles must be in one row or one column")
    if len(cells) > 1:
        across = len(ys) == 1
    else:  # one tile: across if it extends a word across
        ((x, y),) = cells
        across = _has(board, x - 1, y) or _has(board, x + 1, y)
    dx, dy = (1, 0) if across else (0, 1)

    def letter_at(x: int, y: int) -> str | None:
        return cells.get((x, y)) or board.get(f"{x},{y}")

    # The word: from the first tile back to the start of the line of letters,
    # then forward to its end; no gap may be left between the new tiles.
    x, y = min(cells)
    while letter_at(x - dx, y - dy):
        x, y = x - dx, y - dy
    word, covered = "", 0
    while letter_at(x, y):
        word += letter_at(x, y) or ""
        covered += (x, y) in cells
        x, y = x + dx, y + dy
    if covered != len(cells):
        raise MoveError("the tiles must make one word, without gaps")
    if not board:
        if (CENTRE, CENTRE) not in cells:
            raise MoveError(f"the first word covers the centre ({CENTRE}, {CENTRE})")
        if len(word) < 2:
            raise MoveError("a word has at least 2 letters")
    elif not any(
        _has(board, x + ox, y + oy)
        for x, y in cells
        for ox, oy in ((1, 0), (-1, 0), (0, 1), (0, -1))
    ):
        raise MoveError("a word must touch the tiles on the board")
    return word, sum(VALUES[letter] for letter in word)


def _has(board: dict[str, str], x: int, y: int) -> bool:
    return f"{x},{y}" in board


def _send(ws: WebSocket, event: dict[str, Any]) -> None:
    ws.send(json.dumps(event))


class GameRoom(DurableObject):
    """One game: players on WebSockets, the state in memory, written on a timer."""

    def __init__(self, ctx: DurableObjectState, env: Env) -> None:
        super().__init__(ctx, env)
        self.game: Game | None = None
        self.stats: dict[str, Stats] = {}
        self.dirty: set[str] = set()  # players whose stats wait to be written
        self.unsaved = False
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        self.game = await self.ctx.storage.get("game")
        stored = await self.ctx.storage.list(prefix="stats:")
        self.stats = {key.removeprefix("stats:"): s for key, s in stored.items()}

    # -- connections --

    async def fetch(self, request: Request) -> Response:
        if request.path == "/":
            return await self.saved()
        player = parse_qs(request.query)["playerId"][0]
        game = self.game
        if game is None:
            game = self.game = new_game(str(self.ctx.id))
            self.unsaved = True
        if player not in game["players"]:
            if len(game["players"]) >= MAX_PLAYERS:
                return Response(
                    f"Conflict: a game has {MAX_PLAYERS} players\n", status=409
                )
            game["players"].append(player)
            game["racks"][player] = [game["bag"].pop() for _ in range(RACK)]
            self.stats[player] = {"moves": 0, "score": 0, "best": ""}
            self.dirty.add(player)
            self.unsaved = True
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server, [player])
        server.serialize_attachment({"playerId": player})
        self.broadcast({"type": "join", "playerId": player}, skip=server)
        _send(server, self.state(player))
        # Someone is here: the game is not abandoned (any flush still runs).
        self.ctx.storage.delete("abandoned_at")
        await self.schedule()
        return Response(status=101, websocket=client)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        player = ws.deserialize_attachment()["playerId"]
        try:
            self.play(player, message)
        except MoveError as exc:
            _send(ws, {"type": "error", "error": str(exc)})  # to this player only
            return
        await self.schedule()

    async def websocket_close(
        self, ws: WebSocket, code: int, reason: str, was_clean: bool
    ) -> None:
        await self._left(ws)

    async def websocket_error(self, ws: WebSocket, error: BaseException) -> None:
        await self._left(ws)

    async def _left(self, ws: WebSocket) -> None:
        player = ws.deserialize_attachment()["playerId"]
        self.broadcast({"type": "leave", "playerId": player}, skip=ws)
        if not [other for other in self.ctx.get_websockets() if other is not ws]:
            # The last one left: delete the game unless someone is back in time.
            self.ctx.storage.put("abandoned_at", self.ctx.now_ms() + ABANDON_MS)
            await self.schedule()

    # -- the game --

    def play(self, player: str, message: str | bytes) -> None:
        game = self.game
        assert game is not None
        try:
            move = json.loads(message)
        except ValueError:
            raise MoveError("a move is JSON") from None
        if not isinstance(move, dict) or move.get("type") not in ("place", "pass"):
            raise MoveError('a move is {"type": "place", "tiles": [...]} or "pass"')
        if len(game["players"]) < 2:
            raise MoveError("waiting for another player")
        if game["players"][game["turn"]] != player:
            raise MoveError("not your turn")
        word, points = "", 0
        tiles = move.get("tiles", [])
        if move["type"] == "place":
            word, points = place(game, player, tiles)
            rack = game["racks"][player]
            for tile in tiles:
                rack.remove(tile["letter"])
                game["board"][f"{tile['x']},{tile['y']}"] = tile["letter"]
            while len(rack) < RACK and game["bag"]:
                rack.append(game["bag"].pop())
            stats = self.stats[player]
            stats["score"] += points
            if points > sum(VALUES[letter] for letter in stats["best"]):
                stats["best"] = word
        else:
            tiles = []
        self.stats[player]["moves"] += 1
        game["moves"] += 1
        game["turn"] = (game["turn"] + 1) % len(game["players"])
        self.dirty.add(player)
        self.unsaved = True
        self.broadcast(
            {
                "type": "move",
                "playerId": player,
                "tiles": tiles,
                "word": word,
                "points": points,
                "score": self.stats[player]["score"],
                "turn": game["players"][game["turn"]],
                "bag": len(game["bag"]),
            }
        )
        if tiles:  # the new rack, to the player's own sockets
            for ws in self.ctx.get_websockets(player):
                _send(ws, {"type": "rack", "rack": game["racks"][player]})

    def state(self, player: str) -> dict[str, Any]:
        game = self.game
        assert game is not None
        online = {
            ws.deserialize_attachment()["playerId"] for ws in self.ctx.get_websockets()
        }
        return {
            "type": "state",
            "board": game["board"],
            "players": [
                {"playerId": p, "score": self.stats[p]["score"], "online": p in online}
                for p in game["players"]
            ],
            "turn": game["players"][game["turn"]],
            "rack": game["racks"][player],
            "bag": len(game["bag"]),
            "moves": game["moves"],
        }

    def broadcast(self, event: dict[str, Any], skip: WebSocket | None = None) -> None:
        data = json.dumps(event)
        for ws in self.ctx.get_websockets():
            if ws is not skip:
                ws.send(data)

    # -- writes on a timer, and the abandonment alarm --

    async def schedule(self) -> None:
        """Set the alarm for the next flush, or else for the abandonment."""
        storage = self.ctx.storage
        when: int | None = await storage.get("abandoned_at")
        if self.unsaved:
            flush = self.ctx.now_ms() + FLUSH_MS
            current = await storage.get_alarm()
            if current is not None and current <= flush:
                return  # a flush is due already: the moves wait for it
            when = flush if when is None else min(when, flush)
        if when is not None:
            storage.set_alarm(when)

    async def alarm(self, alarm_info: Any = None) -> None:
        await self.flush()
        abandoned_at: int | None = await self.ctx.storage.get("abandoned_at")
        if abandoned_at is None or self.ctx.get_websockets():
            return
        if self.ctx.now_ms() >= abandoned_at:
            await self.ctx.storage.delete_all()
            self.game, self.stats = None, {}
        else:
            self.ctx.storage.set_alarm(abandoned_at)

    async def flush(self) -> None:
        """Write the game and the changed stats, in one transaction."""
        if not self.unsaved or self.game is None:
            return
        game, dirty = self.game, sorted(self.dirty)
        async with self.ctx.storage.transaction() as txn:
            txn.put("game", game)
            txn.put({f"stats:{player}": self.stats[player] for player in dirty})
        self.unsaved = False
        self.dirty.clear()

    async def saved(self) -> Response:
        """What storage holds, without the racks and the bag (they are secret)."""
        game: Game | None = await self.ctx.storage.get("game")
        if game is None:
            return _text(404, "Not Found: no such game")
        stats = await self.ctx.storage.list(prefix="stats:")
        view = {
            "players": [
                {"playerId": p, **stats[f"stats:{p}"]} for p in game["players"]
            ],
            "turn": game["players"][game["turn"]],
            "board": game["board"],
            "bag": len(game["bag"]),
            "moves": game["moves"],
        }
        return _json(view)

    # -- RPC --

    async def announce(self, text: str) -> int:
        """Show *text* to everyone in the game; return to how many sockets."""
        if self.game is None:
            raise LookupError("no such game")
        self.broadcast({"type": "announcement", "text": text})
        return len(self.ctx.get_websockets())


class WaitingRoom(DurableObject):
    """Players of one language and rating bucket, paired in arrival order."""

    async def join(self, player: str) -> dict[str, Any]:
        storage = self.ctx.storage
        assigned: str | None = await storage.get(f"game:{player}")
        if assigned is not None:
            storage.delete(f"game:{player}")  # told once
            return {"status": "matched", "game": assigned}
        waiting: str | None = await storage.get("waiting")
        if waiting is None or waiting == player:
            storage.put("waiting", player)
            return {"status": "waiting", "room": self.ctx.id.name}
        game = secrets.token_hex(8)
        storage.delete("waiting")
        storage.put(f"game:{waiting}", game)  # for the waiting one's next poll
        return {"status": "matched", "game": game, "opponent": waiting}


class Tournament(DurableObject):
    """A list of games, and announcements relayed to all of them."""

    async def add(self, game: str) -> list[str]:
        games: list[str] = await self.ctx.storage.get("games") or []
        if game not in games:
            games.append(game)
            self.ctx.storage.put("games", games)
        return games

    async def announce(self, text: str) -> dict[str, Any]:
        games: list[str] = await self.ctx.storage.get("games") or []
        delivered: dict[str, int] = {}
        failed: dict[str, str] = {}

        async def relay(game: str) -> None:
            try:
                with anyio.fail_after(5):
                    stub = self.env.GAMES.get_by_name(game)
                    delivered[game] = await stub.announce(text)
            except Exception as exc:  # one game failing fails no other
                failed[game] = f"{type(exc).__name__}: {exc}"

        async with anyio.create_task_group() as tg:
            for game in games:
                tg.start_soon(relay, game)
        return {"delivered": delivered, "failed": failed}


# -- the worker --------------------------------------------------------------------


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(value) + "\n",
        status=status,
        headers={"content-type": "application/json"},
    )


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers)


def _param(request: Request, name: str) -> str:
    return parse_qs(request.query).get(name, [""])[0].strip()


async def fetch(request: Request, env: Env) -> Response:
    parts = [unquote(part) for part in request.path.removeprefix("/").split("/")]
    if parts[0] == "game" and len(parts) in (2, 3) and parts[1]:
        return await _game(request, env, parts)
    if parts == ["match"]:
        if request.method != "POST":
            return _text(405, "Method Not Allowed", {"allow": "POST"})
        return await _match(request, env)
    if parts[0] == "tournament" and len(parts) == 3 and parts[1]:
        if request.method != "POST":
            return _text(405, "Method Not Allowed", {"allow": "POST"})
        tournament = env.TOURNAMENTS.get_by_name(parts[1])
        if parts[2] == "games":
            game = _param(request, "game")
            if not game:
                return _text(400, "Bad Request: give a ?game=")
            return _json({"games": await tournament.add(game)})
        if parts[2] == "announce":
            return _json(await tournament.announce(await request.text()))
    return _text(404, "Not Found")


async def _game(request: Request, env: Env, parts: list[str]) -> Response:
    if request.method not in ("GET", "HEAD"):
        return _text(405, "Method Not Allowed", {"allow": "GET, HEAD"})
    room = env.GAMES.get_by_name(parts[1])
    if len(parts) == 2:
        response: Response = await room.fetch("https://game/")
        return response
    if parts[2] != "ws":
        return _text(404, "Not Found")
    player = _param(request, "playerId")
    if not player or len(player) > 64:
        return _text(400, "Bad Request: give a ?playerId= (at most 64 characters)")
    if (request.headers.get("upgrade") or "").lower() != "websocket":
        return _text(426, "Upgrade Required: connect with a WebSocket client")
    forwarded = Request(
        "https://game/ws?" + urlencode({"playerId": player}),
        headers={"upgrade": "websocket"},
    )
    response = await room.fetch(forwarded)
    return response


async def _match(request: Request, env: Env) -> Response:
    player, lang, rating = (_param(request, n) for n in ("playerId", "lang", "rating"))
    if not player:
        return _text(400, "Bad Request: give a ?playerId=")
    if not lang.isalpha() or len(lang) > 8:
        return _text(400, "Bad Request: give a ?lang= such as en")
    if not rating.isdigit():
        return _text(400, "Bad Request: give a ?rating= (a whole number)")
    bucket = int(rating) // RATING_BUCKET * RATING_BUCKET
    room = env.WAITING_ROOMS.get_by_name(f"waiting:{lang.lower()}:{bucket}")
    return _json(await room.join(player))


worker = pyobjects.Worker(
    fetch,
    bindings={
        "GAMES": GameRoom,
        "WAITING_ROOMS": WaitingRoom,
        "TOURNAMENTS": Tournament,
    },
)
