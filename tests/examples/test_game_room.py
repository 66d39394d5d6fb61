"""examples/game_room: a word game, matchmaking and a tournament relay.

In process (asyncio and trio) through the worker and the client ends of the
sockets, with a ManualClock for the write timer and the abandonment alarm;
then over real WebSockets and HTTP under uvicorn.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from examples.game_room import app as game_app
from examples.game_room.app import ABANDON_MS, CENTRE, FLUSH_MS, RACK, TILES
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pyobjects import DurableObjectState, Request, Runtime, WebSocket
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock, run_in_durable_object

from .support import ClockedApp, Serve

if TYPE_CHECKING:
    from pathlib import Path


def runtime(clock: ManualClock | None = None) -> Runtime:
    return Runtime(bindings=game_app.worker.bindings, clock=clock or ManualClock())


async def call(rt: Runtime, path: str, method: str = "GET", body: str = "") -> Any:
    request = Request("https://game.test" + path, method=method, body=body or None)
    response = await game_app.fetch(request, rt.env)
    assert response.status == 200, await response.text()
    return json.loads(await response.text())


async def join(rt: Runtime, game: str, player: str) -> tuple[WebSocket, dict[str, Any]]:
    request = Request(
        f"https://game.test/game/{game}/ws?playerId={player}",
        headers={"upgrade": "websocket"},
    )
    response = await game_app.fetch(request, rt.env)
    assert response.status == 101, await response.text()
    client = response.websocket
    assert isinstance(client, WebSocket)
    client.accept()
    state = await recv(client)
    assert state["type"] == "state"
    return client, state


async def recv(ws: WebSocket) -> dict[str, Any]:
    with anyio.fail_after(5):
        message = await ws.receive()
    assert isinstance(message, str), message
    event: dict[str, Any] = json.loads(message)
    return event


def tiles(letters: str, x: int, y: int, across: bool = True) -> list[dict[str, Any]]:
    dx, dy = (1, 0) if across else (0, 1)
    return [
        {"x": x + n * dx, "y": y + n * dy, "letter": letter}
        for n, letter in enumerate(letters)
    ]


def place(ws: WebSocket | ClientConnection, placed: list[dict[str, Any]]) -> None:
    ws.send(json.dumps({"type": "place", "tiles": placed}))


async def stored(rt: Runtime, game: str) -> dict[str, Any]:
    async def read(instance: Any, ctx: DurableObjectState) -> dict[str, Any]:
        return await ctx.storage.list()

    return await run_in_durable_object(rt.env.GAMES.get_by_name(game), read)


async def two_players(rt: Runtime, game: str = "g1") -> tuple[Any, ...]:
    ann, ann_state = await join(rt, game, "ann")
    bob, bob_state = await join(rt, game, "bob")
    assert await recv(ann) == {"type": "join", "playerId": "bob"}
    return ann, ann_state["rack"], bob, bob_state["rack"]


# -- in process -------------------------------------------------------------------


async def test_joining_syncs_the_whole_state_and_tells_the_others() -> None:
    async with runtime() as rt:
        ann, state = await join(rt, "g1", "ann")
        assert state["players"] == [{"playerId": "ann", "score": 0, "online": True}]
        assert (state["turn"], state["board"], state["moves"]) == ("ann", {}, 0)
        assert len(state["rack"]) == RACK
        assert state["bag"] == len(TILES) - RACK
        bob, state = await join(rt, "g1", "bob")
        assert [p["playerId"] for p in state["players"]] == ["ann", "bob"]
        assert state["bag"] == len(TILES) - 2 * RACK
        assert await recv(ann) == {"type": "join", "playerId": "bob"}
        bob.close(1000, "")
        assert await recv(ann) == {"type": "leave", "playerId": "bob"}
        # Bob comes back to the same seat, rack and all.
        _, rejoined = await join(rt, "g1", "bob")
        assert rejoined["rack"] == state["rack"]
        assert await recv(ann) == {"type": "join", "playerId": "bob"}


async def test_turns_and_tile_placement_are_enforced() -> None:
    async with runtime() as rt:
        ann, ann_rack, bob, bob_rack = await two_players(rt)
        word = "".join(ann_rack[:2])
        place(bob, tiles("".join(bob_rack[:2]), CENTRE, CENTRE))
        assert await recv(bob) == {"type": "error", "error": "not your turn"}
        for placed, error in [
            (tiles(word, 0, 0), "the first word covers the centre (4, 4)"),
            (tiles(word[:1], CENTRE, CENTRE), "a word has at least 2 letters"),
            (tiles(word, 8, 4), "(9, 4) is off the board"),
            (
                [*tiles(word, 3, 4), *tiles(ann_rack[2], 4, 5)],
                "the tiles must be in one row or one column",
            ),
            (
                [*tiles(word[0], 2, 4), *tiles(word[1], 4, 4)],
                "the tiles must make one word, without gaps",
            ),
            (tiles("?", CENTRE, CENTRE), "not in your rack: ?"),
            ([], "a move places 1 to 7 tiles"),
        ]:
            place(ann, placed)
            assert await recv(ann) == {"type": "error", "error": error}, placed
        ann.send("{}")
        assert (await recv(ann))["type"] == "error"
        place(ann, tiles(word, CENTRE, CENTRE))
        points = sum(game_app.VALUES[letter] for letter in word)
        move = {
            "type": "move",
            "playerId": "ann",
            "tiles": tiles(word, CENTRE, CENTRE),
            "word": word,
            "points": points,
            "score": points,
            "turn": "bob",
            "bag": len(TILES) - 2 * RACK - 2,
        }
        # Bob's next message is the move: he saw none of Ann's errors.
        assert await recv(bob) == move
        assert await recv(ann) == move
        rack = (await recv(ann))["rack"]
        assert len(rack) == RACK
        place(ann, tiles(rack[0], CENTRE, CENTRE + 1))
        assert await recv(ann) == {"type": "error", "error": "not your turn"}
        letter = bob_rack[0]
        place(bob, tiles(letter, 0, 0))
        assert await recv(bob) == {
            "type": "error",
            "error": "a word must touch the tiles on the board",
        }
        place(bob, tiles(letter, CENTRE, CENTRE + 1))  # down from Ann's first letter
        event = await recv(ann)
        assert (event["word"], event["turn"]) == (word[0] + letter, "ann")
        ann.send(json.dumps({"type": "pass"}))
        assert (await recv(ann))["turn"] == "bob"


async def test_a_lone_player_waits() -> None:
    async with runtime() as rt:
        ann, state = await join(rt, "g1", "ann")
        place(ann, tiles("".join(state["rack"][:2]), CENTRE, CENTRE))
        assert await recv(ann) == {
            "type": "error",
            "error": "waiting for another player",
        }


async def test_moves_are_written_together_on_a_timer_and_survive_eviction() -> None:
    clock = ManualClock()
    async with runtime(clock) as rt:
        ann, ann_rack, bob, _ = await two_players(rt)
        await clock.advance(FLUSH_MS)  # the new game and both players written
        first = await stored(rt, "g1")
        assert first["game"]["players"] == ["ann", "bob"]
        assert set(first) == {"game", "stats:ann", "stats:bob"}
        place(ann, tiles("".join(ann_rack[:2]), CENTRE, CENTRE))
        await recv(bob)
        bob.send(json.dumps({"type": "pass"}))
        assert (await recv(ann))["playerId"] == "ann"
        assert (await recv(ann))["type"] == "rack"
        assert (await recv(ann))["playerId"] == "bob"
        assert (await recv(bob))["playerId"] == "bob"
        await clock.advance(FLUSH_MS - 1)
        assert await stored(rt, "g1") == first  # nothing written yet
        await clock.advance(1)
        written = await stored(rt, "g1")  # both moves, game and stats together
        assert written["game"]["moves"] == 2
        assert written["stats:ann"]["moves"] == 1
        assert written["stats:ann"]["score"] > 0
        assert written["stats:bob"] == {"moves": 1, "score": 0, "best": ""}
        await clock.advance(10_000)  # idle: the room hibernates
        place(ann, tiles(ann_rack[2], CENTRE + 2, CENTRE))  # read back from storage
        event = await recv(bob)
        assert event["word"] == "".join(ann_rack[:3])
        assert event["turn"] == "bob"


async def test_an_abandoned_game_is_deleted_after_5_minutes() -> None:
    clock = ManualClock()
    async with runtime(clock) as rt:
        ann, ann_rack, bob, _ = await two_players(rt)
        place(ann, tiles("".join(ann_rack[:2]), CENTRE, CENTRE))
        await recv(bob)
        ann.close(1000, "")
        await recv(bob)  # ann left
        bob.close(1000, "")
        await clock.advance(ABANDON_MS - 60_000)
        # Ann is back within 5 minutes: the game is kept.
        ann, state = await join(rt, "g1", "ann")
        assert len(state["board"]) == 2
        await clock.advance(ABANDON_MS)
        assert (await stored(rt, "g1"))["game"]["moves"] == 1
        ann.close(1000, "")
        await clock.advance(ABANDON_MS - 1)
        assert "game" in await stored(rt, "g1")
        await clock.advance(1)
        assert await stored(rt, "g1") == {}
        with pytest.raises(LookupError, match="no such game"):
            await rt.env.GAMES.get_by_name("g1").announce("hi")


async def test_matchmaking_pairs_players_of_a_language_and_rating_bucket() -> None:
    async with runtime() as rt:
        ann = await call(rt, "/match?playerId=ann&lang=en&rating=1234", "POST")
        assert ann == {"status": "waiting", "room": "waiting:en:1200"}
        assert await call(rt, "/match?playerId=ann&lang=en&rating=1234", "POST") == ann
        cat = await call(rt, "/match?playerId=cat&lang=fr&rating=1250", "POST")
        assert cat == {"status": "waiting", "room": "waiting:fr:1200"}
        dan = await call(rt, "/match?playerId=dan&lang=en&rating=1300", "POST")
        assert dan["room"] == "waiting:en:1300"
        bob = await call(rt, "/match?playerId=bob&lang=EN&rating=1299", "POST")
        assert bob["status"] == "matched"
        assert bob["opponent"] == "ann"
        ann = await call(rt, "/match?playerId=ann&lang=en&rating=1234", "POST")
        assert ann == {"status": "matched", "game": bob["game"]}
        for query in ("lang=en&rating=1", "playerId=a&rating=1", "playerId=a&lang=en"):
            request = Request(f"https://game.test/match?{query}", method="POST")
            assert (await game_app.fetch(request, rt.env)).status == 400, query


async def test_a_tournament_relays_to_every_game_and_tolerates_failures() -> None:
    async with runtime() as rt:
        players = {game: (await join(rt, game, "p"))[0] for game in ("g1", "g2")}
        for game in ("g1", "missing", "g2"):
            await call(rt, f"/tournament/cup/games?game={game}", "POST")
        result = await call(rt, "/tournament/cup/announce", "POST", "final round")
        assert result["delivered"] == {"g1": 1, "g2": 1}
        assert list(result["failed"]) == ["missing"]
        assert "no such game" in result["failed"]["missing"]
        for ws in players.values():
            assert await recv(ws) == {"type": "announcement", "text": "final round"}


async def test_bad_requests() -> None:
    async with runtime() as rt:
        for method, path, status in [
            ("GET", "/game/g1/ws", 400),
            ("GET", "/game/g1/ws?playerId=", 400),
            ("GET", "/game/g1/ws?playerId=ann", 426),
            ("GET", "/game/g1/other", 404),
            ("POST", "/game/g1", 405),
            ("GET", "/match", 405),
            ("POST", "/tournament/cup/games", 400),
            ("GET", "/tournament/cup/announce", 405),
            ("POST", "/tournament/cup/other", 404),
            ("GET", "/", 404),
        ]:
            request = Request("https://game.test" + path, method=method)
            response = await game_app.fetch(request, rt.env)
            assert response.status == status, path
        for n in range(game_app.MAX_PLAYERS):
            await join(rt, "full", f"p{n}")
        request = Request(
            "https://game.test/game/full/ws?playerId=late",
            headers={"upgrade": "websocket"},
        )
        assert (await game_app.fetch(request, rt.env)).status == 409


# -- over real WebSockets ---------------------------------------------------------


def _recv(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=5)
    assert isinstance(message, str)
    event: dict[str, Any] = json.loads(message)
    return event


def test_a_game_over_websockets(serve: Serve, tmp_path: Path) -> None:
    served = ClockedApp(
        game_app.worker, ManualClock(), storage=SQLiteBackend(tmp_path / "data")
    )
    url = serve(served)
    ws_url = "ws" + url.removeprefix("http")
    with httpx.Client(base_url=url, timeout=5) as http:
        assert http.get("/game/g1").status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"{ws_url}/game/g1/ws", open_timeout=5):
            pass  # pragma: no cover
    assert refused.value.response.status_code == 400
    with httpx.Client(base_url=url, timeout=5) as http:
        waiting = http.post("/match?playerId=ann&lang=en&rating=1210").json()
        assert waiting["room"] == "waiting:en:1200"
        game = http.post("/match?playerId=bob&lang=en&rating=1290").json()["game"]
        assert http.post("/match?playerId=ann&lang=en&rating=1210").json() == {
            "status": "matched",
            "game": game,
        }
        http.post(f"/tournament/cup/games?game={game}").raise_for_status()
        http.post("/tournament/cup/games?game=nobody").raise_for_status()
        with (
            connect(f"{ws_url}/game/{game}/ws?playerId=ann", open_timeout=5) as ann,
            connect(f"{ws_url}/game/{game}/ws?playerId=bob", open_timeout=5) as bob,
        ):
            ann_rack = _recv(ann)["rack"]
            bob_rack = _recv(bob)["rack"]
            assert _recv(ann) == {"type": "join", "playerId": "bob"}
            place(bob, tiles("".join(bob_rack[:2]), CENTRE, CENTRE))
            assert _recv(bob) == {"type": "error", "error": "not your turn"}
            word = "".join(ann_rack[:3])
            place(ann, tiles(word, CENTRE, CENTRE))
            assert _recv(bob)["word"] == word  # Bob saw no error of Ann's
            assert _recv(ann)["word"] == word
            points = sum(game_app.VALUES[letter] for letter in word)
            # Nothing written yet: the new game, the joins and the move wait
            # for the timer, and are then written together.
            assert http.get(f"/game/{game}").status_code == 404
            served.advance(FLUSH_MS)
            assert http.get(f"/game/{game}").json() == {
                "players": [
                    {"playerId": "ann", "moves": 1, "score": points, "best": word},
                    {"playerId": "bob", "moves": 0, "score": 0, "best": ""},
                ],
                "turn": "bob",
                "board": {f"{CENTRE + n},{CENTRE}": c for n, c in enumerate(word)},
                "bag": len(TILES) - 2 * RACK - 3,
                "moves": 1,
            }
            result = http.post("/tournament/cup/announce", content="final").json()
            assert result["delivered"] == {game: 2}
            assert list(result["failed"]) == ["nobody"]
            assert _recv(ann)["type"] == "rack"
            assert _recv(ann) == {"type": "announcement", "text": "final"}
            assert _recv(bob) == {"type": "announcement", "text": "final"}
