from llm_worker.textstream import StopMatcher, Utf8Stream


def feed(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    return "".join(out), stopped


def test_utf8_split_across_tokens_is_held_until_complete() -> None:
    stream = Utf8Stream()
    bee = "🐝".encode()
    assert stream.push(b"a" + bee[:2]) == "a"
    assert stream.push(bee[2:3]) == ""
    assert stream.push(bee[3:] + "你".encode()) == "🐝你"
    assert stream.flush() == ""


def test_invalid_utf8_becomes_replacement_character() -> None:
    stream = Utf8Stream()
    assert stream.push(b"ok\xff") == "ok\ufffd"
    assert stream.push(b"\xe4\xbd") == ""
    assert stream.flush() == "\ufffd"


def test_stop_string_split_over_pieces_cuts_before_it() -> None:
    assert feed(["</end>"], ["Hello </", "en", "d> never"]) == ("Hello ", True)


def test_partial_match_that_fails_is_released() -> None:
    assert feed(["STOP"], ["a S", "T", "x b"]) == ("a STx b", False)


def test_first_of_several_stops_wins() -> None:
    assert feed(["world", "lo w"], ["hello world"]) == ("hel", True)


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed(["STOP"], ["ends with ST"]) == ("ends with ST", False)


def test_no_stops_passes_everything_through() -> None:
    assert feed([], ["a", "b"]) == ("ab", False)
