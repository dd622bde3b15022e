"""structlog, configured once: JSON when stderr is not a terminal, console output otherwise.

Outlier events get one line each (``outlier.eject``, ``outlier.uneject``) with the fields of
Envoy's outlier event log (``envoy.data.cluster.v3.OutlierDetectionEvent``, written by
``EventLoggerImpl`` in ``source/common/upstream/outlier_detection_impl.cc``), so tools that
read Istio's ``OUTLIER_LOG_PATH`` output read ours.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from extproc.core.outlier import OutlierAction, OutlierEvent

#: How many hosts ``OutlierEventLog`` remembers last actions for (DNS may rotate addresses).
_MAX_REMEMBERED_HOSTS = 10_000


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process.

    Args:
        level: minimum level name (debug, info, warning, error).
        json: force JSON (True) or console (False); None decides by ``stream.isatty()``.
        stream: where the lines go; ``sys.stderr`` by default.
    """
    stream = stream if stream is not None else sys.stderr
    use_json = (not stream.isatty()) if json is None else json
    # structlog's guidance: dict tracebacks + JSON for machines; the console renderer
    # formats exceptions itself.
    tail: list[structlog.typing.Processor] = (
        [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


class OutlierEventLog:
    """Writes one line per outlier event, with Envoy's event field names.

    ``secs_since_last_action`` is Envoy's: for an ejection, whole seconds since the host's
    last un-ejection; for an un-ejection, since its last ejection; left out when there was
    none (``EventLoggerImpl::setCommonEventParams``). The times come from the events
    themselves, so the line is right even when it is written a sweep tick later.

    One difference: Envoy writes nothing when ``max_ejection_percent`` refuses an ejection
    (it only counts ``ejections_overflow``); we write that detection as an EJECT with
    ``enforced: false``, so an operator can see why a failing host kept its traffic.
    """

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else structlog.get_logger("extproc.outlier")
        # (cluster, host) -> (last enforced ejection, last un-ejection), in event time.
        self._last: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    def write(self, event: OutlierEvent) -> None:
        key = (event.cluster_name, event.upstream_url)
        last_eject, last_uneject = self._last.pop(key, (None, None))
        eject = event.action is OutlierAction.EJECT
        since = last_uneject if eject else last_eject
        fields: dict[str, Any] = {
            "action": event.action.value,
            "type": event.type.value,
            "cluster_name": event.cluster_name,
            "upstream_url": event.upstream_url,
            "num_ejections": event.num_ejections,
            "enforced": event.enforced,
        }
        if since is not None:
            fields["secs_since_last_action"] = int(event.time_s - since)
        if eject and event.enforced:
            last_eject = event.time_s
        elif not eject:
            last_uneject = event.time_s
        if len(self._last) >= _MAX_REMEMBERED_HOSTS:
            del self._last[next(iter(self._last))]  # the host whose last event is oldest
        self._last[key] = (last_eject, last_uneject)
        self._log.info("outlier.eject" if eject else "outlier.uneject", **fields)
