"""The generated crawler code is up to date and matches the wire contract (CONTRACT §2) field by field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from scheduler._proto import crawler_pb2, crawler_pb2_grpc
from scheduler.devtools import protogen

STRING, INT32, BOOL = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_BOOL
ENUM, MESSAGE = FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_MESSAGE

# name: (number, type, repeated, enum/message type name or None)
CONTRACT_FIELDS: dict[str, dict[str, tuple[int, int, bool, str | None]]] = {
    "FetchRequest": {
        "task_id": (1, STRING, False, None),
        "platform": (2, ENUM, False, "crawler.Platform"),
        "keyword": (3, STRING, False, None),
        "min_price": (4, INT32, False, None),
        "max_price": (5, INT32, False, None),
        "exclude_keywords": (6, STRING, True, None),
        "only_on_sale": (7, BOOL, False, None),
        "limit": (8, INT32, False, None),
        "sort": (9, ENUM, False, "crawler.SortBy"),
        "order": (10, ENUM, False, "crawler.SortOrder"),
    },
    "Item": {
        "source_id": (1, STRING, False, None),
        "title": (2, STRING, False, None),
        "price": (3, INT32, False, None),
        "image_url": (4, STRING, False, None),
        "item_url": (5, STRING, False, None),
        "platform": (6, ENUM, False, "crawler.Platform"),
        "status": (7, STRING, False, None),
        "currency": (8, STRING, False, None),
    },
    "FetchResponse": {
        "items": (1, MESSAGE, True, "crawler.Item"),
        "total_found": (2, INT32, False, None),
        "error_message": (3, STRING, False, None),
    },
}

CONTRACT_ENUMS = {
    "Platform": {"PLATFORM_UNSPECIFIED": 0, "PLATFORM_MERCARI": 1, "PLATFORM_YAHOO_AUCTION": 2},
    "SortBy": {"SORT_BY_CREATED_TIME": 0, "SORT_BY_PRICE": 1, "SORT_BY_SCORE": 2, "SORT_BY_NUM_LIKES": 3},
    "SortOrder": {"SORT_ORDER_DESC": 0, "SORT_ORDER_ASC": 1},
}


def test_generated_code_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert protogen.main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_stale_files(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    assert protogen.differing_files(protogen.OUT_DIR, tmp_path) == []
    (tmp_path / "crawler_pb2.py").write_text("# edited by hand\n")
    (tmp_path / "crawler_pb2_grpc.pyi").unlink()
    assert protogen.differing_files(tmp_path, protogen.OUT_DIR) == ["crawler_pb2.py", "crawler_pb2_grpc.pyi"]


def test_generated_grpc_module_uses_a_package_import() -> None:
    source = Path(crawler_pb2_grpc.__file__).read_text()
    assert "from scheduler._proto import crawler_pb2" in source
    assert "\nimport crawler_pb2" not in source


def test_package_and_service() -> None:
    file = crawler_pb2.DESCRIPTOR
    assert file.package == "crawler"
    as_proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(as_proto)
    assert as_proto.syntax == "proto3"
    service = file.services_by_name["CrawlerService"]
    assert [m.name for m in service.methods] == ["FetchItems"]
    method = service.methods_by_name["FetchItems"]
    assert method.input_type.full_name == "crawler.FetchRequest"
    assert method.output_type.full_name == "crawler.FetchResponse"
    assert not method.client_streaming and not method.server_streaming
    assert f"/{service.full_name}/{method.name}" == "/crawler.CrawlerService/FetchItems"


@pytest.mark.parametrize("message", sorted(CONTRACT_FIELDS))
def test_message_fields_match_contract(message: str) -> None:
    descriptor: Descriptor = crawler_pb2.DESCRIPTOR.message_types_by_name[message]
    actual = {}
    for field in descriptor.fields:
        sub = field.enum_type or field.message_type
        actual[field.name] = (field.number, field.type, field.is_repeated, sub.full_name if sub else None)
    assert actual == CONTRACT_FIELDS[message]


def test_no_extra_messages_or_enums() -> None:
    assert set(crawler_pb2.DESCRIPTOR.message_types_by_name) == set(CONTRACT_FIELDS)
    assert set(crawler_pb2.DESCRIPTOR.enum_types_by_name) == set(CONTRACT_ENUMS)


@pytest.mark.parametrize("enum", sorted(CONTRACT_ENUMS))
def test_enum_values_match_contract(enum: str) -> None:
    descriptor: EnumDescriptor = crawler_pb2.DESCRIPTOR.enum_types_by_name[enum]
    assert {v.name: v.number for v in descriptor.values} == CONTRACT_ENUMS[enum]


def test_wire_bytes_are_stable() -> None:
    # A hand-encoded FetchRequest as the Go crawler would see it: task_id=1 "42", keyword=3 "x", limit=8 30.
    request = crawler_pb2.FetchRequest(task_id="42", keyword="x", limit=30)
    assert request.SerializeToString() == b"\x0a\x0242\x1a\x01x\x40\x1e"
