"""Credentials and signed image links, without a server (tests/test_api.py checks them over HTTP)."""

import base64

import pytest

from metrix.app.access import URL_LIFETIME, Access, AccessError, is_loopback, load_access


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_open_service_allows_everything_and_signs_nothing():
    access = Access()
    assert not access.enabled and access.allows(None) and access.sign(3) == {}


def test_token_and_logins():
    access = Access(users=[("ann", "pw:with:colons")], token="x" * 20)
    assert access.allows("Bearer " + "x" * 20) and access.allows("bearer " + "x" * 20)
    assert access.allows(basic("ann:pw:with:colons"))
    for header in (
        None,
        "",
        "Bearer " + "x" * 19,
        "Bearer",
        basic("ann:pw"),
        basic("bob:pw:with:colons"),
        "Basic not-base64!",
        "Token " + "x" * 20,
    ):
        assert not access.allows(header), header
    assert not Access(users=[("ann", "pw")]).allows("Bearer anything")  # no token configured


def test_signed_links_name_one_image_and_expire():
    access = Access(token="x" * 20)
    link = access.sign(7, now=1_000_000)
    assert int(link["expires"]) >= 1_000_000 + URL_LIFETIME and int(link["expires"]) % 600 == 0
    assert access.sign(7, now=1_000_001) == link  # stable for a while, so browsers can cache it
    fresh = access.sign(7)
    assert access.signed(7, fresh["expires"], fresh["sig"])
    assert not access.signed(8, fresh["expires"], fresh["sig"])
    assert not access.signed(7, str(int(fresh["expires"]) + 600), fresh["sig"])
    assert not access.signed(7, link["expires"], link["sig"])  # expired in 1970
    assert not access.signed(7, None, fresh["sig"]) and not access.signed(7, "soon", fresh["sig"])
    assert not Access(token="x" * 20).signed(7, fresh["expires"], fresh["sig"])  # another process's key


def test_load_access_from_flags_files_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("METRIX_AUTH", raising=False)
    monkeypatch.delenv("METRIX_API_TOKEN", raising=False)
    assert not load_access().enabled
    logins = tmp_path / "logins.txt"
    logins.write_text("# team\nann:one\n\nbob:two\n")
    assert load_access(auth="cy:three", auth_file=logins).users == [("cy", "three"), ("ann", "one"), ("bob", "two")]
    monkeypatch.setenv("METRIX_AUTH", "dee:four")
    monkeypatch.setenv("METRIX_API_TOKEN", "t" * 16)
    access = load_access()
    assert access.users == [("dee", "four")] and access.token == "t" * 16
    with pytest.raises(AccessError, match="--auth: expected USER:PASSWORD"):
        load_access(auth="nocolon")
    logins.write_text("ann:one\nbroken line\n")
    with pytest.raises(AccessError, match="logins.txt line 2: expected USER:PASSWORD"):
        load_access(auth_file=logins)
    with pytest.raises(AccessError, match="missing.txt: cannot read the login file"):
        load_access(auth_file=tmp_path / "missing.txt")
    with pytest.raises(AccessError, match="at least 16 characters"):
        load_access(token="short")


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("::")
