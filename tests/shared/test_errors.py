from shared.errors import (
    AllSlotsBusy,
    InsufficientRam,
    InvalidApiKey,
    ModelNotFound,
    error_from_envelope,
)


def test_envelope_has_openai_fields_and_retry_after() -> None:
    exc = AllSlotsBusy(details={"slots_total": 1, "slots_busy": 1}, retry_after=1.4)
    body = exc.envelope("cid")["error"]
    assert body["code"] == "ALL_SLOTS_BUSY"
    assert body["type"] == "server_error"
    assert body["correlation_id"] == "cid"
    assert exc.headers() == {"Retry-After": "1"}
    assert InvalidApiKey().type == "authentication_error"
    assert ModelNotFound().type == "invalid_request_error"


def test_insufficient_resource_reports_bytes() -> None:
    exc = InsufficientRam.of(3 * 1024**3, 1024**3)
    assert exc.details == {"required_bytes": 3 * 1024**3, "available_bytes": 1024**3}
    assert "3.00 GiB required" in exc.message


def test_envelope_round_trips_to_the_same_class() -> None:
    original = ModelNotFound("Model 'x' is not in any catalog", param="model")
    rebuilt = error_from_envelope(404, original.envelope(None))
    assert type(rebuilt) is ModelNotFound
    assert rebuilt.message == original.message and rebuilt.param == "model"


def test_unknown_code_keeps_upstream_status() -> None:
    rebuilt = error_from_envelope(418, {"error": {"code": "TEAPOT", "message": "short and stout"}})
    assert rebuilt.status == 418 and rebuilt.code == "TEAPOT"
