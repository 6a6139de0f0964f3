// A live /v1/listen session through Deepgram's official JavaScript SDK (5.x,
// Node), as voice agents drive it: 100 ms frames, Finalize at the end of the
// turn, then CloseStream. Prints one JSON line: the final transcript,
// whether a from_finalize result came, the message types seen, the errors
// and the close code.
//
//     node live.js BASE_URL AUDIO.wav   (16 kHz mono 16-bit WAV, 44-byte header)
const { DeepgramClient } = require("@deepgram/sdk");
const fs = require("fs");
const [base, file] = process.argv.slice(2);
const ws = base.replace("http", "ws");
const client = new DeepgramClient({ apiKey: "test-key", environment: { base, production: ws, agent: ws } });
(async () => {
  const conn = await client.listen.v1.connect({
    model: "nova-3",
    encoding: "linear16",
    sample_rate: "16000",
    interim_results: "true",
    punctuate: "true",
    endpointing: "300",
    utterance_end_ms: "1000",
    vad_events: "true",
  });
  const seen = {};
  const finals = [];
  const errors = [];
  let finalized = false;
  conn.on("message", (m) => {
    seen[m.type] = (seen[m.type] || 0) + 1;
    if (m.type === "Results") {
      if (m.is_final && m.channel.alternatives[0].transcript) finals.push(m.channel.alternatives[0].transcript);
      if (m.from_finalize) finalized = true;
    }
  });
  conn.on("error", (e) => errors.push(String((e && e.message) || e)));
  const closed = new Promise((res) => conn.on("close", (ev) => res(ev && ev.code)));
  conn.connect();
  await conn.waitForOpen();
  const pcm = fs.readFileSync(file).subarray(44);
  for (let i = 0; i < pcm.length; i += 3200) {
    conn.sendMedia(pcm.subarray(i, i + 3200));
    await new Promise((r) => setTimeout(r, 10));
  }
  conn.sendFinalize({ type: "Finalize" });
  for (let i = 0; i < 600 && !finalized; i++) await new Promise((r) => setTimeout(r, 100));
  conn.sendCloseStream({ type: "CloseStream" });
  const code = await closed;
  console.log(JSON.stringify({ transcript: finals.join(" "), finalized, seen, errors, code }));
  process.exit(0);
})().catch((e) => {
  console.error("ERR", e.message || e);
  process.exit(1);
});
