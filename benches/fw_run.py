#!/usr/bin/env python3
"""Run faster-whisper on audio files in its own process (used by compare.py).

Prints one JSON object per file on stdout, in the shape of
`scribed transcribe --format json`, plus timing fields:

  {"file", "language", "duration", "text", "segments": [{"start","end","text"}],
   "transcribe_s": seconds spent in transcribe() incl. consuming segments}

and last one line {"meta": {"import_s", "load_s", "versions": {...}, "options": {...}}}.

The decoding options are exactly those listed in OPTIONS below plus
beam_size (and best_of = 1 for beam_size 1); everything else is
faster-whisper's default (temperature fallback 0.0,0.2,...,1.0,
compression_ratio_threshold 2.4, log_prob_threshold -1.0,
no_speech_threshold 0.6, condition_on_previous_text True, timestamps on,
no VAD filter, no word timestamps).
"""
import argparse
import json
import sys
import time

t_import = time.perf_counter()
import ctranslate2  # noqa: E402
import faster_whisper  # noqa: E402
from faster_whisper import WhisperModel  # noqa: E402

IMPORT_S = time.perf_counter() - t_import


def options(beam):
    opts = {"language": "en", "task": "transcribe", "beam_size": beam}
    if beam == 1:
        opts["best_of"] = 1  # greedy; the sampling fallbacks draw one sample
    return opts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--compute-type", default="float32")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    t0 = time.perf_counter()
    model = WhisperModel(a.model, device="cpu", compute_type=a.compute_type,
                         cpu_threads=a.threads, num_workers=1)
    load_s = time.perf_counter() - t0
    opts = options(a.beam)
    for path in a.files:
        t0 = time.perf_counter()
        segments, info = model.transcribe(path, **opts)
        segs = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                for s in segments]  # the generator does the decoding
        dt = time.perf_counter() - t0
        text = "".join(s["text"] for s in segs).strip()
        print(json.dumps({"file": path, "language": info.language,
                          "duration": info.duration, "text": text,
                          "segments": segs, "transcribe_s": dt}), flush=True)
    meta = {"import_s": IMPORT_S, "load_s": load_s,
            "versions": {"faster-whisper": faster_whisper.__version__,
                         "ctranslate2": ctranslate2.__version__},
            "options": dict(opts, device="cpu", compute_type=a.compute_type,
                            cpu_threads=a.threads, num_workers=1)}
    print(json.dumps({"meta": meta}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
