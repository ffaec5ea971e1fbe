import pytest

from shared.errors import ValidationError
from shared.modelref import parse_model_ref


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("hf:org/../etc:x.gguf", "'..' segment"),
        ("file:/models/../../etc/passwd.gguf", "'..' segment"),
        ("gemma;rm -rf /", "whitespace"),
        ("gemma;ls", "shell metacharacter ';'"),
        ("$(reboot)", "shell metacharacter"),
        ("model\x00name", "null bytes"),
        ("model\x1bname", "control characters"),
        ("modèle", "non-ASCII"),
        ("a" * 513, "longer than 512 bytes"),
        ("file:relative.gguf", "absolute path"),
        ("https://host/model.bin", "must name a .gguf file"),
        ("https://host/m.gguf#sha256=xyz", "#sha256="),
        ("hf:justone", "hf:<org>/<repo>"),
        ("", "empty"),
    ],
)
def test_bad_references_say_what_is_wrong(ref: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_model_ref(ref)
    assert reason in info.value.message
    assert info.value.message.startswith("Invalid model reference: ")
    assert "\x00" not in info.value.message and "\x1b" not in info.value.message


def test_good_references_parse() -> None:
    assert parse_model_ref("gemma3-270m").kind == "alias"
    hf = parse_model_ref("hf:TheBloke/TinyLlama-GGUF:tinyllama.Q4_K_M.gguf")
    assert (hf.repo, hf.filename) == ("TheBloke/TinyLlama-GGUF", "tinyllama.Q4_K_M.gguf")
    sha = "a" * 64
    url = parse_model_ref(f"https://example.com/m/tiny.gguf#sha256={sha}")
    assert (url.url, url.sha256, url.slug) == ("https://example.com/m/tiny.gguf", sha, "tiny")
    assert parse_model_ref("file:/srv/models/x.gguf").path == "/srv/models/x.gguf"
