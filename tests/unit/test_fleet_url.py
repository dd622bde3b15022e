"""The ``--shared-state`` URL: checked at start, and its password printed nowhere."""

from __future__ import annotations

import pytest

from extproc.cli.flags import build_parser
from extproc.server.fleet_link import check_url, redact
from extproc.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://fleet:pw-k3y@10.0.0.5:6380/0", "rediss://fleet:***@10.0.0.5:6380/0"),
        ("rediss://:pw-k3y@redis.internal/0", "rediss://:***@redis.internal/0"),
        ("rediss://fleet:p%40ss:w@h/0", "rediss://fleet:***@h/0"),
        ("redis://fleet@h/0", "redis://fleet@h/0"),
        ("redis://h/0?password=pw-k3y&db=1", "redis://h/0?password=***&db=1"),
        (
            "rediss://fleet:pw-k3y@h/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://fleet:***@h/0?ssl_ca_certs=/etc/ca.pem",
        ),
        ("redis://[::1:6379/0", "***"),  # not a URL at all
    ],
    ids=[
        "none",
        "user-and-password",
        "password-only",
        "encoded",
        "user-only",
        "query",
        "tls-query",
        "unparsable",
    ],
)
def test_redact_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "rediss://fleet:pw-k3y@h:6380/0?ssl_ca_cert=/etc/ca.pem",  # misspelt: ssl_ca_certs
        "rediss://fleet:pw-k3y@h:6380/0?ssl_cert_reqs=sometimes",
        "redis://fleet:pw-k3y@h:6379/0?ssl_ca_certs=/etc/ca.pem",  # TLS options without TLS
        "redis://fleet:pw-k3y@h:6379/0?db=first",
    ],
    ids=["misspelt", "bad-value", "tls-option-on-redis", "bad-db"],
)
def test_a_url_redis_py_cannot_use_is_refused_at_start_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as raised:
        check_url(url)
    assert "pw-k3y" not in str(raised.value)
    assert "fleet:***@h" in str(raised.value)


def test_a_url_with_a_ca_file_is_accepted() -> None:
    check_url("rediss://fleet:pw-k3y@127.0.0.1:6380/0?ssl_ca_certs=/etc/extproc/redis-ca.pem")


@pytest.mark.parametrize(
    "url",
    ["https://fleet:pw-k3y@h/0", "rediss://fleet:pw-k3y@h/0?ssl_ca_cert=x"],
    ids=["scheme", "misspelt"],
)
def test_the_flags_error_never_prints_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--shared-state", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--shared-state" in err
    assert "pw-k3y" not in err


def test_the_settings_repr_leaves_the_url_out() -> None:
    settings = Settings(shared_state="rediss://fleet:pw-k3y@h/0")
    assert "pw-k3y" not in repr(settings)
