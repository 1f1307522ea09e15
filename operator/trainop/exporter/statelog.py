"""Log a condition once when it starts and once when it ends, not on every scrape.

A sidecar scraped every 15 s that logs "no GPU" each time buries the one line
a user needs; this keeps one line per change of state.
"""

from __future__ import annotations

import logging


class StateLog:
    """Remembers the last message per topic and logs only changes."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, str] = {}

    def set(
        self, topic: str, message: str, level: int = logging.WARNING, *, exc_info: bool = False
    ) -> None:
        """Report that ``topic`` is in the state ``message``; logged if it changed."""
        if self._last.get(topic) != message:
            self._last[topic] = message
            self._logger.log(level, "%s", message, exc_info=exc_info)

    def clear(self, topic: str, message: str) -> None:
        """``topic`` is fine again; logs ``message`` at INFO only if it was not."""
        if self._last.pop(topic, None) is not None:
            self._logger.info("%s", message)

    def active(self, topic: str) -> bool:
        return topic in self._last
