#!/usr/bin/env python3
"""Side-by-side comparison of scribed and faster-whisper on this machine.

    python3 benches/compare.py [--model models/tiny.en] [--quick]
                               [--skip-scribed] [--skip-accuracy] [--skip-speed]

Accuracy: every file of ../shared/audio/manifest.tsv that has a reference is
transcribed by faster-whisper (float32) and scribed, greedy and beam 5, and
scored with the same normaliser as tests/common/mod.rs. Writes
benches/results/accuracy.md (accuracy-<model>.md for a model other than
tiny.en) and a .json with every hypothesis.

Speed + memory: jfk.wav (11 s) and a long input (default: the 32 reference
files joined, 278 s; --long jfk20: jfk.wav x 20, 220 s), greedy and beam 5,
scribed vs faster-whisper float32 vs faster-whisper int8, each run a fresh
process; wall time and peak RSS of that process (os.wait4), median of 3.
Writes benches/results/speed.md (+ .json).

Both engines get the same number of threads (--threads, default 2).
faster-whisper runs from the venv .venv-bench/ (created, and faster-whisper
installed into it with pip, when missing), or from $FW_PYTHON / --fw-python.
Stdlib only on the outer side.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = REPO.parent / "shared" / "audio"
RESULTS = REPO / "benches" / "results"
FW_RUN = REPO / "benches" / "fw_run.py"
VENV = REPO / ".venv-bench"

# ---------------------------------------------------------------- scoring --
# Identical rules to normalize() in tests/common/mod.rs.
_APOS = {"\u2019": "'", "\u2018": "'"}
_SPACE_LIKE = {"-", "/"} | {chr(c) for c in range(0x2010, 0x2016)}


def normalize(text):
    """lowercase; hyphens/dashes/slashes -> space; apostrophe kept only
    between two letters/digits; all other punctuation dropped; split."""
    chars = [_APOS.get(c, c) for c in text]
    out = []
    for i, c in enumerate(chars):
        if c.isalnum():
            out.append(c.lower())
        elif c.isspace() or c in _SPACE_LIKE:
            out.append(" ")
        elif c == "'":
            if (i > 0 and chars[i - 1].isalnum()
                    and i + 1 < len(chars) and chars[i + 1].isalnum()):
                out.append("'")
    return "".join(out).split()


def word_errors(reference, hypothesis):
    """(word edits, reference word count) after normalize()."""
    r, h = normalize(reference), normalize(hypothesis)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r):
        cur = [i + 1] + [0] * len(h)
        for j, hw in enumerate(h):
            cur[j + 1] = min(prev[j] + (rw != hw), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(h)], len(r)


def wer(reference, hypothesis):
    e, n = word_errors(reference, hypothesis)
    return e / max(n, 1)


def _selftest():
    assert abs(wer("a b c", "a x c") - 1 / 3) < 1e-12
    assert wer("", "") == 0.0 and wer("", "thank you") == 2.0
    assert normalize("Don't  THERE'S") == ["don't", "there's"]
    assert normalize("'quoted' the patients' food") == ["quoted", "the", "patients", "food"]
    assert normalize("post-mortem\u2014done") == ["post", "mortem", "done"]
    assert normalize("Mr. Quilter, U.S. 1,000") == ["mr", "quilter", "us", "1000"]
    assert word_errors("the cat sat", "cat sat on the mat") == (4, 3)


# ------------------------------------------------------------- utilities --
def die(msg):
    print(f"compare.py: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_manifest():
    path = SHARED_AUDIO / "manifest.tsv"
    if not path.is_file():
        die(f"{path} not found")
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    header = [h.strip() for h in lines[0].split("\t")]
    cf, cs, cr = (header.index(n) for n in ("file", "seconds", "reference_text"))
    rows = []
    for line in lines[1:]:
        f = [x.strip() for x in line.split("\t")]
        ref = f[cr] if cr < len(f) else ""
        rows.append({"file": f[cf], "seconds": float(f[cs]),
                     "reference": None if ref in ("", "[no reference]") else ref})
    return rows


def run_measured(cmd, env=None):
    """Run cmd as its own process; returns (rc, wall_s, peak_rss_bytes, cpu_s, stdout, stderr).
    Peak RSS is that process's own ru_maxrss (os.wait4), not the max over all children;
    cpu_s is its user + system CPU time."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, wall, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime,
                out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def json_lines(text):
    objs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return objs


FW_OMP_PASSIVE = True  # --fw-omp-default turns it off


def fw_env():
    # Benchmark faster-whisper's numpy front end at its best: older OpenBLAS
    # workarounds set on some machines slow a current numpy (only here).
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    # CTranslate2's OpenMP threads spin while they wait. When anything else
    # shares the cores (a build, the other engine's leftovers), a spinning
    # thread holds the core its partner needs: measured here, float32 greedy
    # on jfk.wav took 4-15 s instead of 1.1 s at load 3 on 2 cores.
    # PASSIVE makes waiting threads sleep: faster-whisper at its best.
    if FW_OMP_PASSIVE and "OMP_WAIT_POLICY" not in os.environ:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def ensure_fw_python(explicit):
    py = explicit or os.environ.get("FW_PYTHON")
    if py:
        return py
    vpy = VENV / "bin" / "python"
    if not vpy.exists():
        log(f"creating venv {VENV}")
        r = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
        if r.returncode != 0:
            die("python3 -m venv failed (on Debian: apt-get install -y python3-venv)")
        (VENV / ".gitignore").write_text("*\n")
    ok = subprocess.run([str(vpy), "-c", "import faster_whisper"],
                        capture_output=True).returncode == 0
    if not ok:
        log("pip install faster-whisper into .venv-bench")
        r = subprocess.run([str(vpy), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "faster-whisper"])
        if r.returncode != 0:
            die("pip install faster-whisper failed")
    return str(vpy)


def fw_versions(py):
    r = subprocess.run([py, "-c", "import faster_whisper, ctranslate2, json; print(json.dumps("
                        "{'faster-whisper': faster_whisper.__version__, "
                        "'ctranslate2': ctranslate2.__version__}))"],
                       capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version()}


class Scribed:
    def __init__(self, path, threads, extra_args):
        self.path = Path(path)
        self.threads = threads
        self.extra = list(extra_args)
        self.best_of = False
        if self.path.exists():
            help_text = subprocess.run([str(self.path), "transcribe", "--help"],
                                       capture_output=True, text=True).stdout
            if "--language" in help_text:
                self.extra = ["--language", "en"] + self.extra
            # faster-whisper greedy here is best_of=1: the same for scribed.
            self.best_of = "--best-of" in help_text

    def check(self):
        if not (self.path.is_file() and os.access(self.path, os.X_OK)):
            die(f"{self.path} is missing: build it first (cargo build --release), "
                f"or run with --skip-scribed")

    def cmd(self, model, beam, files):
        greedy = ["--best-of", "1"] if self.best_of and str(beam) == "1" else []
        return [self.path, "transcribe", *files, "--model", model, "--format", "json",
                "--beam", str(beam), *greedy, "--threads", str(self.threads), *self.extra]

    def version(self):
        try:
            return subprocess.run([str(self.path), "--version"], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""


def by_basename(objs):
    return {Path(o["file"]).name: o for o in objs if isinstance(o, dict) and "file" in o}


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def model_tag(model):
    return Path(model).resolve().name


def suffix_for(model):
    tag = model_tag(model)
    return "" if tag == "tiny.en" else f"-{tag}"


# --------------------------------------------------------------- accuracy --
def accuracy(args, fw_py, scribed, header_md):
    entries = [e for e in read_manifest() if e["reference"]]
    files = [str(SHARED_AUDIO / e["file"]) for e in entries]
    modes = [("greedy", 1), ("beam5", 5)]
    hyp = {}       # (engine, mode) -> {basename: text or None}
    meta = {}
    for mode, beam in modes:
        log(f"accuracy: faster-whisper float32 {mode} on {len(files)} files")
        rc, wall, rss, cpu, out, err = run_measured(
            [fw_py, FW_RUN, "--model", args.model, "--compute-type", "float32",
             "--beam", beam, "--threads", args.threads, *files], env=fw_env())
        if rc != 0:
            die(f"faster-whisper failed (exit {rc}):\n{err[-3000:]}")
        objs = json_lines(out)
        meta[("fw", mode)] = next((o["meta"] for o in objs if "meta" in o), {})
        hyp[("fw", mode)] = {k: v["text"] for k, v in by_basename(objs).items()}
        log(f"  {wall:.1f} s wall, {cpu:.1f} s CPU")
        if scribed:
            log(f"accuracy: scribed {mode} on {len(files)} files")
            rc, wall, rss, cpu, out, err = run_measured(scribed.cmd(args.model, beam, files))
            got = {k: v.get("text", "") for k, v in by_basename(json_lines(out)).items()}
            if rc != 0:
                log(f"  scribed exit {rc}; stderr tail:\n{err[-2000:]}")
            hyp[("scribed", mode)] = got
            log(f"  {wall:.1f} s wall, {cpu:.1f} s CPU, {len(got)}/{len(files)} files answered")

    engines = ["fw"] + (["scribed"] if scribed else [])
    totals = {(en, m): [0, 0] for en in engines for m, _ in modes}
    rows, details, same_count = [], [], [0, 0]
    for e in entries:
        name, ref = e["file"], e["reference"]
        cells = {}
        for en in engines:
            for m, _ in modes:
                t = hyp[(en, m)].get(name)
                if t is None:
                    cells[(en, m)] = None
                    continue
                ed, n = word_errors(ref, t)
                totals[(en, m)][0] += ed
                totals[(en, m)][1] += n
                cells[(en, m)] = ed / max(n, 1)
        same = "—"
        if scribed:
            a, b = hyp[("fw", "greedy")].get(name), hyp[("scribed", "greedy")].get(name)
            if b is None:
                same = "ERR"
            elif a.strip() == b.strip():
                same = "yes"
                same_count[0] += 1
            elif normalize(a) == normalize(b):
                same = "words"
                same_count[1] += 1
            else:
                same = "no"
        row = [name, f"{e['seconds']:.1f}", len(normalize(ref)),
               pct(cells[("fw", "greedy")])]
        if scribed:
            row += [pct(cells[("scribed", "greedy")]) if cells[("scribed", "greedy")] is not None else "ERR", same]
        row += [pct(cells[("fw", "beam5")])]
        if scribed:
            row += [pct(cells[("scribed", "beam5")]) if cells[("scribed", "beam5")] is not None else "ERR"]
        rows.append(row)
        if any(v != 0 for v in cells.values()) or same not in ("yes", "—"):
            details.append((name, ref, {k: hyp[k].get(name) for k in hyp}))

    def corpus(k):
        ed, n = totals[k]
        return ed / max(n, 1)

    total_s = sum(e["seconds"] for e in entries)
    total_words = sum(len(normalize(e["reference"])) for e in entries)
    orow = ["**overall (corpus)**", f"{total_s:.1f}", total_words, f"**{pct(corpus(('fw', 'greedy')))}**"]
    if scribed:
        orow += [f"**{pct(corpus(('scribed', 'greedy')))}**",
                 f"{same_count[0]} yes, {same_count[1]} words / {len(entries)}"]
    orow += [f"**{pct(corpus(('fw', 'beam5')))}**"]
    if scribed:
        orow += [f"**{pct(corpus(('scribed', 'beam5')))}**"]
    rows.append(orow)

    header = ["file", "s", "ref words", "fw greedy WER %"]
    if scribed:
        header += ["scribed greedy WER %", "greedy text same"]
    header += ["fw beam5 WER %"]
    if scribed:
        header += ["scribed beam5 WER %"]

    fw_opts = {m: meta[("fw", m)].get("options", {}) for m, _ in modes}
    md = [f"# Accuracy: scribed vs faster-whisper — {model_tag(args.model)}", "", header_md, "",
          "faster-whisper options (everything else its default: temperature fallback "
          "0.0,0.2,…,1.0; condition_on_previous_text=True; timestamps on; no VAD filter):",
          ""]
    for m, _ in modes:
        md.append(f"- {m}: `{json.dumps(fw_opts[m], sort_keys=True)}`")
    if scribed:
        md.append(f"- scribed: `{' '.join(str(c) for c in scribed.cmd(args.model, 'B', ['FILE…']))}`"
                  " with B = 1 (greedy) / 5 (beam5)")
    md += ["", "WER = word edits / reference words after normalising both (lowercase, "
           "punctuation dropped, in-word apostrophes kept, hyphens split); overall = "
           "corpus-level (edits and words summed over files). \"greedy text same\": "
           "`yes` identical text, `words` same words after normalising, `no` different.",
           "", md_table(header, rows), ""]
    if not scribed:
        md += ["(scribed not run: --skip-scribed)", ""]
    if details:
        md += ["## Files with errors or differences", ""]
        for name, ref, hs in details:
            md.append(f"**{name}**")
            md.append("")
            md.append(f"- reference: {ref}")
            for (en, m), t in sorted(hs.items()):
                md.append(f"- {en} {m}: {t if t is not None else '(no output)'}")
            md.append("")
    text = "\n".join(md)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sfx = suffix_for(args.model)
    (RESULTS / f"accuracy{sfx}.md").write_text(text + "\n")
    (RESULTS / f"accuracy{sfx}.json").write_text(json.dumps({
        "model": args.model,
        "references": {e["file"]: e["reference"] for e in entries},
        "hypotheses": {f"{en}/{m}": h for (en, m), h in hyp.items()},
        "corpus_wer": {f"{en}/{m}": corpus((en, m)) for en in engines for m, _ in modes},
        "fw_options": fw_opts,
    }, indent=1) + "\n")
    log(f"wrote {RESULTS / f'accuracy{sfx}.md'}")


# ------------------------------------------------------------------ speed --
def _write_concat(dst, parts, gap_s=0.0):
    """Concatenate 16-bit WAV files (same format) into dst, gap_s of silence between."""
    params = None
    with wave.open(str(dst), "wb") as out:
        for i, part in enumerate(parts):
            with wave.open(str(part)) as w:
                if params is None:
                    params = w.getparams()
                    out.setparams(params)
                elif (w.getnchannels(), w.getsampwidth(), w.getframerate()) != \
                        (params.nchannels, params.sampwidth, params.framerate):
                    die(f"{part}: format differs from {parts[0]}")
                if i and gap_s:
                    out.writeframes(b"\0" * int(gap_s * params.framerate) * params.sampwidth
                                    * params.nchannels)
                out.writeframes(w.readframes(w.getnframes()))


def make_inputs(tmp, quick, long_kind):
    """[(label, path, seconds, reference)] for the speed table."""
    manifest = {e["file"]: e for e in read_manifest()}
    src = SHARED_AUDIO / "jfk.wav"
    if not src.is_file() or "jfk.wav" not in manifest:
        die(f"{src} not found (or not in manifest.tsv)")
    jfk = tmp / "jfk.wav"
    shutil.copyfile(src, jfk)
    inputs = [("jfk.wav", jfk, manifest["jfk.wav"]["reference"])]
    if not quick and long_kind == "jfk20":
        long = tmp / "jfk_x20.wav"
        _write_concat(long, [src] * 20)
        inputs.append(("jfk.wav x 20", long, " ".join([manifest["jfk.wav"]["reference"]] * 20)))
    elif not quick and long_kind == "corpus":
        refs = [e for e in manifest.values() if e["reference"]]
        long = tmp / "corpus.wav"
        _write_concat(long, [SHARED_AUDIO / e["file"] for e in refs], gap_s=0.5)
        inputs.append((f"{len(refs)} files joined", long, " ".join(e["reference"] for e in refs)))
    out = []
    for label, p, ref in inputs:
        with wave.open(str(p)) as w:
            out.append((label, p, w.getnframes() / w.getframerate(), ref))
    return out


def speed(args, fw_py, scribed, header_md):
    repeats = 1 if args.quick else args.repeats
    engines = []
    if scribed:
        engines.append(("scribed", lambda beam, f: scribed.cmd(args.model, beam, [f]), None))
    for ct in ("float32", "int8"):
        engines.append((f"fw-{ct}", (lambda ct: lambda beam, f: [
            fw_py, FW_RUN, "--model", args.model, "--compute-type", ct,
            "--beam", beam, "--threads", args.threads, f])(ct), fw_env()))
    modes = [("greedy", 1), ("beam5", 5)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="scribed-bench-") as td:
        inputs = make_inputs(Path(td), args.quick, args.long)
        # Untimed warm-up: page cache holds the model and the audio for everyone.
        for name, mk, env in engines:
            run_measured(mk(1, inputs[0][1]), env=env)
        for label, path, secs, ref in inputs:
            for mode, beam in modes:
                for rep in range(repeats):
                    for name, mk, env in engines:  # interleaved: load drifts hit all
                        load_before = os.getloadavg()[0]
                        rc, wall, rss, cpu, out, err = run_measured(mk(beam, path), env=env)
                        objs = json_lines(out)
                        files = [o for o in objs if "file" in o]
                        r = results.setdefault((label, mode, name), {
                            "wall": [], "cpu": [], "rss": [], "transcribe": [], "words": [],
                            "wer": [], "load1": [], "errors": 0})
                        r["load1"].append(load_before)
                        if rc != 0 or not files:
                            r["errors"] += 1
                            log(f"  {name} {label} {mode}: exit {rc}: {err.strip()[-500:]}")
                            continue
                        r["wall"].append(wall)
                        r["rss"].append(rss)
                        r["cpu"].append(cpu)
                        if "transcribe_s" in files[0]:
                            r["transcribe"].append(files[0]["transcribe_s"])
                        text = files[0].get("text", "")
                        r["words"].append(len(normalize(text)))
                        r["wer"].append(wer(ref, text))
                        log(f"  {label} {mode} {name} rep {rep + 1}: {wall:.2f} s, "
                            f"cpu {cpu:.2f} s, {rss / 2**20:.0f} MiB, {r['words'][-1]} words, "
                            f"WER {100 * r['wer'][-1]:.1f}%")

    def med(v):
        return statistics.median(v) if v else None

    def s(v, nd=2):
        return "—" if v is None else f"{v:.{nd}f}"

    names = [n for n, _, _ in engines]
    header = ["input", "audio s", "mode"]
    header += [f"{n} s" for n in names]
    if scribed:
        header += ["scribed / fw-f32", "scribed / fw-int8"]
    header += [f"{n} CPU s" for n in names]
    header += [f"{n} RSS MiB" for n in names]
    header += ["fw-f32 transcribe s", "fw-int8 transcribe s", "WER % " + "/".join(names)]
    rows = []
    table = {}
    for label, _, secs, _ in inputs:
        for mode, _ in modes:
            w = {n: med(results.get((label, mode, n), {}).get("wall", [])) for n in names}
            m = {n: med(results.get((label, mode, n), {}).get("rss", [])) for n in names}
            t = {n: med(results.get((label, mode, n), {}).get("transcribe", [])) for n in names}
            c = {n: med(results.get((label, mode, n), {}).get("cpu", [])) for n in names}
            row = [label, f"{secs:.0f}", mode] + [s(w[n]) for n in names]
            if scribed:
                for ref in ("fw-float32", "fw-int8"):
                    row.append(s(w["scribed"] / w[ref]) if w["scribed"] and w[ref] else "—")
            row += [s(c[n]) for n in names]
            row += [s(m[n] / 2**20 if m[n] else None, 0) for n in names]
            row += [s(t["fw-float32"]), s(t["fw-int8"])]
            row.append("/".join(
                ",".join(f"{100 * x:.1f}" for x in results.get((label, mode, n), {}).get("wer", []))
                or "—" for n in names))
            rows.append(row)
            table[f"{label}/{mode}"] = {"audio_s": secs, "median_wall_s": w,
                                        "median_rss_bytes": m, "median_cpu_s": c, "median_fw_transcribe_s": t,
                                        "runs": {n: results.get((label, mode, n)) for n in names}}
    md = [f"# Speed and memory: scribed vs faster-whisper — {model_tag(args.model)}", "",
          header_md, "",
          f"Each cell: median of {repeats} run(s), each a fresh process, interleaved across "
          "engines, after one untimed warm-up run per engine. `s` = wall time of the whole "
          "process (start-up, model load, audio decode, transcription); `CPU s` = its user + system CPU time (less sensitive than wall time to other load on the machine). RSS = the process's "
          "peak resident memory. `fw-* transcribe s` = time inside faster-whisper's "
          "transcribe() only (no Python start-up, imports or model load). Ratios < 1: scribed "
          "is faster. `WER %` = word error rate of each run's output against the joined "
          "references (every repeat listed: temperature fallback samples at random, so "
          "runs can differ).", ""] + ([
          "The long input is every manifest file with a reference, joined with 0.5 s of "
          "silence between files (real, non-repeating speech)."] if args.long == "corpus" else [
          "The long input is jfk.wav 20 times back to back. Its correct transcript repeats "
          "one sentence, so Whisper's compression-ratio check (> 2.4) rejects most windows "
          "and the temperature fallback runs: timings then depend on random sampling."]) + ["",
          md_table(header, rows), ""]
    la = os.getloadavg()
    md += [f"Load average after the runs (1/5/15 min): {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} "
           f"on {os.cpu_count()} CPUs.", ""]
    if not scribed:
        md += ["(scribed not run: --skip-scribed)", ""]
    text = "\n".join(md)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sfx = suffix_for(args.model) + ("-quick" if args.quick else "") + \
        ("-jfk20" if args.long == "jfk20" and not args.quick else "")
    (RESULTS / f"speed{sfx}.md").write_text(text + "\n")
    (RESULTS / f"speed{sfx}.json").write_text(json.dumps(table, indent=1) + "\n")
    log(f"wrote {RESULTS / f'speed{sfx}.md'}")


# ------------------------------------------------------------------- main --
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/tiny.en",
                    help="CT2 Whisper model dir, relative to the repo (default models/tiny.en)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="speed: jfk.wav only, 1 repeat")
    ap.add_argument("--long", choices=["corpus", "jfk20"], default="corpus",
                    help="speed's long input: the reference files joined (default, 277 s) "
                    "or jfk.wav x 20 (220 s; pathological: triggers temperature fallback)")
    ap.add_argument("--skip-scribed", action="store_true", help="faster-whisper only")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--scribed", default=str(REPO / "target" / "release" / "scribed"),
                    help="scribed binary (default target/release/scribed)")
    ap.add_argument("--scribed-args", default="",
                    help="extra arguments for every scribed run, e.g. '--no-vad' to decode "
                    "every window as faster-whisper does")
    ap.add_argument("--fw-omp-default", action="store_true",
                    help="leave OpenMP's default (spinning) wait policy for faster-whisper "
                    "instead of OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--fw-python", help="python with faster-whisper (default: .venv-bench, "
                    "or $FW_PYTHON)")
    args = ap.parse_args()
    global FW_OMP_PASSIVE
    FW_OMP_PASSIVE = not args.fw_omp_default
    _selftest()
    os.chdir(REPO)
    args.model = str(Path(args.model))
    if not (Path(args.model) / "model.bin").is_file():
        die(f"{args.model}/model.bin not found (run scripts/setup.sh"
            f"{' --with-base' if 'base' in args.model else ''} --no-run)")
    scribed = None
    if not args.skip_scribed:
        scribed = Scribed(args.scribed, args.threads, args.scribed_args.split())
        scribed.check()
    fw_py = ensure_fw_python(args.fw_python)

    mach = machine()
    vers = fw_versions(fw_py)
    load1 = os.getloadavg()[0]
    header_md = "\n".join([
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']}, "
        f"Linux {mach['kernel']}, load average at start {load1:.2f}",
        f"- threads per engine: {args.threads}; model: `{args.model}`",
        f"- faster-whisper {vers.get('faster-whisper', '?')}, ctranslate2 "
        f"{vers.get('ctranslate2', '?')} (python {fw_py}); OMP_WAIT_POLICY="
        f"{fw_env().get('OMP_WAIT_POLICY', 'default')}",
        f"- scribed: {('git ' + git_rev() + ' ' + scribed.version()).strip() if scribed else 'not run'}",
    ])
    if load1 > 0.5 * (os.cpu_count() or 1):
        header_md += (f"\n- **warning: the machine was busy when this run started (load "
                      f"{load1:.2f} on {os.cpu_count()} CPUs): wall times are slower and noisier "
                      f"than on an idle machine; compare ratios, or re-run when idle.**")
        log(f"warning: load average {load1:.2f} on {os.cpu_count()} CPUs: timings unreliable")
    if not args.skip_accuracy:
        accuracy(args, fw_py, scribed, header_md)
    if not args.skip_speed:
        speed(args, fw_py, scribed, header_md)


if __name__ == "__main__":
    main()
