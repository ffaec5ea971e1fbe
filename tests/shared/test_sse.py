import json

from shared.sse import DONE, SSEParser, encode_comment, encode_data


def test_round_trip_through_arbitrary_chunking() -> None:
    wire = encode_data({"t": "é\nx"}) + encode_comment("queued position=3") + DONE
    text = wire.decode()
    for size in (1, 3, 7, len(text)):
        parser = SSEParser()
        events = [e for i in range(0, len(text), size) for e in parser.feed(text[i : i + size])]
        assert [e.comment for e in events if e.comment] == ["queued position=3"]
        data = [e for e in events if e.data is not None]
        assert json.loads(data[0].data or "") == {"t": "é\nx"}
        assert data[-1].is_done


def test_multiline_data_is_joined() -> None:
    events = SSEParser().feed("data: a\ndata: b\n\n")
    assert events[0].data == "a\nb"
