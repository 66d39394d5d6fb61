"""Request, Response and Headers."""

from __future__ import annotations

import pytest

from pyobjects import Headers, Request, Response


def test_headers_are_case_insensitive_and_keep_repeats() -> None:
    h = Headers({"Content-Type": "text/plain"})
    h.append("Set-Cookie", "a=1")
    h.append("set-cookie", "b=2")
    assert h["content-type"] == "text/plain"
    assert h.get("SET-COOKIE") == "a=1, b=2"
    assert h.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert "CONTENT-TYPE" in h
    assert len(h) == 2
    assert list(h) == ["content-type", "set-cookie"]
    h["content-type"] = "application/json"
    assert h.get_all("content-type") == ["application/json"]
    del h["set-cookie"]
    assert "set-cookie" not in h
    with pytest.raises(KeyError):
        _ = h["missing"]
    with pytest.raises(KeyError):
        del h["missing"]
    assert h.get("missing", "d") == "d"
    assert h == Headers([("content-type", "application/json")])
    copy = h.copy()
    copy.set("x", "1")
    assert "x" not in h


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("bad name", "v", ValueError),
        ("x", "line\r\nbreak", ValueError),
        ("", "v", ValueError),
        (1, "v", TypeError),
    ],
)
def test_bad_headers_are_rejected(
    name: object, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Headers([(name, value)])  # type: ignore[list-item]


async def test_request_body_and_url_parts() -> None:
    r = Request("https://host/a/b?x=1", method="post", body="héllo")
    assert r.method == "POST"
    assert r.path == "/a/b"
    assert r.query == "x=1"
    assert await r.text() == "héllo"
    assert await r.bytes() == "héllo".encode()
    j = Request("https://host/", method="PUT", body=b'{"a": [1]}')
    assert await j.json() == {"a": [1]}
    assert repr(j) == "<Request PUT https://host/>"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": "/relative"}, ValueError, "absolute"),
        ({"url": 5}, TypeError, "url must be a str"),
        ({"url": "https://h/", "method": "G ET"}, ValueError, "method"),
        (
            {"url": "https://h/", "body": b"x"},
            ValueError,
            "GET request cannot have a body",
        ),
        ({"url": "https://h/", "method": "POST", "body": 5}, TypeError, "body must be"),
    ],
)
def test_bad_requests(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    url = kwargs.pop("url")
    with pytest.raises(error, match=match):
        Request(url, **kwargs)  # type: ignore[arg-type]


async def test_response_helpers() -> None:
    r = Response.from_json({"ok": True}, status=201, headers={"X-A": "1"})
    assert r.status == 201
    assert r.ok
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-a"] == "1"
    assert await r.json() == {"ok": True}
    text = Response("hi")
    assert text.headers["content-type"].startswith("text/plain")
    assert await Response().text() == ""
    assert not Response(status=404).ok
    copy = r.copy()
    copy.headers.set("x-a", "2")
    assert r.headers["x-a"] == "1"


def test_bad_responses() -> None:
    with pytest.raises(ValueError, match=r"200\.\.599"):
        Response(status=99)
    with pytest.raises(TypeError, match="status must be an int"):
        Response(status="200")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="101"):
        Response(websocket=object())


def test_a_text_body_gets_a_text_content_type_unless_one_is_given() -> None:
    # As in Workers: a string body is text/plain;charset=UTF-8 by default.
    assert Response("hi").headers.items() == [
        ("content-type", "text/plain;charset=UTF-8")
    ]
    assert Response("hi", headers={"X-A": "1"}).headers.items() == [
        ("x-a", "1"),
        ("content-type", "text/plain;charset=UTF-8"),
    ]
    given = Response("<p>", headers={"Content-Type": "text/html"})
    assert given.headers.get_all("content-type") == ["text/html"]

    class Text(str):
        pass

    sub = Response(Text("hi"))
    assert sub.headers.get("content-type") == "text/plain;charset=UTF-8"
    assert sub.status == 200
    # Bytes carry no content type of their own.
    assert "content-type" not in Response(b"hi").headers
    assert "content-type" not in Response().headers
