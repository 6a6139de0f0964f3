"""POST /v1/listen through Deepgram's official Python SDK (3.x or 7.x):
the response must parse into the SDK's own types, with no warning.

    python prerecorded.py BASE_URL AUDIO_FILE

Prints one JSON line: the SDK version, the response type, the transcript,
the number of words and utterances."""

import json
import sys
import warnings

import deepgram

base, path = sys.argv[1], sys.argv[2]
major = int(deepgram.__version__.lstrip("v").split(".")[0])
with open(path, "rb") as f:
    audio = f.read()

# The SDK's own imports warn about its websockets dependency; from here on,
# any warning (a field the SDK's types do not expect, say) fails the run.
warnings.simplefilter("error")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(websockets|deepgram)(\..*)?")

if major >= 4:
    from deepgram.environment import DeepgramClientEnvironment

    ws = base.replace("http", "ws", 1)
    env = DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base)
    client = deepgram.DeepgramClient(api_key="test-key", environment=env)
    r = client.listen.v1.media.transcribe_file(
        request=audio, model="nova-3", smart_format=True, punctuate=True, utterances=True, diarize=False
    )
else:
    client = deepgram.DeepgramClient("test-key", deepgram.DeepgramClientOptions(url=base))
    opts = deepgram.PrerecordedOptions(model="nova-2", smart_format=True, punctuate=True, utterances=True)
    r = client.listen.rest.v("1").transcribe_file({"buffer": audio}, opts)

alt = r.results.channels[0].alternatives[0]
print(
    json.dumps(
        {
            "sdk": deepgram.__version__,
            "type": type(r).__name__,
            "transcript": alt.transcript,
            "words": len(alt.words),
            "utterances": len(r.results.utterances or []),
            "duration": r.metadata.duration,
        }
    )
)
