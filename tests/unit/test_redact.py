"""Credentials never reach a log: ``redact_url`` and the MLflow calls that apply it."""

from __future__ import annotations

import pytest

from mtl_core.config import flat_params, load_config
from mtl_core.redact import has_credentials, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://mtl:s3cret@db.example:5432/optuna",
            "postgresql://mtl:***@db.example:5432/optuna",
        ),
        ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
        ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),  # an unencoded '@' in the password
        ("https://user:tok@mlflow.example/", "https://user:***@mlflow.example/"),
        (
            "postgresql://h/db?user=u&password=pw&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("https://h/x?sig=abc&token=def", "https://h/x?sig=***&token=***"),
    ],
)
def test_passwords_are_masked_and_the_rest_is_kept(url, expected):
    assert redact_url(url) == expected
    assert has_credentials(url)
    assert not has_credentials(expected)  # masking twice changes nothing
    assert redact_url(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////tmp/optuna.db",
        "/srv/optuna-journal.log",
        "postgresql://mtl@db/optuna",  # a user without a password
        "http://127.0.0.1:5000/#/experiments/1",
        "none",
        "",
    ],
)
def test_values_without_credentials_are_unchanged(text):
    assert redact_url(text) == text
    assert not has_credentials(text)


def test_urls_inside_free_text_are_masked():
    text = (
        "cannot connect to postgresql://a:one@h1/db, then to mysql://b:two@h2/db "
        "(see https://docs.example/?q=password)"
    )
    out = redact_url(text)
    assert ":one@" not in out and ":two@" not in out
    assert out.count(":***@") == 2
    assert "https://docs.example/?q=password" in out  # no secret there


class _Recorder:
    """Stands in for MlflowClient: keeps what would be sent."""

    def __init__(self):
        self.params, self.tags = {}, {}

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.params.update({p.key: p.value for p in params})
        self.tags.update({t.key: t.value for t in tags})

    def create_run(self, experiment_id, run_name, tags):
        self.tags.update(tags)

        class _Run:
            class info:  # noqa: N801
                run_id = "r1"

        return _Run


def test_logged_params_and_tags_carry_no_password():
    from mtl_core.integrations import tracking

    url = "postgresql://mtl:hunter2@db:5432/optuna"
    cfg = load_config("default", [f"search.storage={url}"])
    params = flat_params(cfg)
    assert params["search.storage"] == url  # the config itself is untouched
    client = _Recorder()
    tracking.log_params(client, "r1", params)
    tracking.set_tags(client, "r1", {"error": f"OperationalError: cannot reach {url}"})
    tracking.start_run(client, "0", "run", tags={"storage": url})
    assert client.params["search.storage"] == "postgresql://mtl:***@db:5432/optuna"
    assert client.tags["storage"] == "postgresql://mtl:***@db:5432/optuna"
    assert (
        client.tags["error"] == "OperationalError: cannot reach postgresql://mtl:***@db:5432/optuna"
    )
    sent = [*client.params.values(), *client.tags.values()]
    assert not any("hunter2" in v for v in sent)
