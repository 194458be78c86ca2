"""The dead-letter topic's copies: what a copy carries (Kafka Connect's convention: the
original key, value and headers, plus where it came from and why), cut to fit."""

from __future__ import annotations

from collections.abc import Sequence

# Header names on dead-lettered copies (modelled on Kafka Connect's __connect.errors.*).
DLQ_ERROR = "error"
DLQ_ERROR_TYPE = "error.type"
DLQ_SOURCE_TOPIC = "error.source.topic"
DLQ_SOURCE_PARTITION = "error.source.partition"
DLQ_SOURCE_OFFSET = "error.source.offset"
# On a message `calsync dlq replay` put back: the dead_letters id it is a copy of.
DLQ_REPLAY_OF = "calsync.dlq.replay-of"


# The DLQ copy stays under Kafka's default largest message (1 MiB, with room for the
# record's own overhead): the dead_letters row keeps the message whole, whatever its size.
DLQ_COPY_MAX_BYTES = 900 * 1024
DLQ_VALUE_TRUNCATED = "error.value.truncated-from"
DLQ_KEY_TRUNCATED = "error.key.truncated-from"
DLQ_HEADERS_DROPPED = "error.headers.dropped"


def header_text(text: str) -> bytes:
    """Header values we write: UTF-8, whatever the text holds (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace")


def dead_letter_copy(
    key: bytes | None,
    value: bytes | None,
    original: Sequence[tuple[str, bytes]],
    error_type: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key, value and headers of a message's copy on the dead-letter topic: the original
    ones (Kafka Connect's convention) plus where it came from and why. A message too large
    to copy whole loses its value first, then its original headers, then its key, each
    replaced by a header saying how large it was."""
    ours = {
        DLQ_ERROR,
        DLQ_ERROR_TYPE,
        DLQ_SOURCE_TOPIC,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_OFFSET,
        DLQ_VALUE_TRUNCATED,
        DLQ_KEY_TRUNCATED,
        DLQ_HEADERS_DROPPED,
    }
    kept = [(k, v) for k, v in original if k not in ours]
    added = [
        (DLQ_ERROR, header_text(error)),
        (DLQ_ERROR_TYPE, header_text(error_type)),
        (DLQ_SOURCE_TOPIC, header_text(topic)),
        (DLQ_SOURCE_PARTITION, str(partition).encode()),
        (DLQ_SOURCE_OFFSET, str(offset).encode()),
    ]

    def size() -> int:
        return (
            len(key or b"")
            + len(value or b"")
            + sum(
                len(k.encode("utf-8", "surrogateescape")) + len(v or b"")
                for k, v in (*kept, *added)
            )
        )

    if size() > DLQ_COPY_MAX_BYTES and value:
        added.append((DLQ_VALUE_TRUNCATED, str(len(value)).encode()))
        value = b""
    if size() > DLQ_COPY_MAX_BYTES and kept:
        added.append((DLQ_HEADERS_DROPPED, str(len(kept)).encode()))
        kept = []
    if size() > DLQ_COPY_MAX_BYTES and key:
        added.append((DLQ_KEY_TRUNCATED, str(len(key)).encode()))
        key = b""
    if key is None and value is None:  # Kafka clients refuse a record with neither
        value = b""
    return key, value, [*kept, *added]
