// POST /v1/listen through Deepgram's official JavaScript SDK (5.x, Node):
// the SDK must parse the response. Prints one JSON line.
//
//     node prerecorded.js BASE_URL AUDIO_FILE
const { DeepgramClient } = require("@deepgram/sdk");
const fs = require("fs");
const [base, file] = process.argv.slice(2);
const ws = base.replace("http", "ws");
const client = new DeepgramClient({ apiKey: "test-key", environment: { base, production: ws, agent: ws } });
(async () => {
  // A stream, as the SDK's own example uploads a file.
  const body = fs.createReadStream(file);
  const r = await client.listen.v1.media.transcribeFile(body, { model: "nova-3", utterances: true, punctuate: true });
  const alt = r.results.channels[0].alternatives[0];
  const summary = {
    transcript: alt.transcript,
    words: alt.words.length,
    utterances: (r.results.utterances || []).length,
  };
  console.log(JSON.stringify({ ...summary, duration: r.metadata.duration }));
})().catch((e) => {
  console.error("ERR", e.message || e);
  process.exit(1);
});
