"""A live /v1/listen session through Deepgram's official Python SDK (3.x
or 7.x), as voice-agent frameworks drive it: audio in 100 ms frames,
`Finalize` at the end of the turn, then `CloseStream`. Every message must
parse into the SDK's own types; an error, an unhandled message or a warning
fails the run.

    python live.py BASE_URL AUDIO.wav   (16 kHz mono 16-bit WAV)

Prints one JSON line: the final transcript, whether a `from_finalize`
result came, the count of each message type, and the errors."""

import json
import logging
import sys
import threading
import time
import warnings
import wave

import deepgram

base, path = sys.argv[1], sys.argv[2]
major = int(deepgram.__version__.lstrip("v").split(".")[0])
with wave.open(path, "rb") as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), "16 kHz mono 16-bit"
    audio = w.readframes(w.getnframes())
frames = [audio[i : i + 3200] for i in range(0, len(audio), 3200)]

seen = {}
finals = []
errors = []

class Fail(logging.Handler):
    """The SDKs log what they cannot parse ("Skipping unknown WebSocket message")."""

    def emit(self, record):
        errors.append(f"SDK log: {record.getMessage()}")


logging.getLogger("deepgram").addHandler(Fail(level=logging.WARNING))
warnings.simplefilter("error")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(websockets|deepgram)(\..*)?")

finalized = threading.Event()
closed = threading.Event()


def count(kind):
    seen[kind] = seen.get(kind, 0) + 1


def on_results(result):
    count("Results")
    text = result.channel.alternatives[0].transcript
    if result.is_final and text:
        finals.append(text)
    if getattr(result, "from_finalize", False):
        finalized.set()


def run_v3():
    from deepgram import DeepgramClientOptions, LiveOptions, LiveTranscriptionEvents as E

    client = deepgram.DeepgramClient("test-key", DeepgramClientOptions(url=base))
    conn = client.listen.websocket.v("1")
    conn.on(E.Transcript, lambda _c, result, **kw: on_results(result))
    conn.on(E.Metadata, lambda _c, metadata, **kw: count("Metadata"))
    conn.on(E.SpeechStarted, lambda _c, speech_started, **kw: count("SpeechStarted"))
    conn.on(E.UtteranceEnd, lambda _c, utterance_end, **kw: count("UtteranceEnd"))
    conn.on(E.Error, lambda _c, error, **kw: errors.append(str(error)))
    conn.on(E.Unhandled, lambda _c, unhandled, **kw: errors.append(f"unhandled: {unhandled}"))
    conn.on(E.Close, lambda _c, close, **kw: closed.set())
    opts = LiveOptions(
        model="nova-2", encoding="linear16", sample_rate=16000, channels=1, interim_results=True,
        punctuate=True, smart_format=True, endpointing=300, utterance_end_ms=1000, vad_events=True,
    )
    if not conn.start(opts):
        errors.append("start failed")
        return
    for f in frames:
        conn.send(f)
        time.sleep(0.01)
    conn.finalize()
    finalized.wait(60)
    conn.finish()


def run_v7():
    from deepgram.core.events import EventType
    from deepgram.environment import DeepgramClientEnvironment

    ws = base.replace("http", "ws", 1)
    env = DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base)
    client = deepgram.DeepgramClient(api_key="test-key", environment=env)
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate="16000", interim_results="true",
        punctuate="true", endpointing="300", utterance_end_ms="1000", vad_events="true",
    ) as conn:

        def on_message(m):
            # The SDK's own types: ListenV1Results, ListenV1Metadata, ...
            kind = type(m).__name__.removeprefix("ListenV1")
            if kind == "Results":
                on_results(m)
            else:
                count(kind)

        conn.on(EventType.MESSAGE, on_message)
        conn.on(EventType.ERROR, lambda e: errors.append(str(e)))
        conn.on(EventType.CLOSE, lambda _e: closed.set())
        listener = threading.Thread(target=conn.start_listening, daemon=True)
        listener.start()
        for f in frames:
            conn.send_media(f)
            time.sleep(0.01)
        conn.send_finalize()
        finalized.wait(60)
        conn.send_close_stream()
        listener.join(60)


(run_v7 if major >= 4 else run_v3)()
closed.wait(10)
print(json.dumps({"sdk": deepgram.__version__, "transcript": " ".join(finals), "finalized": finalized.is_set(),
                  "seen": seen, "errors": errors}))
