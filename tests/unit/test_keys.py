"""The API key file (made, listed, revoked, read back), the token bucket, and the one access check."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml

from modelbay.auth.access import Access, Action, authorize, credential
from modelbay.auth.keys import ApiKey, create_key, digest, read_keys, revoke_key
from modelbay.auth.limit import TokenBucket
from modelbay.errors import Forbidden, ModelLoadError, TooManyRequests, Unauthenticated


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_created_key_is_random_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key, entry = create_key(path, "mobile-app", ["infer"], ["resnet", "digits"], 5.0, 10)
    other, _ = create_key(path, "ops", ["admin"])
    assert key.startswith("mb_") and len(key) == 46 and key != other
    text = path.read_text()
    assert key not in text and key.removeprefix("mb_") not in text and other not in text
    assert hashlib.sha256(key.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keys.yaml.lock", "keys.yaml"]  # no temporary left
    stored = yaml.safe_load(text)["keys"][0]
    assert stored == {
        "name": "mobile-app",
        "sha256": digest(key),
        "scopes": ["infer"],
        "models": ["resnet", "digits"],
        "created": entry.created,
        "rate_per_s": 5.0,
        "burst": 10,
    }
    assert entry.created.endswith("Z") and len(entry.created) == 20
    assert [k.name for k in read_keys(path)] == ["mobile-app", "ops"]


def test_revoke_removes_the_key_and_names_the_ones_left_when_it_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    create_key(path, "a", ["infer"])
    create_key(path, "b", ["infer"])
    revoke_key(path, "a")
    assert [k.name for k in read_keys(path)] == ["b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match=r"has no key named 'a' \(it has: b\)"):
        revoke_key(path, "a")
    with pytest.raises(ValueError, match="already has a key named 'b'"):
        create_key(path, "b", ["admin"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "key name 'has space'"),
        ({"name": "-dash"}, "starting with a letter or digit"),
        ({"scopes": ["root"]}, "scopes must be among"),
        ({"scopes": []}, "scopes must be among"),
        ({"scopes": ["admin"], "models": ["m"]}, "an admin key manages every model"),
        ({"rate_per_s": 0}, "rate_per_s must be > 0"),
        ({"rate_per_s": 1, "burst": 0}, "burst must be >= 1"),
        ({"burst": 3}, "with a rate_per_s"),
        ({"sha256": "ABC"}, "sha256 must be 64 lower-case hex digits"),
        ({"secret": "x"}, "unknown field `secret`"),
    ],
)
def test_a_key_file_that_is_not_valid_is_refused_naming_the_problem(
    tmp_path: Path, fields: dict, message: str
) -> None:
    entry = {"name": "k", "sha256": "0" * 64, "scopes": ["infer"], **fields}
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    with pytest.raises(ModelLoadError, match=message):
        read_keys(path)


def test_a_key_file_is_refused_when_missing_not_yaml_or_holding_a_name_twice(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_keys(path)
    assert read_keys(path, missing_ok=True) == []
    path.write_text("keys: [")
    with pytest.raises(ModelLoadError, match="is not valid"):
        read_keys(path)
    twice = [{"name": "k", "sha256": f"{n}" * 64, "scopes": ["infer"]} for n in (1, 2)]
    path.write_text(yaml.safe_dump({"keys": twice}))
    with pytest.raises(ModelLoadError, match=r"two keys with the same name: \['k'\]"):
        read_keys(path)


def test_the_token_bucket_allows_a_burst_then_the_rate_and_says_how_long_to_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(0.5)  # a refusal takes nothing
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 60  # refills up to the burst, no more
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)
    assert TokenBucket(2.5, clock=clock).burst == 3  # default: one second's worth
    assert TokenBucket(0.1, clock=clock).burst == 1


def keys(clock: Clock) -> tuple[Access, dict[str, str]]:
    """An Access over three keys: infer of model a only (rate 1/s, burst 2), infer of all, admin."""
    secrets = {"a-only": "mb_one", "all": "mb_two", "ops": "mb_three"}
    entries = [
        ApiKey(name="a-only", sha256=digest("mb_one"), scopes=["infer"], models=["a"], rate_per_s=1, burst=2),
        ApiKey(name="all", sha256=digest("mb_two"), scopes=["infer"]),
        ApiKey(name="ops", sha256=digest("mb_three"), scopes=["admin"]),
    ]
    return Access(entries, clock=clock), secrets


def test_the_check_answers_who_called_or_why_not() -> None:
    clock = Clock()
    access, key = keys(clock)
    assert access.check(key["all"], Action.INFER, "b") == "all"
    assert access.check(key["ops"], Action.INFER, "b") == "ops"  # admin implies infer
    assert access.check(key["ops"], Action.ADMIN) == "ops"
    assert access.check(key["a-only"], Action.INFER, "a") == "a-only"
    assert access.check(None, Action.HEALTH) is None  # open
    with pytest.raises(Unauthenticated, match="needs an API key"):
        access.check(None, Action.INFER, "a")
    with pytest.raises(Unauthenticated, match=r"not valid \(unknown, or revoked\)") as refused:
        access.check("mb_guess", Action.INFER, "a")
    assert "mb_guess" not in refused.value.message
    with pytest.raises(Forbidden, match="API key 'all' may not use the model repository API"):
        access.check(key["all"], Action.ADMIN)
    clock.now += 10
    with pytest.raises(Forbidden, match="API key 'a-only' may not use model 'b'; it may use a"):
        access.check(key["a-only"], Action.INFER, "b")


def test_a_key_over_its_rate_limit_is_told_when_to_retry() -> None:
    clock = Clock()
    access, key = keys(clock)
    assert access.check(key["a-only"], Action.INFER, "a") == "a-only"
    assert access.check(key["a-only"], Action.INFER, "a") == "a-only"
    with pytest.raises(TooManyRequests, match=r"over its rate limit \(1 requests/s, burst 2\); retry in 1 s"):
        access.check(key["a-only"], Action.INFER, "a")
    clock.now += 0.25
    with pytest.raises(TooManyRequests) as refused:
        access.check(key["a-only"], Action.INFER, "a")
    assert refused.value.retry_after_s == 1  # 0.75 s, rounded up
    assert access.check(key["all"], Action.INFER, "a") == "all"  # each key has its own bucket
    clock.now += 1
    assert access.check(key["a-only"], Action.INFER, "a") == "a-only"


def test_health_needs_a_key_only_when_configured() -> None:
    access = Access([ApiKey(name="k", sha256=digest("mb_k"), scopes=["infer"], models=["m"])], health=True)
    assert access.check("mb_k", Action.HEALTH) == "k"  # any scope, any models
    with pytest.raises(Unauthenticated):
        access.check(None, Action.HEALTH)


def test_without_keys_everything_is_open_but_management_off_loopback() -> None:
    assert authorize(None, Action.INFER, None, "10.0.0.5", "m") == "10.0.0.5"
    assert authorize(None, Action.ADMIN, None, "127.0.0.1") == "127.0.0.1"
    with pytest.raises(Forbidden, match="only loopback clients on a server without API keys"):
        authorize(None, Action.ADMIN, None, "10.0.0.5")
    access = Access([ApiKey(name="ops", sha256=digest("mb_ops"), scopes=["admin"])])
    assert authorize(access, Action.ADMIN, "mb_ops", "10.0.0.5") == "ops"  # with keys: any address
    assert authorize(access, Action.HEALTH, None, "10.0.0.5") == "10.0.0.5"


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer mb_x", None, "mb_x"),
        ("bearer   mb_x ", None, "mb_x"),
        (None, "mb_y", "mb_y"),
        ("Bearer mb_x", "mb_y", "mb_x"),
        ("Basic dXNlcjpwYXNz", "mb_y", "mb_y"),  # a proxy's own Authorization, the key beside it
        (None, None, None),
    ],
)
def test_the_key_is_read_from_authorization_bearer_or_x_api_key(
    authorization: str | None, api_key: str | None, expected: str | None
) -> None:
    assert credential(authorization, api_key) == expected


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "mb_x"])
def test_an_authorization_header_without_a_bearer_key_is_refused(authorization: str) -> None:
    with pytest.raises(Unauthenticated, match="must be 'Bearer <key>'") as refused:
        credential(authorization, None)
    assert "dXNlcjpwYXNz" not in refused.value.message and "mb_x" not in refused.value.message


def test_the_key_file_is_read_again_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    first, _ = create_key(path, "first", ["infer"])
    access = Access.from_file(path)
    assert access.reload() is False  # unchanged
    second, _ = create_key(path, "second", ["infer"], rate_per_s=1, burst=1)
    assert access.reload() is True
    assert access.check(second, Action.INFER, "m") == "second"
    revoke_key(path, "first")
    assert access.reload() is True
    with pytest.raises(Unauthenticated):
        access.check(first, Action.INFER, "m")
    with pytest.raises(TooManyRequests):  # the bucket of an unchanged key is kept across reloads
        access.check(second, Action.INFER, "m")
    path.write_text("keys: [")
    assert access.reload() is False
    assert access.names == ["second"]  # a broken file leaves the keys in use
    assert "stay in use" in caplog.text
    assert first not in caplog.text and second not in caplog.text


def test_keys_created_at_once_are_all_kept(tmp_path: Path) -> None:
    """Eight processes each create a key in the same file at the same moment: the lock makes
    each read the others' keys before writing, so none is lost."""
    import multiprocessing

    path = tmp_path / "keys.yaml"
    context = multiprocessing.get_context("fork")
    with context.Pool(8) as pool:
        made = pool.starmap(create_key, [(path, f"app-{i}", ["infer"]) for i in range(8)])
    stored = {key.name: key.sha256 for key in read_keys(path)}
    assert sorted(stored) == sorted(f"app-{i}" for i in range(8))
    assert {digest(key) for key, _ in made} == set(stored.values())
