"""Typed-config helpers: a message packed into an ``Any``, durations, wrappers, plain data out.

The bootstrap is built from xds-protos' generated messages (the ``.proto`` files Envoy
itself is built from), so a misspelled field, a wrong enum name or a value of the wrong
type raises where it is written: ``ValueError: Protocol message CommonLbConfig has no
"update_merge_windw" field``. ``to_data`` turns the finished message into the plain data
``yaml.safe_dump`` writes, by protobuf's own JSON mapping, which is the one Envoy reads.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, duration_pb2, json_format, wrappers_pb2
from google.protobuf.message import Message

_ANY = "google.protobuf.Any"


def packed(message: Message) -> any_pb2.Any:
    """``message`` as a ``typed_config``; the type URL comes from its descriptor."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


def milliseconds(ms: int) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` of ``ms`` milliseconds."""
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(ms)
    return duration


def seconds(value_s: float) -> duration_pb2.Duration:
    """A ``Duration`` rounded to whole milliseconds (Istio validates ms precision)."""
    return milliseconds(round(value_s * 1000))


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    """A ``UInt32Value``: the fields where Envoy tells "unset" from 0."""
    return wrappers_pb2.UInt32Value(value=value)


def boolean(value: bool) -> wrappers_pb2.BoolValue:
    """A ``BoolValue``: the fields where Envoy tells "unset" from false."""
    return wrappers_pb2.BoolValue(value=value)


def to_data(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON data under the ``.proto`` field names.

    Fields left at their proto3 default (a false ``bool``, a zero enum) are left out, as
    Envoy's own config dump does: to Envoy an absent field and its default are the same.
    Keys come in the order the ``.proto`` declares the fields (Envoy's docs list them so:
    a route's ``name`` first), not protobuf's field-number order.
    """
    # Through JSON text: MessageToDict gives each Any's fields as an OrderedDict, which
    # yaml.safe_dump refuses.
    text = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)
    data: dict[str, Any] = _declared_order(json.loads(text), message.DESCRIPTOR)
    return data


def _declared_order(value: Any, descriptor: Any) -> Any:
    """``value`` (the JSON form of a ``descriptor`` message) with its keys in .proto order."""
    if isinstance(value, list):
        return [_declared_order(item, descriptor) for item in value]
    name = descriptor.full_name
    if not isinstance(value, dict) or (name.startswith("google.protobuf.") and name != _ANY):
        return value  # a well-known type's JSON (Duration, wrappers, Struct) has no fields
    if name == _ANY:
        packed_type = descriptor_pool.Default().FindMessageTypeByName(
            value["@type"].rpartition("/")[2]
        )
        rest = {key: item for key, item in value.items() if key != "@type"}
        return {"@type": value["@type"], **_declared_order(rest, packed_type)}
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item, field_type = value[field.name], field.message_type
        if field_type is not None and field_type.GetOptions().map_entry:
            value_type = field_type.fields_by_name["value"].message_type
            if value_type is not None:
                item = {key: _declared_order(v, value_type) for key, v in item.items()}
        elif field_type is not None:
            item = _declared_order(item, field_type)
        ordered[field.name] = item
    return ordered
