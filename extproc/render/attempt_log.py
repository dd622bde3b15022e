"""The module path's attempt log: the router's ``upstream_log`` into the module, per attempt.

Envoy's router logs every upstream request (each attempt of a retried request) when it
ends, with that attempt's own stream info: its host, status and response flags, what the
router reports to the host's outlier detector (``source/common/router/upstream_request.cc``).
The module is that log's access logger (``wire.MODULE_ATTEMPT_LOGGER``), so it sees every
attempt in process, the middle one of three included, where the filter alone sees only the
last attempt and the attempt count.

xds-protos 1.85 has no message for Envoy's dynamic-module access logger, so it is declared
here, from ``api/envoy/extensions/access_loggers/dynamic_modules/v3/dynamic_modules.proto``
(envoyproxy/envoy: ``dynamic_module_config = 1``, ``logger_name = 2``, ``logger_config =
3``), into protobuf's default pool, where packing and ``to_data`` find it by its type URL.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.dynamic_modules.v3 import dynamic_modules_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from extproc.render.typed import packed
from extproc.wire import MODULE_ATTEMPT_LOGGER, MODULE_NAME

#: The access logger's extension name, as Envoy registers it.
ATTEMPT_LOG = "envoy.access_loggers.dynamic_modules"
_PACKAGE = "envoy.extensions.access_loggers.dynamic_modules.v3"
_FILE = "envoy/extensions/access_loggers/dynamic_modules/v3/dynamic_modules.proto"
_MESSAGE = f"{_PACKAGE}.DynamicModuleAccessLog"


def _declare() -> type[Message]:
    """The ``DynamicModuleAccessLog`` message class, declared in the default pool once."""
    pool = descriptor_pool.Default()
    try:
        return _message_class(pool)
    except KeyError:
        pass
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE,
        package=_PACKAGE,
        syntax="proto3",
        dependency=[
            dynamic_modules_pb2.DESCRIPTOR.name,
            any_pb2.DESCRIPTOR.name,
        ],
    )
    message = proto.message_type.add(name="DynamicModuleAccessLog")
    fields = (
        ("dynamic_module_config", 1, field.TYPE_MESSAGE, dynamic_modules_pb2.DynamicModuleConfig),
        ("logger_name", 2, field.TYPE_STRING, None),
        ("logger_config", 3, field.TYPE_MESSAGE, any_pb2.Any),
    )
    for name, number, kind, of in fields:
        added = message.field.add(
            name=name,
            json_name=_json_name(name),
            number=number,
            label=field.LABEL_OPTIONAL,
            type=kind,
        )
        if of is not None:  # a proto2 field: set only for message fields
            added.type_name = f".{of.DESCRIPTOR.full_name}"
    pool.AddSerializedFile(proto.SerializeToString())
    return _message_class(pool)


def _json_name(name: str) -> str:
    """protoc's JSON name of a field: ``logger_name`` -> ``loggerName``."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def _message_class(pool: descriptor_pool.DescriptorPool) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(_MESSAGE))
    return cls


DynamicModuleAccessLog = _declare()


def module_config() -> dynamic_modules_pb2.DynamicModuleConfig:
    """The shim's library, as the filter and the attempt log both load it (kept loaded)."""
    return dynamic_modules_pb2.DynamicModuleConfig(name=MODULE_NAME, do_not_close=True)


def attempt_log() -> accesslog_pb2.AccessLog:
    """The router's ``upstream_log`` entry that hands every attempt to the module.

    Only at each attempt's end (Envoy's default: no ``flush_upstream_log_on_upstream_stream``
    entry at pool-ready), and without a filter: the module counts a clean success in its
    region and sends the service everything else.
    """
    config = DynamicModuleAccessLog(
        dynamic_module_config=module_config(),
        logger_name=MODULE_ATTEMPT_LOGGER,
    )
    return accesslog_pb2.AccessLog(name=ATTEMPT_LOG, typed_config=packed(config))
