"""Publishing to the course's SNS topic with plain boto3 (Dagster-free; `SNSResource` configures
the client: timeouts and botocore's standard retry mode)."""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from stock_assets.aws import aws_client
from stock_assets.notifications import NotificationError


def sns_client(region_name: str | None, timeout_seconds: float, max_attempts: int) -> Any:
    """An SNS client with bounded timeouts and botocore's standard retries, `max_attempts` in
    all; `NotificationError` if botocore cannot make it (e.g. an endpoint that is not a URL), as
    for a failed publish, so the run is still tagged and the sensor's tick says why."""
    config = Config(
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": max_attempts},  # the first included
    )
    try:
        return aws_client("sns", region_name=region_name, config=config)
    except (BotoCoreError, ValueError) as err:
        raise NotificationError(
            f"the SNS client could not be made: {type(err).__name__}: {err}"
        ) from err


def find_topic_arn(client: Any, name: str) -> str | None:
    """The ARN of the topic called `name` in the client's account and region, if there is one."""
    for page in client.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].rsplit(":", 1)[-1] == name:
                return topic["TopicArn"]
    return None


def is_topic_arn(topic: str) -> bool:
    """STOCK_ASSETS_SNS_TOPIC holds a topic's name, or its full ARN (say, another account's)."""
    return topic.startswith("arn:")


def topic_arn(client: Any, topic: str) -> str:
    """`topic` as an ARN: given as one, or looked up by name. Not CreateTopic: a missing topic
    is a setup error to report, not something to paper over with a topic nobody reads."""
    if is_topic_arn(topic):
        return topic
    arn = find_topic_arn(client, topic)
    if arn:
        return arn
    raise NotificationError(
        f"SNS topic {topic!r} does not exist in this account/region; "
        "create it with `stock-assets provision`"
    )


class _Attempts:
    """The requests the client's latest call sent: botocore retries inside one call and raises
    only the last error, and the error message should say how hard it tried."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-call.sns", self._new_call)
        client.meta.events.register("before-send.sns", self._sent)

    def _new_call(self, **_: Any) -> None:
        self.count = 0

    def _sent(self, **_: Any) -> None:
        self.count += 1


def publish(client: Any, topic: str, subject: str, message: str) -> str:
    """Publish once; returns the SNS message id. NotificationError when the topic lookup or the
    publish fails for good (the client's retries spent, or an error retrying cannot fix)."""
    attempts = _Attempts(client)
    try:
        response = client.publish(
            TopicArn=topic_arn(client, topic), Subject=subject, Message=message
        )
    except (BotoCoreError, ClientError) as err:
        tried = f" after {attempts.count} attempt(s)" if attempts.count else ""
        raise NotificationError(
            f"SNS publish to {topic} failed{tried}: {type(err).__name__}: {err}"
        ) from err
    return response["MessageId"]
