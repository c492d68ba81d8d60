"""The official `openai` Python SDK against a running `tutti serve`.

Run by tests/openai_sdk.rs with the interpreter of the venv that scripts/test.sh
creates (.venv-openai, pinned `openai`). Usage: openai_sdk_check.py BASE_URL MODEL

The client validates every response against the SDK's own models
(`_strict_response_validation=True`), so a field of the wrong type or a missing
required one fails here. Prints one line per check and exits non-zero on failure.
"""

import sys

import openai
from openai import OpenAI


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    client = OpenAI(
        base_url=base_url,
        api_key="not-needed",
        max_retries=0,
        timeout=300,
        _strict_response_validation=True,
    )

    models = client.models.list()
    ids = [m.id for m in models.data]
    assert model in ids, ids
    print("models:", ids)

    c = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    text = c.choices[0].text
    assert text and c.choices[0].finish_reason in ("stop", "length"), c
    assert c.usage.completion_tokens >= 1, c.usage
    print("completion:", repr(text))

    chat = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a color."},
        ],
        max_tokens=8,
        temperature=0,
    )
    answer = chat.choices[0].message.content
    assert answer and chat.choices[0].message.role == "assistant", chat
    print("chat:", repr(answer))

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Name a color."}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(
        ch.choices[0].delta.content or "" for ch in chunks if ch.choices
    )
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None, chunks[-1]
    assert usage.completion_tokens == chat.usage.completion_tokens, usage
    assert streamed == answer, (streamed, answer)
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert reasons[-1] in ("stop", "length") and reasons.count(None) == len(reasons) - 1
    print("chat stream with usage:", len(chunks), "chunks,", usage.total_tokens, "tokens")

    # The SDK parses completion stream chunks with its `Completion` type, whose
    # `finish_reason` may not be null; the API sends null in every chunk but the last
    # (as OpenAI and vLLM do), so this one stream is read by the SDK's default client,
    # which builds the same objects without that check.
    lenient = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=300)
    chunks = list(
        lenient.completions.create(
            model=model,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == text
    assert chunks[-1].usage.completion_tokens == c.usage.completion_tokens
    print("completion stream: same text")

    lp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = lp.choices[0].logprobs.content
    assert content and all(len(e.top_logprobs) == 3 for e in content), content
    assert "".join(bytes(e.bytes).decode() for e in content) == lp.choices[0].message.content
    print("chat logprobs:", [(e.token, round(e.logprob, 3)) for e in content])

    clp = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    assert "".join(clp.choices[0].logprobs.tokens) == clp.choices[0].text
    assert all(len(t) == 2 for t in clp.choices[0].logprobs.top_logprobs)
    print("completion logprobs:", clp.choices[0].logprobs.token_logprobs)

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found", e
        print("error: 404", e.code)
    else:
        raise AssertionError("an unknown model was accepted")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, n=2)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "n", e
        print("error: 400 param", e.param)
    else:
        raise AssertionError("n=2 was accepted")

    print("openai", openai.__version__, "SDK checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
