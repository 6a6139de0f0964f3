// A /v2/listen (Deepgram Flux) session through Deepgram's official
// JavaScript SDK (5.x, Node): audio, two seconds of silence, CloseStream.
// Prints one JSON line: the turn events other than Update (event, turn
// index, transcript), the other message types, the errors and the close code.
//
//     node flux.js BASE_URL AUDIO.wav   (16 kHz mono 16-bit WAV, 44-byte header)
const { DeepgramClient } = require("@deepgram/sdk");
const fs = require("fs");
const [base, file] = process.argv.slice(2);
const ws = base.replace("http", "ws");
const client = new DeepgramClient({ apiKey: "test-key", environment: { base, production: ws, agent: ws } });
(async () => {
  const conn = await client.listen.v2.connect({
    model: "flux-general-en",
    encoding: "linear16",
    sample_rate: "16000",
    eot_threshold: "0.7",
    eager_eot_threshold: "0.5",
  });
  const turns = [];
  const others = [];
  const errors = [];
  conn.on("message", (m) => {
    if (m.type === "TurnInfo") {
      if (m.event !== "Update") turns.push([m.event, m.turn_index, m.transcript]);
    } else others.push(m.type);
  });
  conn.on("error", (e) => errors.push(String((e && e.message) || e)));
  const closed = new Promise((res) => conn.on("close", (ev) => res(ev && ev.code)));
  conn.connect();
  await conn.waitForOpen();
  const audio = Buffer.concat([fs.readFileSync(file).subarray(44), Buffer.alloc(64000)]);
  for (let i = 0; i < audio.length; i += 3200) {
    conn.sendMedia(audio.subarray(i, i + 3200));
    await new Promise((r) => setTimeout(r, 10));
  }
  conn.sendCloseStream({ type: "CloseStream" });
  const code = await closed;
  console.log(JSON.stringify({ turns, others, errors, code }));
  process.exit(0);
})().catch((e) => {
  console.error("ERR", e.message || e);
  process.exit(1);
});
