"""The SNS messages moto has kept: what would have been emailed, for demos and tests.

moto records every publish on its topic model; `GET /moto-api/data.json` exposes them under
`["sns"]["Topic"][i]["sent_notifications"]` as `[message_id, message, subject, attributes,
group_id]`. The same topic can be listed more than once there, so messages are de-duplicated by id.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class SentMessage:
    topic_arn: str
    message_id: str
    subject: str | None
    message: str

    @property
    def topic_name(self) -> str:
        return self.topic_arn.rsplit(":", 1)[-1]


def _read_state(endpoint_url: str, attempts: int, delay: float) -> dict:
    url = f"{endpoint_url.rstrip('/')}/moto-api/data.json"
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our endpoint
                return json.load(response)
        except (urllib.error.URLError, ValueError, OSError):
            # data.json fails transiently while an upload is in flight (see FIELD-NOTES).
            if attempt == attempts:
                raise
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")


def sent_messages(
    endpoint_url: str, topic_name: str | None = None, attempts: int = 5, delay: float = 0.2
) -> list[SentMessage]:
    """Every message published so far (optionally to one topic), oldest first per topic."""
    state = _read_state(endpoint_url, attempts, delay)
    messages: dict[str, SentMessage] = {}
    for topic in state.get("sns", {}).get("Topic", []):
        arn = topic.get("arn", "")
        if topic_name and arn.rsplit(":", 1)[-1] != topic_name:
            continue
        for message_id, message, subject, *_ in topic.get("sent_notifications", []):
            messages.setdefault(message_id, SentMessage(arn, message_id, subject, message))
    return list(messages.values())


def cli_notifications(args: object) -> int:
    import os
    import sys

    from stock_assets.settings import Naming

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if not endpoint:
        print(
            "AWS_ENDPOINT_URL is not set: this command reads the local stack's (moto's) record of "
            "published messages. Use the `export` lines `stock-assets stack` prints. On AWS, the "
            "messages are in the subscribers' mailboxes.",
            file=sys.stderr,
        )
        return 2
    topic = None if getattr(args, "all_topics", False) else Naming.from_env().sns_topic
    messages = sent_messages(endpoint, topic)
    if getattr(args, "json", False):
        print(json.dumps([m.__dict__ for m in messages], indent=2))
        return 0
    if not messages:
        print(f"no messages published to {topic or 'any topic'} yet")
    for number, message in enumerate(messages, start=1):
        print(f"=== {number}. topic {message.topic_name} | subject: {message.subject}")
        print(f"    message id {message.message_id}\n")
        print(message.message.rstrip() + "\n")
    return 0
